package test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// registryStack is etcd, CoreDNS and the signer (asking that CoreDNS) for the zone.
type registryStack struct {
	etcd *testenv.Etcd
	dns  *testenv.CoreDNS
	s    *signerServer
}

func startRegistryStack(t *testing.T) *registryStack {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	return registryStackOn(t, etcd, c)
}

// registryStackOn starts the signer, with a new CA, over etcd and CoreDNS (and the
// replicas its overview asks, when given).
func registryStackOn(t *testing.T, etcd *testenv.Etcd, c *testenv.CoreDNS, replicas ...string) *registryStack {
	t.Helper()
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "deviceid e2e CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	s := serveSignerWith(t, authority, filepath.Join(dir, ca.CACertFile), etcdclient.Settings{Endpoints: []string{etcd.URL()}},
		func(s *httpapi.Server) { s.DNS, s.Replicas = c.UDP, replicas })
	return &registryStack{etcd: etcd, dns: c, s: s}
}

// tenantToken creates a tenant and returns a bearer token of it.
func (r *registryStack) tenantToken(t *testing.T, name string) string {
	t.Helper()
	if st := r.s.admin(t, "POST", "/api/v1/tenants", `{"name": "`+name+`"}`, nil); st != http.StatusCreated {
		t.Fatalf("create tenant %s: %d", name, st)
	}
	var tok registry.NewToken
	if st := r.s.admin(t, "POST", "/api/v1/tenants/"+name+"/tokens", `{"label": "e2e"}`, &tok); st != http.StatusCreated {
		t.Fatalf("token for %s: %d", name, st)
	}
	return tok.Secret
}

// TestRegistryAsDocumented walks a device through its whole lifecycle with the admin
// API of the real signer, every request and answer checked against the OpenAPI
// document, and checks each step in DNS. At the end every documented operation has
// been answered with its documented success status.
func TestRegistryAsDocumented(t *testing.T) {
	r := startRegistryStack(t)
	s := r.s
	name := "lamp._device.iot.example."
	acme := r.tenantToken(t, "acme")
	globex := r.tenantToken(t, "globex")
	expect := func(what string, got, want int) {
		t.Helper()
		if got != want {
			t.Fatalf("%s: %d, want %d", what, got, want)
		}
	}
	var who httpapi.WhoAmI
	expect("whoami", s.apiCall(t, acme, "GET", "/api/v1/whoami", "", &who), 200)
	if who.Tenant != "acme" || who.Operator {
		t.Errorf("whoami: %+v", who)
	}
	expect("tenants", s.admin(t, "GET", "/api/v1/tenants", "", nil), 200)
	expect("tenant", s.apiCall(t, acme, "GET", "/api/v1/tenants/acme", "", nil), 200)
	var toks httpapi.TokenList
	expect("tokens", s.apiCall(t, acme, "GET", "/api/v1/tenants/acme/tokens", "", &toks), 200)

	// Register, issue a code, enroll over EST with openssl and curl.
	expect("register", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/register", `{"attributes": {"model": "th-200", "serial": "A1"}}`, nil), 200)
	if err := answerIs(t, r.dns, name, dns.RcodeNameError, nil); err != nil {
		t.Errorf("registered, no key: %v", err)
	}
	var code httpapi.CodeResponse
	expect("code", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/code", "", &code), 201)
	cert := estEnroll(t, s, t.TempDir(), "lamp", code.Code, "device.key")
	testenv.Eventually(t, "enrolled in DNS", func() error {
		return answerIs(t, r.dns, name, dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})
	var view httpapi.DeviceView
	expect("get", s.apiCall(t, acme, "GET", "/api/v1/devices/lamp", "", &view), 200)
	if view.Tenant != "acme" || len(view.Keys) != 1 || "3 1 1 "+view.Keys[0].SPKISHA256 != eeOf(cert) {
		t.Errorf("device view: %+v", view)
	}
	var served httpapi.DNSAnswer
	expect("dns", s.apiCall(t, acme, "GET", "/api/v1/devices/lamp/dns", "", &served), 200)
	if len(served.Records) != 2 || !strings.Contains(strings.Join(served.Records, "\n"), eeOf(cert)) {
		t.Errorf("what DNS serves: %+v", served)
	}
	expect("attributes", s.apiCall(t, acme, "PUT", "/api/v1/devices/lamp/attributes", `{"attributes": {"model": "th-200", "firmware": "2.1"}}`, nil), 200)
	var list httpapi.ListResponse
	expect("list", s.apiCall(t, acme, "GET", "/api/v1/devices?attr=firmware%3D2.1&state=active", "", &list), 200)
	if len(list.Devices) != 1 || list.Devices[0].Name != "lamp" {
		t.Errorf("search: %+v", list)
	}
	if st, body := s.apiRaw(t, acme, "GET", "/api/v1/export?tenant=acme", ""); st != 200 || !bytes.Contains(body, []byte(`"name":"lamp"`)) {
		t.Errorf("export: %d %s", st, body)
	}

	// Suspend and resume: DNS stops and restarts vouching for the device.
	expect("suspend", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/suspend", "", nil), 200)
	testenv.Eventually(t, "suspended in DNS", func() error { return answerIs(t, r.dns, name, dns.RcodeNameError, nil) })
	expect("resume", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/resume", "", nil), 200)
	testenv.Eventually(t, "resumed in DNS", func() error {
		return answerIs(t, r.dns, name, dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})

	// Transfer: started, cancelled, started again, accepted by globex with the keys revoked.
	var tcode httpapi.CodeResponse
	expect("transfer", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/transfer", "", &tcode), 201)
	expect("cancel", s.apiCall(t, acme, "DELETE", "/api/v1/devices/lamp/transfer", "", nil), 204)
	expect("cancelled code", s.apiCall(t, globex, "POST", "/api/v1/devices/lamp/transfer/accept", `{"code": "`+tcode.Code+`"}`, nil), 403)
	expect("transfer again", s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/transfer", "", &tcode), 201)
	expect("accept", s.apiCall(t, globex, "POST", "/api/v1/devices/lamp/transfer/accept", `{"code": "`+tcode.Code+`", "keep_keys": false}`, &view), 200)
	if view.Tenant != "globex" {
		t.Errorf("after the transfer: %+v", view)
	}
	testenv.Eventually(t, "keys revoked by the transfer", func() error { return answerIs(t, r.dns, name, dns.RcodeSuccess, []string{revokedOf(cert)}) })
	expect("the losing tenant", s.apiCall(t, acme, "GET", "/api/v1/devices/lamp", "", nil), 404)

	// A bare key through the API beside the EST one.
	expect("enroll", s.apiCall(t, globex, "POST", "/api/v1/devices/lamp/enroll", fmt.Sprintf(`{"public_key": %q}`, publicKeyPEM(t)), nil), 201)
	expect("revoke", s.apiCall(t, globex, "POST", "/api/v1/devices/lamp/revoke", `{"reason": "cessationOfOperation"}`, nil), 200)

	var audit httpapi.AuditResponse
	expect("audit", s.apiCall(t, globex, "GET", "/api/v1/audit?device=lamp", "", &audit), 200)
	if len(audit.Entries) != 3 || audit.Entries[0].Operation != "transfer.accept" {
		t.Errorf("globex sees more or less than its own part of the history: %+v", audit.Entries)
	}
	expect("audit", s.admin(t, "GET", "/api/v1/audit?device=lamp", "", &audit), 200)
	var ops []string
	for _, e := range audit.Entries {
		ops = append(ops, e.Operation)
		if e.Revision == 0 || e.Actor == "" {
			t.Errorf("audit entry without revision or actor: %+v", e)
		}
	}
	want := "device.register device.code device.enroll device.attributes device.suspend device.resume transfer.start transfer.cancel transfer.start transfer.accept device.enroll device.revoke"
	if strings.Join(ops, " ") != want {
		t.Errorf("audit trail:\n got %s\nwant %s", strings.Join(ops, " "), want)
	}
	expect("delete", s.apiCall(t, globex, "DELETE", "/api/v1/devices/lamp", "", nil), 204)
	testenv.Eventually(t, "deleted from DNS", func() error { return answerIs(t, r.dns, name, dns.RcodeNameError, nil) })

	// A device from before tenants: the operator assigns it to acme with its key, then
	// moves it to globex with the key revoked, without a transfer code.
	legacy := "legacy._device.iot.example."
	expect("operator's enroll", s.admin(t, "POST", "/api/v1/devices/legacy/enroll", fmt.Sprintf(`{"public_key": %q}`, publicKeyPEM(t)), nil), 201)
	var lv httpapi.DeviceView
	expect("get legacy", s.admin(t, "GET", "/api/v1/devices/legacy", "", &lv), 200)
	if lv.Tenant != "" || len(lv.Keys) != 1 {
		t.Fatalf("a device of no tenant: %+v", lv)
	}
	digest := lv.Keys[0].SPKISHA256
	expect("a tenant assigning", s.apiCall(t, acme, "POST", "/api/v1/devices/legacy/assign", `{"tenant": "acme"}`, nil), 403)
	expect("assign", s.admin(t, "POST", "/api/v1/devices/legacy/assign", `{"tenant": "acme", "keep_keys": true}`, nil), 200)
	expect("adopted", s.apiCall(t, acme, "GET", "/api/v1/devices/legacy", "", nil), 200)
	testenv.Eventually(t, "adopted, key active", func() error { return answerIs(t, r.dns, legacy, dns.RcodeSuccess, []string{"3 1 1 " + digest}) })
	expect("assign again", s.admin(t, "POST", "/api/v1/devices/legacy/assign", `{"tenant": "globex"}`, nil), 200)
	expect("moved away", s.apiCall(t, acme, "GET", "/api/v1/devices/legacy", "", nil), 404)
	testenv.Eventually(t, "moved, key revoked", func() error { return answerIs(t, r.dns, legacy, dns.RcodeSuccess, []string{"255 1 1 " + digest}) })
	expect("delete legacy", s.apiCall(t, globex, "DELETE", "/api/v1/devices/legacy", "", nil), 204)

	// A service identity: published, rotated (the new key beside the old, then the old
	// revoked), listed, deleted.
	svc := "_8883._tcp.mqtt.acme"
	svcOwner := svc + ".iot.example."
	k1, k2 := newDevice(t, testenv.NewTestCA(t, "broker CA"), "broker1", time.Now().AddDate(1, 0, 0)), newDevice(t, testenv.NewTestCA(t, "broker CA"), "broker2", time.Now().AddDate(1, 0, 0))
	certPEM := func(d *device) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.cert}))
	}
	expect("publish", s.apiCall(t, acme, "POST", "/api/v1/services/"+svc+"/keys", fmt.Sprintf(`{"certificate": %q}`, certPEM(k1)), nil), 201)
	testenv.Eventually(t, "service in DNS", func() error { return answerIs(t, r.dns, svcOwner, dns.RcodeSuccess, []string{k1.ee()}) })
	expect("rotate", s.apiCall(t, acme, "POST", "/api/v1/services/"+svc+"/keys", fmt.Sprintf(`{"certificate": %q}`, certPEM(k2)), nil), 201)
	digest = strings.TrimPrefix(k1.ee(), "3 1 1 ")
	expect("retire", s.apiCall(t, acme, "POST", "/api/v1/services/"+svc+"/revoke", `{"spki_sha256": "`+digest+`", "reason": "superseded"}`, nil), 200)
	testenv.Eventually(t, "rotated in DNS", func() error { return answerIs(t, r.dns, svcOwner, dns.RcodeSuccess, []string{k2.ee(), k1.revoked()}) })
	var services httpapi.ServiceList
	expect("services", s.apiCall(t, acme, "GET", "/api/v1/services", "", &services), 200)
	if len(services.Services) != 1 || services.Services[0].Name != svc || len(services.Services[0].Keys) != 2 {
		t.Errorf("services: %+v", services)
	}
	expect("service", s.apiCall(t, acme, "GET", "/api/v1/services/"+svc, "", nil), 200)
	expect("another tenant's namespace", s.apiCall(t, globex, "POST", "/api/v1/services/_8883._tcp.mqtt.acme/keys", fmt.Sprintf(`{"certificate": %q}`, certPEM(k1)), nil), 403)
	s.admin(t, "POST", "/api/v1/tenants/acme/disable", "", nil)
	expect("delete a tenant with a service", s.admin(t, "DELETE", "/api/v1/tenants/acme", "", nil), 409)
	s.admin(t, "POST", "/api/v1/tenants/acme/enable", "", nil)
	expect("delete service", s.apiCall(t, acme, "DELETE", "/api/v1/services/"+svc, "", nil), 204)
	testenv.Eventually(t, "service gone from DNS", func() error { return answerIs(t, r.dns, svcOwner, dns.RcodeNameError, nil) })

	// Tenants and tokens: revoke a token, disable, enable, delete when empty.
	expect("revoke token", s.apiCall(t, acme, "DELETE", "/api/v1/tenants/acme/tokens/"+toks.Tokens[0].ID, "", nil), 204)
	expect("revoked token", s.apiCall(t, acme, "GET", "/api/v1/whoami", "", nil), 401)
	expect("disable", s.admin(t, "POST", "/api/v1/tenants/globex/disable", "", nil), 200)
	expect("disabled tenant's token", s.apiCall(t, globex, "GET", "/api/v1/devices", "", nil), 403)
	expect("enable", s.admin(t, "POST", "/api/v1/tenants/globex/enable", "", nil), 200)
	expect("enabled again", s.apiCall(t, globex, "GET", "/api/v1/devices", "", nil), 200)
	s.admin(t, "POST", "/api/v1/tenants/acme/disable", "", nil)
	expect("delete tenant", s.admin(t, "DELETE", "/api/v1/tenants/acme", "", nil), 204)
	var keys httpapi.KeysView
	expect("keys", s.admin(t, "GET", "/api/v1/keys", "", &keys), 200)
	if keys.Managed || len(keys.Keys) != 0 {
		t.Errorf("the keys of a zone with key files: %+v", keys)
	}
	expect("a tenant asking for the keys", s.apiCall(t, globex, "GET", "/api/v1/keys", "", nil), 403)
	var o httpapi.Overview
	expect("a tenant's overview", s.apiCall(t, globex, "GET", "/api/v1/overview?tenant=acme", "", &o), 200)
	if o.Tenant != "globex" || len(o.DNS) != 0 {
		t.Errorf("globex's overview, asking for acme's (DNS health is the operator's): %+v", o)
	}
	o = httpapi.Overview{}
	expect("the operator's overview", s.admin(t, "GET", "/api/v1/overview", "", &o), 200)
	if len(o.DNS) != 1 || o.DNS[0].Error != "" || o.DNS[0].Serial == 0 {
		t.Errorf("the operator's overview: %+v", o)
	}
	var trail httpapi.AuditResponse
	expect("an audit range", s.admin(t, "GET", "/api/v1/audit?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z", "", &trail), 200)
	if len(trail.Entries) != 0 {
		t.Errorf("entries of 2000: %+v", trail.Entries)
	}
	expect("a bad time", s.admin(t, "GET", "/api/v1/audit?since=yesterday", "", nil), 400)

	// Every documented operation was answered as documented.
	var missing []string
	for _, op := range documentedOperations(t) {
		if _, ok := exercised.Load(op); !ok {
			missing = append(missing, op)
		}
	}
	if len(missing) > 0 {
		t.Errorf("documented operations never answered with success: %v", missing)
	}
}

// documentedOperations lists "METHOD /path" of every operation in the served document.
func documentedOperations(t *testing.T) []string {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(httpapi.OpenAPIDocument(), &doc); err != nil {
		t.Fatal(err)
	}
	var ops []string
	for path, item := range doc.Paths {
		for method := range item {
			ops = append(ops, strings.ToUpper(method)+" "+path)
		}
	}
	return ops
}

// TestAPIBadInputE2E: bad requests to the new endpoints get a clear 4xx through the
// real signer and change nothing in etcd.
func TestAPIBadInputE2E(t *testing.T) {
	r := startRegistryStack(t)
	s := r.s
	acme := r.tenantToken(t, "acme")
	r.tenantToken(t, "globex")
	s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/register", "", nil)
	var tcode httpapi.CodeResponse
	s.apiCall(t, acme, "POST", "/api/v1/devices/lamp/transfer", "", &tcode)
	cli := r.etcd.Client()
	for _, tc := range []struct {
		name, token, method, path, body string
		status                          int
	}{
		{"malformed JSON", acme, "POST", "/api/v1/devices/x/register", `{"attributes": `, 400},
		{"unknown field", acme, "POST", "/api/v1/devices/x/register", `{"owner": "acme"}`, 400},
		{"oversize body", acme, "POST", "/api/v1/devices/x/register", `{"attributes": {"a": "` + strings.Repeat("x", httpapi.MaxBody) + `"}}`, 413},
		{"bad name", acme, "POST", "/api/v1/devices/bad_name/register", `{}`, 400},
		{"bad attribute key", acme, "POST", "/api/v1/devices/x/register", `{"attributes": {"Bad Key": "v"}}`, 400},
		{"attribute value too long", acme, "PUT", "/api/v1/devices/lamp/attributes", `{"attributes": {"k": "` + strings.Repeat("v", 257) + `"}}`, 400},
		{"control character", acme, "PUT", "/api/v1/devices/lamp/attributes", `{"attributes": {"k": "a\u0007b"}}`, 400},
		{"too many attributes", acme, "PUT", "/api/v1/devices/lamp/attributes", tooManyAttributes(), 400},
		{"wrong transfer code", acme, "POST", "/api/v1/devices/lamp/transfer/accept", `{"code": "NOPE"}`, 403},
		{"transfer to the same tenant", acme, "POST", "/api/v1/devices/lamp/transfer/accept", `{"code": "` + tcode.Code + `"}`, 400},
		{"no transfer code", acme, "POST", "/api/v1/devices/lamp/transfer/accept", `{}`, 400},
		{"bad tenant name", adminToken, "POST", "/api/v1/tenants", `{"name": "Not OK"}`, 400},
		{"tenant for a tenant", acme, "POST", "/api/v1/tenants", `{"name": "mine"}`, 403},
		{"register for a missing tenant", adminToken, "POST", "/api/v1/devices/x/register", `{"tenant": "initech"}`, 404},
		{"delete an enabled tenant", adminToken, "DELETE", "/api/v1/tenants/acme", "", 409},
		{"not JSON", acme, "POST", "/api/v1/devices/x/register", "not json", 400},
		{"bad filter", acme, "GET", "/api/v1/devices?state=asleep", "", 400},
		{"bad attr filter", acme, "GET", "/api/v1/devices?attr=novalue", "", 400},
		{"bad audit limit", acme, "GET", "/api/v1/audit?limit=5000", "", 400},
		{"another tenant's list", acme, "GET", "/api/v1/devices?tenant=globex", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := cli.Get(t.Context(), "/")
			st, body := s.apiRaw(t, tc.token, tc.method, tc.path, tc.body)
			if st != tc.status {
				t.Errorf("status %d, want %d: %s", st, tc.status, body)
			}
			var e httpapi.ErrorResponse
			if json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Errorf("no clear error: %s", body)
			}
			if after, _ := cli.Get(t.Context(), "/"); after.Header.Revision != before.Header.Revision {
				t.Errorf("etcd changed")
			}
		})
	}
	// A cross-site form (text/plain or form-encoded, which a browser sends without
	// asking) is refused before anything else.
	req, _ := http.NewRequest("POST", s.url+"/api/v1/devices/lamp/suspend", strings.NewReader("a=b"))
	req.Header.Set("Authorization", "Bearer "+acme)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := s.client.Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("form post: %v %v", resp, err)
	}
}

func tooManyAttributes() string {
	m := map[string]string{}
	for i := range 33 {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	b, _ := json.Marshal(map[string]any{"attributes": m})
	return string(b)
}

func publicKeyPEM(t *testing.T) string {
	der, err := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}
