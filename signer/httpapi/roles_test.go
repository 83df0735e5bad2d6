package httpapi

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca/catest"
	"github.com/deviceid/deviceid/signer/registry"
)

// rolesAPI is an API over a registry with tenants acme (a device a-dev with a key
// and a token), globex (a token) and umbrella (a token, then disabled).
type rolesAPI struct {
	srv                    *httptest.Server
	reg                    *registry.Registry
	acme, globex, disabled *registry.NewToken
}

func newRolesAPI(t *testing.T) *rolesAPI {
	t.Helper()
	r, ctx := testRegistry(t), t.Context()
	for _, name := range []string{"acme", "globex", "umbrella"} {
		if _, err := r.CreateTenant(ctx, testOperator, name); err != nil {
			t.Fatal(err)
		}
	}
	acme := registry.Actor{ID: "token:acme", Tenant: "acme"}
	a := &rolesAPI{reg: r}
	api := &API{CA: catest.New(t), Registry: r, Token: token, Timeout: 5 * time.Second}
	a.srv = httptest.NewServer(api.Handler())
	t.Cleanup(a.srv.Close)
	var err error
	if a.acme, err = r.IssueToken(ctx, testOperator, "acme", ""); err != nil {
		t.Fatal(err)
	}
	a.globex, _ = r.IssueToken(ctx, testOperator, "globex", "")
	a.disabled, _ = r.IssueToken(ctx, testOperator, "umbrella", "")
	r.SetTenantDisabled(ctx, testOperator, "umbrella", true)
	if _, err := (&registry.Enroller{CA: api.CA, Registry: r}).Enroll(ctx, registry.Enrollment{Actor: acme, Device: "a-dev", PublicKey: testenv.DeviceKey(t).Public()}); err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	if _, err := r.PublishServiceKey(ctx, acme, "_8883._tcp.mqtt.acme", "", spki); err != nil {
		t.Fatal(err)
	}
	return a
}

// sampleBody is a well-formed body for each request type.
func sampleBody(t *testing.T, request any) string {
	der, _ := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	switch request.(type) {
	case nil:
		return ""
	case EnrollRequest:
		return jsonBody(EnrollRequest{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	case ServiceKeyRequest:
		return jsonBody(ServiceKeyRequest{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	case AttributesRequest:
		return `{"attributes": {"model": "x"}}`
	case AcceptRequest:
		return `{"code": "WRONGCODE"}`
	case TenantRequest:
		return `{"name": "newco"}`
	}
	return `{}`
}

// path fills a route's path parameters with acme's device, acme and acme's token.
func (a *rolesAPI) path(rt route) string {
	p := strings.NewReplacer("{name}", "a-dev", "{tenant}", "acme", "{id}", a.acme.ID, "{service}", "_8883._tcp.mqtt.acme").Replace(rt.path)
	return p
}

// TestRoles tries every route of the API with no credentials, as a disabled tenant and
// as another tenant: each is refused with its status (or, for lists, shows nothing of
// the other tenant), and etcd is unchanged.
func TestRoles(t *testing.T) {
	a := newRolesAPI(t)
	// What another tenant (globex) gets on acme's things; 200 for the lists, which
	// must not show them.
	otherTenant := map[string]int{
		"getWhoami": 200, "getDevices": 200, "getExport": 200, "getAudit": 200, "getTenants": 200, "getServices": 200, "getOverview": 200,
		"postDevicesNameRegister":       409, // the name is registered (as a domain registry says)
		"postDevicesNameTransferAccept": 403, // the code is wrong
		"postServicesServiceKeys":       403, // not under its own name, whether it exists or not
	}
	for _, rt := range routes {
		id := operationID(rt)
		want := http.StatusNotFound
		if s, ok := otherTenant[id]; ok {
			want = s
		} else if rt.operator {
			want = http.StatusForbidden
		}
		for _, who := range []struct {
			name, token string
			status      int
		}{
			{"no credentials", "", 401},
			{"wrong token", "did_0123456789abcdef_nope", 401},
			{"disabled tenant", a.disabled.Secret, 403},
			{"another tenant", a.globex.Secret, want},
		} {
			t.Run(id+"/"+who.name, func(t *testing.T) {
				before := testenv.Revision(t, a.reg.Client)
				code, body := call(t, a.srv, rt.method, a.path(rt), who.token, sampleBody(t, rt.request))
				if code != who.status {
					t.Errorf("status %d, want %d: %s", code, who.status, body)
				}
				if code == 200 && (strings.Contains(string(body), "a-dev") || strings.Contains(string(body), "acme")) {
					t.Errorf("shows acme's things: %s", body)
				}
				if after := testenv.Revision(t, a.reg.Client); after != before {
					t.Errorf("etcd changed: revision %d -> %d", before, after)
				}
			})
		}
	}
}

// TestRolesOwnTenant: acme's token does what it may with acme's device, and the
// operator-only routes stay closed to it.
func TestRolesOwnTenant(t *testing.T) {
	a := newRolesAPI(t)
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/api/v1/whoami", "", 200},
		{"GET", "/api/v1/devices/a-dev", "", 200},
		{"POST", "/api/v1/devices/a-dev/suspend", "", 200},
		{"POST", "/api/v1/devices/a-dev/resume", "", 200},
		{"PUT", "/api/v1/devices/a-dev/attributes", `{"attributes": {"firmware": "1.2"}}`, 200},
		{"POST", "/api/v1/devices/b-dev/register", `{"attributes": {"serial": "B"}}`, 200},
		{"POST", "/api/v1/devices/b-dev/register", `{"tenant": "globex"}`, 403},
		{"POST", "/api/v1/devices/c-dev/code", "", 201},
		{"POST", "/api/v1/tenants", `{"name": "mine"}`, 403},
		{"POST", "/api/v1/tenants/acme/disable", "", 403},
		{"POST", "/api/v1/tenants/acme/tokens", `{"label": "second"}`, 201},
		{"GET", "/api/v1/tenants/acme/tokens", "", 200},
		{"GET", "/api/v1/devices?tenant=globex", "", 404},
		{"POST", "/api/v1/devices/a-dev/transfer", "", 201},
		{"DELETE", "/api/v1/devices/a-dev/transfer", "", 204},
		{"DELETE", "/api/v1/devices/b-dev", "", 204},
		{"POST", "/api/v1/services/_443._tcp.api.acme/keys", sampleBody(t, ServiceKeyRequest{}), 201},
		{"POST", "/api/v1/services/_443._tcp.api.globex/keys", sampleBody(t, ServiceKeyRequest{}), 403},
		{"POST", "/api/v1/services/_443._tcp.api.acme/revoke", `{"reason": "superseded"}`, 200},
		{"GET", "/api/v1/services/_8883._tcp.mqtt.acme", "", 200},
		{"POST", "/api/v1/services/_99999._tcp.api.acme/keys", sampleBody(t, ServiceKeyRequest{}), 400},
		{"DELETE", "/api/v1/services/_443._tcp.api.acme", "", 204},
		{"DELETE", "/api/v1/services/_443._tcp.api.acme", "", 404},
	} {
		code, body := call(t, a.srv, tc.method, tc.path, a.acme.Secret, tc.body)
		if code != tc.status {
			t.Errorf("%s %s: %d, want %d: %s", tc.method, tc.path, code, tc.status, body)
		}
	}
	code, body := call(t, a.srv, "GET", "/api/v1/devices", a.acme.Secret, "")
	if code != 200 || !strings.Contains(string(body), `"a-dev"`) || !strings.Contains(string(body), `"c-dev"`) {
		t.Errorf("acme's list: %d %s", code, body)
	}
}
