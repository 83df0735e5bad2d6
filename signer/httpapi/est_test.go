package httpapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/ca/catest"
	"github.com/deviceid/deviceid/signer/registry"

	"go.mozilla.org/pkcs7"
)

// testEST serves EST over TLS as the signer does: client certificates are asked for
// and checked against the CA when given.
func testEST(t *testing.T) (*httptest.Server, *registry.Registry, *ca.CA, *httptest.Server) {
	t.Helper()
	reg := testRegistry(t)
	issuer := catest.New(t)
	admin := httptest.NewServer((&API{CA: issuer, Registry: reg, Token: token}).Handler())
	t.Cleanup(admin.Close)
	return serveEST(t, reg, issuer), reg, issuer, admin
}

// serveEST serves EST for reg with ca over TLS, asking for client certificates.
func serveEST(t *testing.T, reg *registry.Registry, issuer *ca.CA) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer((&EST{CA: issuer, Registry: reg, Timeout: 2 * time.Second}).Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// estClient is a device's HTTPS client: it trusts the test server, and presents
// cert when given.
func estClient(srv *httptest.Server, cert *tls.Certificate) *http.Client {
	tr := srv.Client().Transport.(*http.Transport).Clone()
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: tr}
}

// estPost sends a CSR for key; a re-enrollment's CSR repeats the Subject and
// SubjectAltName of the certificate it renews (RFC 7030 §4.2.2), given as renews.
func estPost(t *testing.T, c *http.Client, url, user, pass string, key *ecdsa.PrivateKey, renews ...*x509.Certificate) (int, []byte) {
	t.Helper()
	var der []byte
	if len(renews) > 0 {
		der = testenv.CSR(t, key, renews[0].Subject.CommonName, renews[0].DNSNames...)
	} else {
		der = testenv.CSR(t, key, "")
	}
	req := estRequest(url, base64.StdEncoding.EncodeToString(der))
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// estRequest is a POST of a base64 PKCS#10 body with the headers RFC 7030 asks for.
func estRequest(url, body string) *http.Request {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Content-Transfer-Encoding", "base64")
	return req
}

func certsOf(t *testing.T, body []byte) []*x509.Certificate {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), ""))
	if err != nil {
		t.Fatalf("not base64: %s", body)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	return p7.Certificates
}

func TestEST(t *testing.T) {
	srv, reg, issuer, admin := testEST(t)
	c := estClient(srv, nil)

	resp, err := c.Get(srv.URL + "/.well-known/est/cacerts")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := certsOf(t, body); len(got) != 1 || !got[0].Equal(issuer.Cert) {
		t.Fatalf("cacerts %v", got)
	}
	resp, err = c.Get(srv.URL + "/.well-known/ca/" + ca.DashedKeyID(issuer.Cert.SubjectKeyId) + ".pem")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if b, _ := pem.Decode(body); resp.StatusCode != 200 || b == nil || string(b.Bytes) != string(issuer.Cert.Raw) {
		t.Errorf("CA discovery: %d %s", resp.StatusCode, body)
	}

	// A code from the admin API, used once.
	code, body := call(t, admin, "POST", "/api/v1/devices/sensor7/code", token, "")
	var cr CodeResponse
	if code != 201 || json.Unmarshal(body, &cr) != nil || cr.Code == "" {
		t.Fatalf("code: %d %s", code, body)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	enrollURL := srv.URL + "/.well-known/est/simpleenroll"
	if status, body := estPost(t, c, enrollURL, "sensor7", "wrong", key); status != 401 {
		t.Errorf("wrong code: %d %s", status, body)
	}
	status, body := estPost(t, c, enrollURL, "sensor7", cr.Code, key)
	if status != 200 {
		t.Fatalf("simpleenroll: %d %s", status, body)
	}
	cert := certsOf(t, body)[0]
	if cert.DNSNames[0] != "sensor7._device.iot.example" || !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("issued %v", cert.DNSNames)
	}
	// A retry with the same code and key (its answer lost) gets the same certificate;
	// the code does nothing for any other key.
	if status, body := estPost(t, c, enrollURL, "sensor7", cr.Code, key); status != 200 || !certsOf(t, body)[0].Equal(cert) {
		t.Errorf("retried enrollment: %d", status)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if status, _ := estPost(t, c, enrollURL, "sensor7", cr.Code, other); status != 401 {
		t.Errorf("a used code worked for another key: %d", status)
	}
	if status, _ := estPost(t, c, enrollURL, "", "", key); status != 401 {
		t.Errorf("no authentication: %d", status)
	}

	// Re-enrollment with the current certificate over mutual TLS adds the new key.
	tlsCert := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	reURL := srv.URL + "/.well-known/est/simplereenroll"
	if status, body := estPost(t, estClient(srv, &tlsCert), reURL+"?supersede=true", "", "", key2, cert); status != 200 {
		t.Fatalf("simplereenroll: %d %s", status, body)
	}
	if status, _ := estPost(t, c, reURL, "", "", key2, cert); status != 401 {
		t.Errorf("re-enrollment without a certificate: %d", status)
	}
	// The retry of that re-enrollment (same key) gets the same certificate, no second one.
	current := tlsCert2(t, reg, key2)
	currentCert, _ := x509.ParseCertificate(current.Certificate[0])
	_, first := estPost(t, estClient(srv, &current), reURL, "", "", key2, currentCert)
	if d, _, _ := reg.Get(t.Context(), "sensor7"); len(d.Credentials) != 2 || len(certsOf(t, first)) != 1 {
		t.Errorf("retried re-enrollment added a credential: %+v", d)
	}
	// A CSR that does not repeat the certificate's Subject and SubjectAltName is refused.
	if status, body := estPost(t, estClient(srv, &current), reURL, "", "", key2); status != 403 {
		t.Errorf("re-enrollment with another subject: %d %s", status, body)
	}
	// A certificate for the same name from another CA is refused.
	otherCA := catest.New(t)
	forged, err := otherCA.Issue("sensor7", key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forgedTLS := tls.Certificate{Certificate: [][]byte{forged.Raw}, PrivateKey: key}
	if status, body := estPost(t, estClient(srv, &forgedTLS), reURL, "", "", key2, forged); status != 403 || !strings.Contains(string(body), "invalid client certificate") {
		t.Errorf("re-enrollment with another CA's certificate: %d %s", status, body)
	}
	d, _, err := reg.Get(t.Context(), "sensor7")
	if err != nil || len(d.Credentials) != 2 || d.Credentials[0].Reason != "superseded" || d.Credentials[1].Status != record.StatusActive {
		t.Fatalf("after re-enrollment superseding the old key: %+v %v", d, err)
	}
	// Once revoked, the old certificate cannot renew itself back.
	if _, err := reg.Revoke(t.Context(), testOperator, "sensor7", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	if status, body := estPost(t, estClient(srv, &tlsCert), reURL, "", "", key2, cert); status != 403 || !strings.Contains(string(body), "not an active credential") {
		t.Errorf("a revoked certificate re-enrolled: %d %s", status, body)
	}
	d, _, _ = reg.Get(t.Context(), "sensor7")
	for _, c := range d.Credentials {
		if c.Status != record.StatusRevoked {
			t.Errorf("a credential is %s after the refused re-enrollment", c.Status)
		}
	}
}

// TestESTAcrossCARotation: after the signer moves to a new CA, a device re-enrolls
// with its certificate of the old CA while the old CA's record is published, and no
// longer once the operator deletes it; a CA the zone never published is refused.
func TestESTAcrossCARotation(t *testing.T) {
	reg := testRegistry(t)
	oldCA, newCA := catest.New(t), catest.New(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.ParseCertificateRequest(testenv.CSR(t, key, ""))
	if err != nil {
		t.Fatal(err)
	}
	done, err := (&registry.Enroller{CA: oldCA, Registry: reg}).Enroll(t.Context(), registry.Enrollment{Actor: testOperator, Device: "sensor7", CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	for _, issuer := range []*ca.CA{oldCA, newCA} { // as each signer does when it starts
		if err := reg.PutCA(t.Context(), issuer); err != nil {
			t.Fatal(err)
		}
	}
	reenroll := func(srv *httptest.Server, cert *x509.Certificate, key *ecdsa.PrivateKey) (int, []byte) {
		tlsCert := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key}
		next, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return estPost(t, estClient(srv, &tlsCert), srv.URL+"/.well-known/est/simplereenroll", "", "", next, cert)
	}

	srv := serveEST(t, reg, newCA)
	status, body := reenroll(srv, done.Cert, key)
	if status != 200 {
		t.Fatalf("re-enrollment with the old CA's certificate: %d %s", status, body)
	}
	if _, err := certsOf(t, body)[0].Verify(x509.VerifyOptions{Roots: poolOf(newCA.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the new certificate is not of the new CA: %v", err)
	}
	strayCA := catest.New(t)
	stray, err := strayCA.Issue("sensor7", key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if status, body := reenroll(srv, stray, key); status != 403 || !strings.Contains(string(body), "invalid client certificate") {
		t.Errorf("a CA the zone does not publish: %d %s", status, body)
	}

	// The operator retires the old CA: a signer started since refuses its certificates.
	if _, err := reg.Client.Delete(t.Context(), record.CAKey(reg.Prefix, reg.Zone, oldCA.AKI())); err != nil {
		t.Fatal(err)
	}
	if status, body := reenroll(serveEST(t, reg, newCA), done.Cert, key); status != 403 || !strings.Contains(string(body), "invalid client certificate") {
		t.Errorf("the old CA's certificate after its record is gone: %d %s", status, body)
	}
	if d, _, _ := reg.Get(t.Context(), "sensor7"); len(d.Credentials) != 2 {
		t.Errorf("credentials after the rotation: %+v", d.Credentials)
	}
}

// TestESTBadInput: each bad enrollment gets a 4xx saying why (RFC 7030 §4.2.3: a
// human-readable text body) and writes nothing.
func TestESTBadInput(t *testing.T) {
	srv, reg, _, _ := testEST(t)
	c := estClient(srv, nil)
	code, _, err := reg.IssueCode(t.Context(), testOperator, "sensor7", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	badKeyCSR := testenv.CSR(t, p224, "")
	for _, tc := range []struct {
		name, user, pass, body string
		contentType            string
		status                 int
	}{
		{"not base64", "sensor7", code, "%%%", "", 400},
		{"not a CSR", "sensor7", code, base64.StdEncoding.EncodeToString([]byte("hello")), "", 400},
		{"wrong key type", "sensor7", code, base64.StdEncoding.EncodeToString(badKeyCSR), "", 400},
		{"oversize", "sensor7", code, strings.Repeat("A", 1<<20), "", 413},
		{"not a PKCS#10 content type", "sensor7", code, "", "application/json", 415},
		{"bad name", "bad_name", code, "", "", 400},
		{"code of another device", "sensor8", code, "", "", 401},
		{"no authentication", "", "", "", "", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.body
			if body == "" {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				der := testenv.CSR(t, key, "")
				body = base64.StdEncoding.EncodeToString(der)
			}
			before := testenv.Revision(t, reg.Client)
			req := estRequest(srv.URL+"/.well-known/est/simpleenroll", body)
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.HasPrefix(string(b), strconv.Itoa(tc.status)+" ") {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if after := testenv.Revision(t, reg.Client); after != before {
				t.Errorf("etcd changed: %d -> %d", before, after)
			}
		})
	}
	// The code survived every refused attempt: bad requests do not use it up.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if status, body := estPost(t, c, srv.URL+"/.well-known/est/simpleenroll", "sensor7", code, key); status != 200 {
		t.Errorf("the code was used up by a refused request: %d %s", status, body)
	}
}

// tlsCert2 is the client certificate of the device's active credential for key.
func tlsCert2(t *testing.T, reg *registry.Registry, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	d, _, err := reg.Get(t.Context(), "sensor7")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Credentials {
		if c.Status == record.StatusActive && c.Cert != nil && string(c.SPKI) == string(spki) {
			return tls.Certificate{Certificate: [][]byte{c.Cert}, PrivateKey: key}
		}
	}
	t.Fatal("no active certificate for the key")
	return tls.Certificate{}
}
