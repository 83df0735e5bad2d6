package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
)

// TestMain removes the SoftHSM2 token the tests made (testenv.Main).
func TestMain(m *testing.M) { testenv.Main(m) }

func TestInitAndLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := InitCA(dir, "test CA", "IoT.example", elliptic.P384(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InitCA(dir, "again", "iot.example", elliptic.P256(), ""); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("second InitCA: %v", err)
	}
	loaded, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), "iot.example")
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || loaded.Zone != "iot.example." || len(loaded.AKI()) != 40 {
		t.Errorf("loaded CA differs: %v %s", loaded.Zone, loaded.AKI())
	}
	other := t.TempDir()
	if _, err := InitCA(other, "other", "iot.example", elliptic.P256(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(other, CAKeyFile), "iot.example"); err == nil {
		t.Error("a key of another CA was accepted")
	}
	if _, err := InitCA(t.TempDir(), "x", "iot.example", elliptic.P224(), ""); err == nil {
		t.Error("a P-224 CA was made")
	}
}

// TestIntermediateCA runs the CSR workflow: a parent CA signs the intermediate's CSR,
// and device certificates chain through it to the parent.
func TestIntermediateCA(t *testing.T) {
	root, err := testenv.NewCA("external root") // one that may have intermediates
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err = InitIntermediate(dir, "deviceid intermediate", elliptic.P256(), ""); err != nil {
		t.Fatal(err)
	}
	if err := InitIntermediate(dir, "again", elliptic.P256(), ""); err == nil {
		t.Error("InitIntermediate overwrote a key")
	}
	b, _ := os.ReadFile(filepath.Join(dir, CARequestFile))
	block, _ := pem.Decode(b)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		t.Fatalf("CSR: %v", err)
	}
	tmpl := &x509.Certificate{SerialNumber: randomSerial(), Subject: csr.Subject, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().AddDate(5, 0, 0), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, csr.PublicKey, root.Key)
	if err != nil {
		t.Fatal(err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), root.PEM()...)
	os.WriteFile(filepath.Join(dir, CACertFile), chain, 0o644)
	ca, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), "iot.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(ca.Chain) != 1 || !ca.Chain[0].Equal(root.Cert) {
		t.Errorf("chain %v", ca.Chain)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := ca.Issue("sensor7", key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inter, roots := x509.NewCertPool(), x509.NewCertPool()
	inter.AddCert(ca.Cert)
	roots.AddCert(root.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device certificate does not chain to the root: %v", err)
	}
}

func TestIssue(t *testing.T) {
	ca, err := InitCA(t.TempDir(), "test CA", "iot.example", elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	for _, tc := range []struct {
		name   string
		device string
		pub    crypto.PublicKey
		err    string
	}{
		{"ecdsa", "sensor7", p256.Public(), ""},
		{"ed25519", "c90a.airquality", edPub, ""},
		{"rsa 2048", "Sensor8", rsa2048.Public(), ""},
		{"rsa 1024", "s", rsa1024.Public(), "too short"},
		{"p224", "s", p224.Public(), "not accepted"},
		{"bad name", "bad_name", p256.Public(), "only a-z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert, err := ca.Issue(tc.device, tc.pub, now)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ToLower(tc.device) + "._device.iot.example"
			if len(cert.DNSNames) != 1 || cert.DNSNames[0] != want {
				t.Errorf("SAN %v, want %s", cert.DNSNames, want)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || cert.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("usages %v %v", cert.ExtKeyUsage, cert.KeyUsage)
			}
			if cert.SerialNumber.BitLen() < 100 || cert.SerialNumber.BitLen() > 128 {
				t.Errorf("serial of %d bits", cert.SerialNumber.BitLen())
			}
			if record.KeyID(cert.AuthorityKeyId) != ca.AKI() || len(cert.SubjectKeyId) == 0 {
				t.Errorf("AKI %x SKI %x", cert.AuthorityKeyId, cert.SubjectKeyId)
			}
			if d := cert.NotAfter.Sub(now); d < DefaultLifetime-time.Minute || d > DefaultLifetime+time.Minute {
				t.Errorf("lifetime %s", d)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca.Cert)
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("does not chain to the CA: %v", err)
			}
		})
	}
}

// TestCAInHSM: init-ca makes the CA key in SoftHSM and writes only the certificate;
// LoadCA opens it by URI and refuses a key that is not the certificate's.
func TestCAInHSM(t *testing.T) {
	h := testenv.SoftHSM(t)
	dir := t.TempDir()
	ca, err := InitCA(dir, "hsm CA", "iot.example", elliptic.P384(), h.URI("ca"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a key file was written beside an HSM key: %v", err)
	}
	loaded, err := LoadCA(filepath.Join(dir, CACertFile), h.URI("ca"), "iot.example")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := loaded.Issue("sensor7", testenv.DeviceKey(t).Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("a certificate signed in the HSM does not verify: %v", err)
	}
	if _, err := InitCA(t.TempDir(), "again", "iot.example", elliptic.P256(), h.URI("ca")); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second CA key of the same name: %v", err)
	}
	if err := InitIntermediate(t.TempDir(), "intermediate", elliptic.P256(), h.URI("intermediate")); err != nil {
		t.Errorf("an intermediate CA with its key in the HSM: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), h.URI("intermediate"), "iot.example"); err == nil || !strings.Contains(err.Error(), "does not hold the key") {
		t.Errorf("another HSM key for the CA: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), h.URI("nosuch"), "iot.example"); err == nil || !strings.Contains(err.Error(), "no such key pair") {
		t.Errorf("a missing HSM key: %v", err)
	}
	if _, err := InitCA(t.TempDir(), "x", "iot.example", elliptic.P256(), "ca-key.pem"); err == nil {
		t.Error("a file name was taken as an HSM key")
	}
}
