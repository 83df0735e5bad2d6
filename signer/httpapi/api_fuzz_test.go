package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/signer/registry"
)

// FuzzAPIDecode feeds arbitrary bodies and query strings to the API's request
// decoding: every request type's JSON, the CSR or key of an enrollment, the key digest
// of a revocation and a list's filters. Each either decodes or is refused with a 4xx
// JSON error; none panics.
func FuzzAPIDecode(f *testing.F) {
	f.Add(`{"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"}`, "limit=10&attr=model=x")
	f.Add(`{"public_key": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"}`, "state=active&tenant=acme")
	f.Add(`{"spki_sha256": "00", "reason": "keyCompromise"}`, "after=a&prefix=B")
	f.Add(`{"attributes": {"a": "b"}} {}`, "limit=0")
	f.Add(`{"code": "X", "keep_keys": true, "tenant": "t"}`, "attr=nokey")
	f.Fuzz(func(t *testing.T, body, query string) {
		if _, err := url.ParseQuery(query); err != nil {
			return
		}
		targets := []any{&EnrollRequest{}, &RevokeRequest{}, &RegisterRequest{}, &CodeRequest{}, &AttributesRequest{},
			&AcceptRequest{}, &AssignRequest{}, &TenantRequest{}, &TokenRequest{}}
		for _, v := range targets {
			r := httptest.NewRequest("POST", "/api/v1/devices/x/enroll", strings.NewReader(body))
			r.URL.RawQuery = query
			w := httptest.NewRecorder()
			if !readJSON(w, r, v) {
				if w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
					t.Fatalf("refused with %d", w.Code)
				}
				var e ErrorResponse
				if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
					t.Fatalf("refusal body %q", w.Body.String())
				}
				continue
			}
			switch req := v.(type) {
			case *EnrollRequest:
				csr, pub, err := req.Decode()
				if err == nil && (csr == nil) == (pub == nil) {
					t.Fatalf("decoded %+v to csr %v and key %v", req, csr, pub)
				}
			case *RevokeRequest:
				if d, err := req.Digest(); err == nil && d != nil && len(d) != 32 {
					t.Fatalf("digest of %d bytes", len(d))
				}
			}
			c := &apiCall{w: w, r: r, actor: registry.Actor{ID: "token:x", Tenant: "acme"}}
			if f, err := c.filter(); err == nil && (f.Limit < 0 || f.Limit > 1000) {
				t.Fatalf("limit %d passed", f.Limit)
			}
		}
	})
}
