package test

// The attacks of docs/security.md against the signer, each from the outside as an
// attacker would make it: an anonymous client, a tenant, a device, a cross-site page.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/globalsign/est"
	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// heapAfterGC is the live heap of this process, the signer's included.
func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// get asks the signer anonymously and returns the status.
func (s *signerServer) get(t testing.TB, path string) int {
	t.Helper()
	resp, err := s.client.Get(s.url + path)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// An anonymous client asking for CA certificates under ever new EST path segments
// does not grow the signer: only the signer's own EST paths are served.
func TestAdversaryESTPathFlood(t *testing.T) {
	s := startSigner(t, testenv.StartEtcd(t))
	if status := s.get(t, "/.well-known/est/cacerts"); status != http.StatusOK {
		t.Fatalf("cacerts: %d", status)
	}
	before := heapAfterGC()
	segment := strings.Repeat("x", 12<<10)
	for i := range 2000 {
		if status := s.get(t, fmt.Sprintf("/.well-known/est/%s%d/cacerts", segment, i)); status != http.StatusNotFound {
			t.Fatalf("request %d: %d, want 404", i, status)
		}
	}
	after := heapAfterGC()
	grown := int64(after) - int64(before)
	t.Logf("heap %d KiB before, %d KiB after 2,000 requests with 12 KiB segments", before>>10, after>>10)
	if grown > 8<<20 {
		t.Errorf("the heap grew %d KiB", grown>>10)
	}
	// A URL beyond the header limit is refused before any handler.
	if status := s.get(t, "/.well-known/est/"+strings.Repeat("y", 64<<10)+"/cacerts"); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KiB URL: %d, want 431", status)
	}
}

// crossSite sends what a form on another site makes a browser send: a POST with the
// browser's client certificate, no body and no JSON type, and, from a browser that
// has them, Origin and Sec-Fetch-Site.
func crossSite(t *testing.T, s *signerServer, cert tls.Certificate, path string, fetchHeaders bool) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.client.Transport.(*http.Transport).TLSClientConfig.RootCAs, Certificates: []tls.Certificate{cert}}}}
	req, _ := http.NewRequest("POST", s.url+path, nil)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if fetchHeaders {
		req.Header.Set("Origin", "https://evil.example")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A page on another site cannot act with a tenant's or the operator's client
// certificate, whether the browser sends Sec-Fetch-Site or not.
func TestAdversaryCrossSiteWrite(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "deviceid e2e CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	clientCA := testenv.NewTestCA(t, "client certificates")
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.Cert)
	operatorCA := testenv.NewTestCA(t, "operator certificates")
	operators := x509.NewCertPool()
	operators.AddCert(operatorCA.Cert)
	s := serveSignerWith(t, authority, filepath.Join(dir, ca.CACertFile), etcdclient.Settings{Endpoints: []string{etcd.URL()}},
		func(srv *httpapi.Server) { srv.TenantCAs, srv.AdminCAs = pool, operators })
	certOf := func(authority *testenv.CA, org string) tls.Certificate {
		key := testenv.DeviceKey(t)
		der, err := authority.Issue(org+"-console", key.Public(), time.Now().Add(time.Hour), org)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	acme, operator := certOf(clientCA, "acme"), certOf(operatorCA, "registry")
	if status := s.admin(t, "POST", "/api/v1/tenants", `{"name": "acme"}`, nil); status != http.StatusCreated {
		t.Fatalf("tenant: %d", status)
	}
	key := testenv.DeviceKey(t)
	body := fmt.Sprintf(`{"tenant": "acme", "csr": %q}`, testenv.CSRPEM(t, key, ""))
	if status := s.admin(t, "POST", "/api/v1/devices/sensor7/enroll", body, nil); status != http.StatusCreated {
		t.Fatalf("enroll: %d", status)
	}
	for _, fetchHeaders := range []bool{true, false} {
		for _, path := range []string{"/api/v1/devices/sensor7/revoke", "/api/v1/devices/sensor7/suspend", "/api/v1/devices/sensor7/transfer"} {
			if status := crossSite(t, s, acme, path, fetchHeaders); status < 400 {
				t.Errorf("cross-site POST %s with the tenant's certificate (fetch headers %v): %d", path, fetchHeaders, status)
			}
		}
		if status := crossSite(t, s, operator, "/api/v1/tenants/acme/disable", fetchHeaders); status < 400 {
			t.Errorf("cross-site tenant disable with the operator's certificate (fetch headers %v): %d", fetchHeaders, status)
		}
	}
	var d httpapi.DeviceView
	if s.admin(t, "GET", "/api/v1/devices/sensor7", "", &d); d.State == record.StateSuspended || len(d.Keys) != 1 || d.Keys[0].Status != record.StatusActive {
		t.Errorf("after the cross-site requests: %+v", d)
	}
	var tn registry.Tenant
	if s.admin(t, "GET", "/api/v1/tenants/acme", "", &tn); tn.Disabled {
		t.Error("the tenant was disabled across sites")
	}
}

// estClient is a device's EST client: by its code, or by its current certificate.
func estClient(s *signerServer, device, code string, cert *x509.Certificate, key any) *est.Client {
	c := &est.Client{Host: strings.TrimPrefix(s.url, "https://"), ExplicitAnchor: s.client.Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Username: device, Password: code}
	if cert != nil {
		c.Username, c.Password, c.Certificates, c.PrivateKey = "", "", []*x509.Certificate{cert}, key
	}
	return c
}

// A device that re-enrolls again and again over EST without retiring its keys is
// refused once its record is full (409), and its record stays readable: DNS serves
// it and the API shows it.
func TestAdversaryReenrollmentFlood(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	s := startSigner(t, etcd)
	var code httpapi.CodeResponse
	if status := s.admin(t, "POST", "/api/v1/devices/thermo1/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code: %d", status)
	}
	owner := "thermo1._device.iot.example"
	csr := func(key *ecdsa.PrivateKey) *x509.CertificateRequest {
		r, err := x509.ParseCertificateRequest(testenv.CSR(t, key, owner, owner))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	key := testenv.DeviceKey(t)
	cert, err := estClient(s, "thermo1", code.Code, nil, nil).Enroll(t.Context(), csr(key))
	if err != nil {
		t.Fatal(err)
	}
	var refused error
	n := 0
	for ; n < 2*record.MaxCredentials && refused == nil; n++ {
		next := testenv.DeviceKey(t)
		_, refused = estClient(s, "", "", cert, key).Reenroll(t.Context(), csr(next))
	}
	t.Logf("refused after %d re-enrollments: %v", n, refused)
	var statusErr interface{ StatusCode() int }
	if !errors.As(refused, &statusErr) || statusErr.StatusCode() != http.StatusConflict {
		t.Fatalf("the re-enrollment flood: %v, want 409", refused)
	}
	var d httpapi.DeviceView
	if status := s.admin(t, "GET", "/api/v1/devices/thermo1", "", &d); status != http.StatusOK || len(d.Keys) < 2 {
		t.Errorf("the device in the API: %d, %d keys", status, len(d.Keys))
	}
	r := c.Exchange(t, "tcp", owner+".", dns.TypeTLSA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) < 2 {
		t.Errorf("DNS: %s with %d records", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
}

// leaseCount is how many etcd leases are alive.
func leaseCount(t *testing.T, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// A tenant asking for codes and transfers of another tenant's device, or of names it
// may not have, is refused and leaves nothing in etcd: no lease, no code, no audit
// entry. A suspended device, or one of a disabled tenant, gets no certificate.
func TestAdversaryRefusedLeaveNothing(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	s := startSigner(t, etcd)
	tokens := map[string]string{}
	for _, name := range []string{"acme", "globex"} {
		if status := s.admin(t, "POST", "/api/v1/tenants", fmt.Sprintf(`{"name": %q}`, name), nil); status != http.StatusCreated {
			t.Fatalf("tenant %s: %d", name, status)
		}
		var tok registry.NewToken
		if status := s.admin(t, "POST", "/api/v1/tenants/"+name+"/tokens", "", &tok); status != http.StatusCreated {
			t.Fatalf("token %s: %d", name, status)
		}
		tokens[name] = tok.Secret
	}
	var code httpapi.CodeResponse
	if status := s.apiCall(t, tokens["acme"], "POST", "/api/v1/devices/sensor7/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code: %d", status)
	}
	rev := func() int64 {
		resp, err := cli.Get(t.Context(), "x")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	leases, at := leaseCount(t, cli), rev()
	for range 10 {
		for _, path := range []string{"/api/v1/devices/sensor7/code", "/api/v1/devices/sensor7/transfer"} {
			if status := s.apiCall(t, tokens["globex"], "POST", path, "", nil); status != http.StatusNotFound {
				t.Errorf("globex POST %s: %d", path, status)
			}
		}
		if status := s.apiCall(t, tokens["globex"], "POST", "/api/v1/devices/x.sensor7/code", "", nil); status != http.StatusConflict {
			t.Errorf("globex below acme's device: %d", status)
		}
	}
	if status, _ := s.apiRaw(t, tokens["acme"], "POST", "/api/v1/devices/\u212aelvin/register", ""); status != http.StatusBadRequest {
		t.Errorf("a name with the Kelvin sign: %d", status)
	}
	if n := leaseCount(t, cli); n != leases {
		t.Errorf("%d leases after refused requests, %d before", n, leases)
	}
	if now := rev(); now != at {
		t.Errorf("refused requests changed etcd (revision %d → %d)", at, now)
	}

	// A suspended device cannot use its code; a device of a disabled tenant neither.
	owner := "sensor7._device.iot.example"
	key := testenv.DeviceKey(t)
	csr, _ := x509.ParseCertificateRequest(testenv.CSR(t, key, owner, owner))
	if status := s.apiCall(t, tokens["acme"], "POST", "/api/v1/devices/sensor7/suspend", "", nil); status != http.StatusOK {
		t.Fatalf("suspend: %d", status)
	}
	var statusErr interface{ StatusCode() int }
	if _, err := estClient(s, "sensor7", code.Code, nil, nil).Enroll(t.Context(), csr); !errors.As(err, &statusErr) || statusErr.StatusCode() != http.StatusForbidden {
		t.Errorf("a suspended device's enrollment: %v", err)
	}
	s.apiCall(t, tokens["acme"], "POST", "/api/v1/devices/sensor7/resume", "", nil)
	if status := s.admin(t, "POST", "/api/v1/tenants/acme/disable", "", nil); status != http.StatusOK {
		t.Fatalf("disable: %d", status)
	}
	if _, err := estClient(s, "sensor7", code.Code, nil, nil).Enroll(t.Context(), csr); !errors.As(err, &statusErr) || statusErr.StatusCode() != http.StatusForbidden {
		t.Errorf("a disabled tenant's device's enrollment: %v", err)
	}
	var d httpapi.DeviceView
	if s.admin(t, "GET", "/api/v1/devices/sensor7", "", &d); len(d.Keys) != 0 {
		t.Errorf("refused enrollments left keys: %+v", d.Keys)
	}
}

// A device certificate that never expires (IEEE 802.1AR: 99991231235959Z) is served.
func TestAdversaryNeverExpiringCertificate(t *testing.T) {
	etcd, cli, authority := testbed(t)
	d := newDevice(t, authority, "idevid1", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC))
	testenv.Put(t, cli, deviceKey("idevid1"), deviceJSON(credentialJSON(d, "active")))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	if err := answerIs(t, c, "idevid1._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()}); err != nil {
		t.Error(err)
	}
}

// The signer's HTTPS: no CBC suites, HSTS, /metrics behind its token when one is set.
func TestAdversarySignerHTTPS(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "deviceid e2e CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	s := serveSignerWith(t, authority, filepath.Join(dir, ca.CACertFile), etcdclient.Settings{Endpoints: []string{etcd.URL()}},
		func(srv *httpapi.Server) { srv.MetricsToken = "metrics-token-0123456789" })
	roots := s.client.Transport.(*http.Transport).TLSClientConfig.RootCAs
	cbc := &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}
	if conn, err := tls.Dial("tcp", strings.TrimPrefix(s.url, "https://"), cbc); err == nil {
		conn.Close()
		t.Error("a TLS 1.2 CBC handshake succeeded")
	}
	resp, err := s.client.Get(s.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Strict-Transport-Security"); !strings.Contains(h, "max-age=") {
		t.Errorf("Strict-Transport-Security: %q", h)
	}
	if status := s.get(t, "/metrics"); status != http.StatusUnauthorized {
		t.Errorf("/metrics without its token: %d", status)
	}
	req, _ := http.NewRequest("GET", s.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer metrics-token-0123456789")
	if resp, err := s.client.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/metrics with its token: %v %v", resp, err)
	}
}

// A tenant writing as fast as it can (attributes of a big record, again and again)
// is answered 429 once its write quota is spent, and etcd stops growing with its
// writes; another tenant's writes go on.
func TestAdversaryTenantWriteFlood(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "deviceid e2e CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	s := serveSignerWith(t, authority, filepath.Join(dir, ca.CACertFile), etcdclient.Settings{Endpoints: []string{etcd.URL()}},
		func(srv *httpapi.Server) {
			srv.Registry.Quotas = &registry.Quotas{TenantBytesPerSecond: 1 << 10, TenantBurstBytes: 256 << 10}
		})
	tokens := map[string]string{}
	for _, name := range []string{"acme", "globex"} {
		if status := s.admin(t, "POST", "/api/v1/tenants", fmt.Sprintf(`{"name": %q}`, name), nil); status != http.StatusCreated {
			t.Fatalf("tenant %s: %d", name, status)
		}
		var tok registry.NewToken
		s.admin(t, "POST", "/api/v1/tenants/"+name+"/tokens", "", &tok)
		tokens[name] = tok.Secret
		if status := s.apiCall(t, tok.Secret, "POST", "/api/v1/devices/"+name+"-lamp/register", "", nil); status != http.StatusOK {
			t.Fatalf("register: %d", status)
		}
	}
	var attrs []string
	for i := range 30 {
		attrs = append(attrs, fmt.Sprintf(`"k%d": %q`, i, strings.Repeat("v", 200)))
	}
	var status, writes int
	for ; writes < 200; writes++ {
		body := fmt.Sprintf(`{"attributes": {"n": "%d", %s}}`, writes, strings.Join(attrs, ", "))
		if status, _ = s.apiRaw(t, tokens["acme"], "PUT", "/api/v1/devices/acme-lamp/attributes", body); status != http.StatusOK {
			break
		}
	}
	t.Logf("acme refused after %d writes: %d", writes, status)
	if status != http.StatusTooManyRequests || writes < 10 {
		t.Fatalf("after %d writes: %d, want 429", writes, status)
	}
	rev, _ := cli.Get(t.Context(), "x")
	big := fmt.Sprintf(`{"attributes": {"n": "x", %s}}`, strings.Join(attrs, ", "))
	for range 5 {
		if status, _ := s.apiRaw(t, tokens["acme"], "PUT", "/api/v1/devices/acme-lamp/attributes", big); status != http.StatusTooManyRequests {
			t.Errorf("a write beyond the quota: %d", status)
		}
	}
	if now, _ := cli.Get(t.Context(), "x"); now.Header.Revision != rev.Header.Revision {
		t.Errorf("writes beyond the quota reached etcd (revision %d → %d)", rev.Header.Revision, now.Header.Revision)
	}
	if status, _ := s.apiRaw(t, tokens["globex"], "PUT", "/api/v1/devices/globex-lamp/attributes", `{"attributes": {"a": "b"}}`); status != http.StatusOK {
		t.Errorf("globex's write while acme is limited: %d", status)
	}
}
