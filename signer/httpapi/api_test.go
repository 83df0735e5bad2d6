package httpapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"
	"github.com/deviceid/deviceid/signer/registry"
)

const token = "s3cret-token"

func testAPI(t *testing.T) (*httptest.Server, *registry.Registry) {
	t.Helper()
	r := testRegistry(t)
	api := &API{CA: catest.New(t), Registry: r, Token: token, Timeout: 2 * time.Second}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return srv, r
}

func call(t *testing.T, srv *httptest.Server, method, path, auth, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestAPIEnrollRevoke(t *testing.T) {
	srv, reg := testAPI(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	code, body := call(t, srv, "POST", "/api/v1/devices/Sensor7/enroll", token, jsonBody(EnrollRequest{CSR: testenv.CSRPEM(t, key, "ignored")}))
	if code != http.StatusCreated {
		t.Fatalf("enroll: %d %s", code, body)
	}
	var er EnrollResponse
	if err := json.Unmarshal(body, &er); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(er.Certificate))
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil || cert.DNSNames[0] != "sensor7._device.iot.example" || !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatalf("certificate %v %v", err, cert)
	}
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	// A retry with the same CSR (its answer lost) gets the same certificate back.
	code, body = call(t, srv, "POST", "/api/v1/devices/sensor7/enroll", token, jsonBody(EnrollRequest{CSR: testenv.CSRPEM(t, key, "ignored")}))
	var again EnrollResponse
	if code != http.StatusOK || json.Unmarshal(body, &again) != nil || again.Certificate != er.Certificate || len(again.Device.Credentials) != 1 {
		t.Errorf("retried enrollment: %d %s", code, body)
	}

	bare, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spkiDER, _ := x509.MarshalPKIXPublicKey(bare.Public())
	if code, body := call(t, srv, "POST", "/api/v1/devices/sensor7/enroll", token,
		jsonBody(EnrollRequest{PublicKey: base64.StdEncoding.EncodeToString(spkiDER)})); code != http.StatusCreated {
		t.Fatalf("enroll a bare key: %d %s", code, body)
	}

	code, body = call(t, srv, "POST", "/api/v1/devices/sensor7/revoke", token,
		jsonBody(RevokeRequest{SPKISHA256: hex.EncodeToString(spki[:]), Reason: "keyCompromise"}))
	if code != http.StatusOK {
		t.Fatalf("revoke: %d %s", code, body)
	}
	d, _, err := reg.Get(context.Background(), "sensor7")
	if err != nil || len(d.Credentials) != 2 || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[1].Status != record.StatusActive {
		t.Fatalf("after revoking one key: %+v %v", d, err)
	}
	if code, _ := call(t, srv, "GET", "/api/v1/devices/sensor7", token, ""); code != http.StatusOK {
		t.Errorf("get: %d", code)
	}
	if code, body := call(t, srv, "GET", "/api/v1/devices?limit=10", token, ""); code != http.StatusOK || !strings.Contains(string(body), `"sensor7"`) {
		t.Errorf("list: %d %s", code, body)
	}
	if code, _ := call(t, srv, "DELETE", "/api/v1/devices/sensor7", token, ""); code != http.StatusNoContent {
		t.Errorf("delete: %d", code)
	}
	if code, _ := call(t, srv, "GET", "/api/v1/devices/sensor7", token, ""); code != http.StatusNotFound {
		t.Errorf("get after delete: %d", code)
	}
}

// TestAPIBadInput sends every kind of bad request: each gets its 4xx with a JSON error
// and leaves etcd unchanged.
func TestAPIBadInput(t *testing.T) {
	srv, reg := testAPI(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	goodCSR := testenv.CSRPEM(t, key, "ignored")
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	block, _ := pem.Decode([]byte(goodCSR))
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // breaks the signature
	badSig := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}))
	// One device with a revoked key, to try enrolling that key again.
	if code, body := call(t, srv, "POST", "/api/v1/devices/old/enroll", token, jsonBody(EnrollRequest{CSR: goodCSR})); code != http.StatusCreated {
		t.Fatalf("setup: %d %s", code, body)
	}
	if code, _ := call(t, srv, "POST", "/api/v1/devices/old/revoke", token, `{}`); code != http.StatusOK {
		t.Fatal("setup revoke")
	}
	spkiDER, _ := x509.MarshalPKIXPublicKey(key.Public())
	for _, tc := range []struct {
		name, method, path, auth, body string
		status                         int
	}{
		{"no token", "POST", "/api/v1/devices/a/enroll", "", jsonBody(EnrollRequest{CSR: goodCSR}), 401},
		{"wrong token", "POST", "/api/v1/devices/a/enroll", "nope", jsonBody(EnrollRequest{CSR: goodCSR}), 401},
		{"bad json", "POST", "/api/v1/devices/a/enroll", token, `{"csr": `, 400},
		{"unknown field", "POST", "/api/v1/devices/a/enroll", token, `{"csr": "x", "name": "b"}`, 400},
		{"trailing data", "POST", "/api/v1/devices/a/enroll", token, `{} {}`, 400},
		{"oversize body", "POST", "/api/v1/devices/a/enroll", token, `{"csr": "` + strings.Repeat("A", MaxBody) + `"}`, 413},
		{"nothing to enroll", "POST", "/api/v1/devices/a/enroll", token, `{}`, 400},
		{"both", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: goodCSR, PublicKey: "x"}), 400},
		{"malformed csr", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: "bm90IGEgY3Ny"}), 400},
		{"not base64", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: "%%%"}), 400},
		{"csr signature", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: badSig}), 400},
		{"p224 key", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: testenv.CSRPEM(t, p224, "ignored")}), 400},
		{"rsa 1024", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: testenv.CSRPEM(t, rsa1024, "ignored")}), 400},
		{"bad name", "POST", "/api/v1/devices/bad_name/enroll", token, jsonBody(EnrollRequest{CSR: goodCSR}), 400},
		{"name too long", "POST", "/api/v1/devices/" + strings.Repeat(strings.Repeat("a", 63)+".", 4) + "a/enroll", token, jsonBody(EnrollRequest{CSR: goodCSR}), 400},
		{"bad public key", "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{PublicKey: "AAEC"}), 400},
		{"revoked key again", "POST", "/api/v1/devices/old/enroll", token, jsonBody(EnrollRequest{PublicKey: base64.StdEncoding.EncodeToString(spkiDER)}), 409},
		{"bad reason", "POST", "/api/v1/devices/old/revoke", token, `{"reason": "bored"}`, 400},
		{"bad digest", "POST", "/api/v1/devices/old/revoke", token, `{"spki_sha256": "zz"}`, 400},
		{"unknown key", "POST", "/api/v1/devices/old/revoke", token, fmt.Sprintf(`{"spki_sha256": %q}`, strings.Repeat("00", 32)), 404},
		{"revoke nobody", "POST", "/api/v1/devices/nobody/revoke", token, `{}`, 404},
		{"bad limit", "GET", "/api/v1/devices?limit=0", token, "", 400},
		{"unknown route", "GET", "/api/v1/nosuch", token, "", 404},
		{"unknown version", "GET", "/api/v2/devices", "", "", 404},
		{"wrong method", "PUT", "/api/v1/devices/old/revoke", token, `{}`, 405},
		{"wrong method, no token", "DELETE", "/api/v1/audit", "", "", 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testenv.Revision(t, reg.Client)
			code, body := call(t, srv, tc.method, tc.path, tc.auth, tc.body)
			if code != tc.status {
				t.Errorf("status %d, want %d: %s", code, tc.status, body)
			}
			var e struct{ Error string }
			if json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Errorf("no JSON error: %s", body)
			}
			if after := testenv.Revision(t, reg.Client); after != before {
				t.Errorf("etcd changed: revision %d -> %d", before, after)
			}
		})
	}
}

func TestAPIEtcdDown(t *testing.T) {
	srv, reg := testAPI(t)
	reg.Client.Close() // as good as an unreachable etcd for the API
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	code, body := call(t, srv, "POST", "/api/v1/devices/a/enroll", token, jsonBody(EnrollRequest{CSR: testenv.CSRPEM(t, key, "ignored")}))
	if code != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("error")) {
		t.Errorf("enroll with etcd down: %d %s", code, body)
	}
}

// TestAPIMutualTLS authenticates a provisioning system by its client certificate.
func TestAPIMutualTLS(t *testing.T) {
	reg := testRegistry(t)
	adminCA, err := testenv.NewCA("provisioning systems")
	if err != nil {
		t.Fatal(err)
	}
	tenantCA, _ := testenv.NewCA("tenants' provisioning systems")
	admins := x509.NewCertPool()
	admins.AddCert(adminCA.Cert)
	tenants := x509.NewCertPool()
	tenants.AddCert(tenantCA.Cert)
	for _, name := range []string{"acme", "globex"} {
		reg.CreateTenant(t.Context(), testOperator, name)
	}
	reg.SetTenantDisabled(t.Context(), testOperator, "globex", true)
	if _, err := reg.Register(t.Context(), registry.Actor{ID: "x", Tenant: "acme"}, "a-dev", "", nil); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer((&API{CA: catest.New(t), Registry: reg, AdminCAs: admins, TenantCAs: tenants}).Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := adminCA.Issue("provisioner.example", key.Public(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tenantCert := func(org ...string) []tls.Certificate {
		c, err := tenantCA.Issue("provisioning."+strings.Join(org, "."), key.Public(), time.Now().Add(time.Hour), org...)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{{Certificate: [][]byte{c}, PrivateKey: key}}
	}
	for _, tc := range []struct {
		name   string
		certs  []tls.Certificate
		path   string
		status int
	}{
		{"admin certificate", []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, "/api/v1/tenants/globex", http.StatusOK},
		{"tenant certificate", tenantCert("acme"), "/api/v1/devices/a-dev", http.StatusOK},
		{"tenant certificate, another's", tenantCert("acme"), "/api/v1/tenants/globex", http.StatusNotFound},
		{"tenant certificate, operator's route", tenantCert("acme"), "/api/v1/tenants/acme/disable", http.StatusForbidden},
		{"disabled tenant's certificate", tenantCert("globex"), "/api/v1/devices", http.StatusForbidden},
		{"certificate of no tenant", tenantCert("initech"), "/api/v1/devices", http.StatusUnauthorized},
		{"certificate of two organizations", tenantCert("acme", "globex"), "/api/v1/devices", http.StatusUnauthorized},
		{"no certificate", nil, "", http.StatusUnauthorized},
		{"a device certificate", func() []tls.Certificate {
			dk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			c, _ := catest.New(t).Issue("sensor7", dk.Public(), time.Now())
			return []tls.Certificate{{Certificate: [][]byte{c.Raw}, PrivateKey: dk}}
		}(), "", http.StatusUnauthorized},
	} {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = tc.certs
		path := tc.path
		if path == "" {
			path = "/api/v1/devices"
		}
		method := "GET"
		if strings.HasSuffix(path, "/disable") {
			method = "POST"
		}
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
}

// TestStatusOf: each error of the registry, in the forms the registry returns it, gets
// its status (the registry's tests check which error a refusal carries).
func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
	}{
		{&registry.RateLimitError{What: "the device enrolls too often", Retry: time.Minute}, http.StatusTooManyRequests},
		{fmt.Errorf("%w: the device is suspended", registry.ErrForbidden), http.StatusForbidden},
		{fmt.Errorf("%w: %w", registry.ErrForbidden, fmt.Errorf("%w: %q", registry.ErrTenantDisabled, "acme")), http.StatusForbidden},
		{fmt.Errorf("%w: %q", registry.ErrTenantDisabled, "acme"), http.StatusConflict},
		{fmt.Errorf("%w: the name is below a device of another tenant", registry.ErrConflict), http.StatusConflict},
		{fmt.Errorf("%w: %q", registry.ErrBadReason, "x"), http.StatusBadRequest},
		{invalid(errors.New("x")), http.StatusBadRequest},
		{registry.ErrNotFound, http.StatusNotFound},
		{registry.ErrNoSuchKey, http.StatusNotFound},
		{registry.ErrNoTenant, http.StatusNotFound},
		{registry.ErrNoService, http.StatusNotFound},
		{registry.ErrBadTransferCode, http.StatusForbidden},
		{registry.ErrBadToken, http.StatusUnauthorized},
		{registry.ErrBadCode, http.StatusUnauthorized},
		{registry.ErrNotActive, http.StatusForbidden},
		{registry.ErrRevokedKey, http.StatusConflict},
		{fmt.Errorf("%w: bad JSON", registry.ErrStoredInvalid), http.StatusInternalServerError},
		{errors.New("etcd has no leader"), http.StatusServiceUnavailable},
	} {
		if got := statusOf(tc.err); got != tc.status {
			t.Errorf("statusOf(%v) = %d, want %d", tc.err, got, tc.status)
		}
	}
}

// A wrong method keeps ServeMux's Allow header under its JSON error.
func TestAPIWrongMethodAllow(t *testing.T) {
	srv, _ := testAPI(t)
	req, _ := http.NewRequest("PUT", srv.URL+"/api/v1/devices/a/revoke", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("%d, Allow %q, Content-Type %q; want 405, POST, application/json", resp.StatusCode, resp.Header.Get("Allow"), resp.Header.Get("Content-Type"))
	}
}
