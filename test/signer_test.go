package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

const adminToken = "test-admin-token-0123456789"

// signerServer is the real signer (EST, admin API) over HTTPS on a loopback port.
type signerServer struct {
	url       string
	caFile    string
	authority *ca.CA
	client    *http.Client // trusts the CA, as a device or provisioning system does
}

func startSigner(t testing.TB, etcd *testenv.Etcd) *signerServer {
	t.Helper()
	return startSignerKey(t, etcd, "")
}

// startSignerKey starts the signer with a new CA whose key is made in the HSM that
// keyURI names, or in a file when it is "".
func startSignerKey(t testing.TB, etcd *testenv.Etcd, keyURI string) *signerServer {
	t.Helper()
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "deviceid e2e CA", zone, elliptic.P256(), keyURI)
	if err != nil {
		t.Fatal(err)
	}
	return serveSigner(t, authority, filepath.Join(dir, ca.CACertFile), etcdclient.Settings{Endpoints: []string{etcd.URL()}})
}

// serveSigner runs the signer's HTTPS server for ca (its certificate in caFile) over
// the etcd that settings reach, on a free loopback port.
func serveSigner(t testing.TB, authority *ca.CA, caFile string, settings etcdclient.Settings) *signerServer {
	return serveSignerDNS(t, authority, caFile, settings, "")
}

// serveSignerDNS is serveSigner with the CoreDNS the console and API ask.
func serveSignerDNS(t testing.TB, authority *ca.CA, caFile string, settings etcdclient.Settings, dnsAddr string) *signerServer {
	t.Helper()
	return serveSignerWith(t, authority, caFile, settings, func(s *httpapi.Server) { s.DNS = dnsAddr })
}

// serveSignerWith is serveSigner with settings of the server changed by configure.
func serveSignerWith(t testing.TB, authority *ca.CA, caFile string, settings etcdclient.Settings, configure func(*httpapi.Server)) *signerServer {
	t.Helper()
	cli, err := settings.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	reg := &registry.Registry{Client: cli, Prefix: "/deviceid", Zone: zone}
	if err := reg.PutCA(t.Context(), authority); err != nil {
		t.Fatal(err)
	}
	cert, err := authority.ServerCertificate([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &httpapi.Server{API: httpapi.API{CA: authority, Registry: reg, Token: adminToken}, Etcd: settings}
	configure(server)
	srv, ln := server.HTTPServer(ln, cert, nil)
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	pool := x509.NewCertPool()
	pool.AddCert(authority.Cert)
	return &signerServer{
		url:       "https://" + ln.Addr().String(),
		caFile:    caFile,
		authority: authority,
		// Connections are kept for every concurrent client: a new TLS handshake per
		// request would measure handshakes, not enrollment.
		client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64},
			Timeout: 20 * time.Second},
	}
}

// run runs a command, failing the test with its output if it fails.
func run(t testing.TB, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr)
	}
	return out
}

// estEnroll enrolls over EST the way a device with only openssl and curl would:
// a key, a CSR, /simpleenroll with the code (or /simplereenroll with the current
// certificate when code is ""), and the PKCS#7 answer turned into PEM. The CSR names
// the device as its certificate will (Subject CN and SubjectAltName), which RFC 7030
// §4.2.2 requires of a re-enrollment.
func estEnroll(t testing.TB, s *signerServer, dir, device, code, keyFile string) *x509.Certificate {
	t.Helper()
	run(t, dir, "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", keyFile)
	owner := device + "._device.iot.example"
	csr := run(t, dir, "openssl", "req", "-new", "-key", keyFile, "-subj", "/CN="+owner, "-addext", "subjectAltName=DNS:"+owner, "-outform", "DER")
	if err := os.WriteFile(filepath.Join(dir, "csr.der"), csr, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "openssl", "base64", "-in", "csr.der", "-out", "csr.b64")
	args := []string{"-sS", "--fail-with-body", "--cacert", s.caFile, "-H", "Content-Type: application/pkcs10",
		"-H", "Content-Transfer-Encoding: base64", "--data-binary", "@csr.b64", "-o", "certs.b64"}
	if code != "" {
		args = append(args, "-u", device+":"+code, s.url+"/.well-known/est/simpleenroll")
	} else {
		args = append(args, "--cert", "device.pem", "--key", "device.key", s.url+"/.well-known/est/simplereenroll")
	}
	run(t, dir, "curl", args...)
	run(t, dir, "openssl", "base64", "-d", "-in", "certs.b64", "-out", "certs.der")
	pemOut := run(t, dir, "openssl", "pkcs7", "-inform", "DER", "-in", "certs.der", "-print_certs")
	b, _ := pem.Decode(pemOut)
	if b == nil {
		t.Fatalf("no certificate in the EST answer: %s", pemOut)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func eeOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "3 1 1 " + hex.EncodeToString(sum[:])
}

func revokedOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "255 1 1 " + hex.EncodeToString(sum[:])
}

func discoveryOf(c *x509.Certificate) string { return "4 0 0 " + hex.EncodeToString(c.Raw) }

// TestEnrollOverEST walks a device through the signer with openssl and curl, and
// checks each step in DNS: enrollment, re-enrollment over mutual TLS, revocation.
func TestEnrollOverEST(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	s := startSigner(t, etcd)
	dir := t.TempDir()
	name := "thermo1._device.iot.example."

	var code httpapi.CodeResponse
	if status := s.admin(t, "POST", "/api/v1/devices/thermo1/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code: %d", status)
	}
	first := estEnroll(t, s, dir, "thermo1", code.Code, "device.key")
	if first.DNSNames[0] != "thermo1._device.iot.example" {
		t.Errorf("SAN %v", first.DNSNames)
	}
	testenv.Eventually(t, "enrolled device in DNS", func() error {
		return answerIs(t, c, name, dns.RcodeSuccess, []string{eeOf(first), discoveryOf(first)})
	})
	// The code was used: it enrolls no other key (a retry with the same key would get
	// the same certificate back).
	run(t, dir, "openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "other.key")
	otherCSR := run(t, dir, "openssl", "req", "-new", "-key", "other.key", "-subj", "/CN=x", "-outform", "DER")
	os.WriteFile(filepath.Join(dir, "other.der"), otherCSR, 0o600)
	run(t, dir, "openssl", "base64", "-in", "other.der", "-out", "other.b64")
	out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", s.caFile, "-u", "thermo1:"+code.Code,
		"-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
		"--data-binary", "@"+filepath.Join(dir, "other.b64"), s.url+"/.well-known/est/simpleenroll").Output()
	if err != nil || string(out) != "401" {
		t.Errorf("reused code for another key: %s %v", out, err)
	}

	// Re-enrollment: the current certificate over mutual TLS gets a certificate for a new key.
	if err := os.WriteFile(filepath.Join(dir, "device.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: first.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	second := estEnroll(t, s, dir, "thermo1", "", "new.key")
	testenv.Eventually(t, "re-enrolled key in DNS", func() error {
		return answerIs(t, c, name, dns.RcodeSuccess, []string{eeOf(first), discoveryOf(first), eeOf(second), discoveryOf(second)})
	})

	// Revocation through the admin API: only revoked-status records remain.
	if status := s.admin(t, "POST", "/api/v1/devices/thermo1/revoke", `{"reason": "keyCompromise"}`, nil); status != http.StatusOK {
		t.Fatalf("revoke: %d", status)
	}
	testenv.Eventually(t, "revoked in DNS", func() error {
		return answerIs(t, c, name, dns.RcodeSuccess, []string{revokedOf(first), revokedOf(second)})
	})
	// The CA record the signer published is served for discovery.
	caName := s.authority.AKI() + "._ca._device.iot.example."
	if err := answerIs(t, c, caName, dns.RcodeSuccess, []string{"2 0 0 " + hex.EncodeToString(s.authority.Cert.Raw)}); err != nil {
		t.Error(err)
	}
}

// TestReenrollAcrossCARotation: the signers move to a new CA while the old one's
// record stays published; a device re-enrolls over EST (openssl and curl) with its
// certificate of the old CA, gets one of the new CA, and DNS serves both keys and both
// CAs for discovery.
func TestReenrollAcrossCARotation(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	old := startSigner(t, etcd)
	dir := t.TempDir()
	var code httpapi.CodeResponse
	if status := old.admin(t, "POST", "/api/v1/devices/thermo1/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code: %d", status)
	}
	first := estEnroll(t, old, dir, "thermo1", code.Code, "device.key")
	if err := os.WriteFile(filepath.Join(dir, "device.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: first.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	rotated := startSigner(t, etcd) // a new CA
	second := estEnroll(t, rotated, dir, "thermo1", "", "new.key")
	if err := second.CheckSignatureFrom(rotated.authority.Cert); err != nil {
		t.Errorf("the re-enrolled certificate is not of the new CA: %v", err)
	}
	testenv.Eventually(t, "both keys in DNS", func() error {
		return answerIs(t, c, "thermo1._device.iot.example.", dns.RcodeSuccess, []string{eeOf(first), discoveryOf(first), eeOf(second), discoveryOf(second)})
	})
	for _, authority := range []*ca.CA{old.authority, rotated.authority} {
		testenv.Eventually(t, "CA "+authority.AKI()+" in DNS", func() error {
			return answerIs(t, c, authority.AKI()+"._ca._device.iot.example.", dns.RcodeSuccess, []string{"2 0 0 " + hex.EncodeToString(authority.Cert.Raw)})
		})
	}
}

// TestConcurrentAdminWrites sends 50 enrollments and revocations for the same two
// devices at once through the admin API; DNS ends with exactly the expected records.
func TestConcurrentAdminWrites(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	s := startSigner(t, etcd)
	want := map[string][]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 50 {
		device := []string{"pump1", "pump2"}[i%2]
		wg.Go(func() {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, _ := x509.MarshalPKIXPublicKey(key.Public())
			body := fmt.Sprintf(`{"public_key": %q}`, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
			if status := s.admin(t, "POST", "/api/v1/devices/"+device+"/enroll", body, nil); status != http.StatusCreated {
				t.Errorf("enroll: %d", status)
				return
			}
			sum := sha256.Sum256(der)
			rr := "3 1 1 " + hex.EncodeToString(sum[:])
			if i%5 == 0 {
				revoke := fmt.Sprintf(`{"spki_sha256": %q, "reason": "superseded"}`, hex.EncodeToString(sum[:]))
				if status := s.admin(t, "POST", "/api/v1/devices/"+device+"/revoke", revoke, nil); status != http.StatusOK {
					t.Errorf("revoke: %d", status)
					return
				}
				rr = "255 1 1 " + hex.EncodeToString(sum[:])
			}
			mu.Lock()
			want[device] = append(want[device], rr)
			mu.Unlock()
		})
	}
	wg.Wait()
	for device, rrs := range want {
		testenv.Eventually(t, device+" in DNS", func() error {
			return answerIs(t, c, device+"._device.iot.example.", dns.RcodeSuccess, rrs)
		})
	}
}

// TestEnrollWithHSMCA: with the CA key in SoftHSM, a device enrolled over EST gets a
// certificate that verifies against the CA, and DNS publishes it.
func TestEnrollWithHSMCA(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	h := testenv.SoftHSM(t)
	s := startSignerKey(t, etcd, h.URI("ca"))
	if _, ok := s.authority.Key.(*pkcs11key.Key); !ok {
		t.Fatalf("the CA key is a %T, not in the HSM", s.authority.Key)
	}
	var code httpapi.CodeResponse
	if status := s.admin(t, "POST", "/api/v1/devices/thermo1/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code: %d", status)
	}
	cert := estEnroll(t, s, t.TempDir(), "thermo1", code.Code, "device.key")
	roots := x509.NewCertPool()
	roots.AddCert(s.authority.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate the HSM CA issued does not verify: %v", err)
	}
	// LoadCA opens the same key from the HSM, as deviceid-signer serve -ca-key does.
	loaded, err := ca.LoadCA(s.caFile, h.URI("ca"), zone)
	if err != nil || !loaded.Cert.Equal(s.authority.Cert) {
		t.Errorf("LoadCA from the HSM: %v", err)
	}
	testenv.Eventually(t, "enrolled device in DNS", func() error {
		return answerIs(t, c, "thermo1._device.iot.example.", dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})
}
