package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/deviceid/deviceid/record"
)

// The handlers log every enrollment and revocation; the tests make many.
func init() { slog.SetDefault(slog.New(slog.DiscardHandler)) }

// testRegistry runs an embedded etcd and returns a registry for iot.example on it.
func testRegistry(t *testing.T) *Registry {
	t.Helper()
	return &Registry{Client: testenv.StartEtcd(t).Client(), Prefix: "/deviceid", Zone: "iot.example."}
}

func testCA(t *testing.T) *CA {
	t.Helper()
	ca, err := InitCA(t.TempDir(), "test CA", "iot.example", elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestInitAndLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := InitCA(dir, "test CA", "IoT.example", elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InitCA(dir, "again", "iot.example", elliptic.P256()); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
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
	if _, err := InitCA(other, "other", "iot.example", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(other, CAKeyFile), "iot.example"); err == nil {
		t.Error("a key of another CA was accepted")
	}
	if _, err := InitCA(t.TempDir(), "x", "iot.example", elliptic.P224()); err == nil {
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
	if err = InitIntermediate(dir, "deviceid intermediate", elliptic.P256()); err != nil {
		t.Fatal(err)
	}
	if err := InitIntermediate(dir, "again", elliptic.P256()); err == nil {
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
	inter := x509.NewCertPool()
	inter.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: poolOf(root.Cert), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device certificate does not chain to the root: %v", err)
	}
}

func TestIssue(t *testing.T) {
	ca := testCA(t)
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

func TestRegistry(t *testing.T) {
	r := testRegistry(t)
	ca := testCA(t)
	ctx := context.Background()
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c1, _ := ca.Issue("sensor7", k1.Public(), time.Now())
	c2, _ := ca.Issue("sensor7", k2.Public(), time.Now())

	if _, _, err := r.Get(ctx, "sensor7"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get before enrollment: %v", err)
	}
	d, err := r.Enroll(ctx, "Sensor7", record.Credential{Cert: c1.Raw})
	if err != nil || len(d.Credentials) != 1 {
		t.Fatalf("Enroll: %v %v", d, err)
	}
	_, rev, _ := r.Get(ctx, "sensor7")
	if _, err := r.Enroll(ctx, "sensor7", record.Credential{Cert: c1.Raw}); err != nil {
		t.Fatal(err)
	}
	if _, rev2, _ := r.Get(ctx, "sensor7"); rev2 != rev {
		t.Error("enrolling the same certificate again wrote the record")
	}
	if d, err = r.Enroll(ctx, "sensor7", record.Credential{Cert: c2.Raw}); err != nil || len(d.Credentials) != 2 {
		t.Fatalf("second key: %v %v", d, err)
	}
	k3, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c3, _ := ca.Issue("sensor7", k3.Public(), time.Now())
	if d, err = r.Enroll(ctx, "sensor7", record.Credential{Cert: c3.Raw}, c2.RawSubjectPublicKeyInfo); err != nil || len(d.Credentials) != 3 ||
		d.Credentials[1].Status != record.StatusRevoked || d.Credentials[1].Reason != "superseded" || d.Credentials[0].Status != record.StatusActive {
		t.Fatalf("enroll superseding the second key: %+v %v", d, err)
	}
	if d, err = r.Revoke(ctx, "sensor7", c1.RawSubjectPublicKeyInfo, "keyCompromise", time.Now()); err != nil {
		t.Fatal(err)
	}
	if d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Reason != "keyCompromise" || d.Credentials[2].Status != record.StatusActive {
		t.Errorf("after revoking one: %+v", d.Credentials)
	}
	if _, err := r.Enroll(ctx, "sensor7", record.Credential{Cert: c1.Raw}); err == nil {
		t.Error("a revoked key was enrolled again")
	}
	if _, err := r.Revoke(ctx, "sensor7", nil, "no such reason", time.Now()); !errors.Is(err, ErrBadReason) {
		t.Errorf("bad reason: %v", err)
	}
	if _, err := r.Revoke(ctx, "sensor7", []byte("nope"), "", time.Now()); !errors.Is(err, ErrNoSuchKey) {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := r.Revoke(ctx, "nosuch", nil, "", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if d, err = r.Revoke(ctx, "sensor7", nil, "cessationOfOperation", time.Now()); err != nil || d.Credentials[2].Status != record.StatusRevoked || d.Credentials[0].Reason != "keyCompromise" {
		t.Errorf("revoke all: %+v %v", d, err)
	}
	if _, err := r.Enroll(ctx, "bad_name", record.Credential{Cert: c1.Raw}); err == nil {
		t.Error("a bad name was enrolled")
	}
	spkiOnly, _ := x509.MarshalPKIXPublicKey(k2.Public())
	if _, err := r.Enroll(ctx, "bare", record.Credential{SPKI: spkiOnly}); err != nil {
		t.Errorf("SPKI-only enrollment: %v", err)
	}
	names, next, err := r.List(ctx, "", 1)
	if err != nil || len(names) != 1 || names[0] != "bare" || next != "bare" {
		t.Errorf("List page 1: %v %q %v", names, next, err)
	}
	names, next, _ = r.List(ctx, next, 1)
	if len(names) != 1 || names[0] != "sensor7" || next != "" {
		t.Errorf("List page 2: %v %q", names, next)
	}
	if err := r.Delete(ctx, "sensor7"); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, "sensor7"); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
	if _, _, err := r.Get(ctx, "sensor7"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
}

// TestConcurrentWriters runs 50 enrollments and revocations on the same devices at
// once: every one must land, none overwrite another.
func TestConcurrentWriters(t *testing.T) {
	r := testRegistry(t)
	ca := testCA(t)
	ctx := context.Background()
	devices := []string{"a", "b"}
	type op struct {
		device string
		cert   *x509.Certificate
		revoke bool
	}
	var ops []op
	for i := range 50 {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		dev := devices[i%2]
		c, err := ca.Issue(dev, k.Public(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op{device: dev, cert: c, revoke: i%5 == 0})
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ops))
	for _, o := range ops {
		wg.Go(func() {
			if _, err := r.Enroll(ctx, o.device, record.Credential{Cert: o.cert.Raw}); err != nil {
				errs <- err
				return
			}
			if o.revoke {
				if _, err := r.Revoke(ctx, o.device, o.cert.RawSubjectPublicKeyInfo, "superseded", time.Now()); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, dev := range devices {
		d, _, err := r.Get(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for _, o := range ops {
			if o.device == dev {
				want[string(o.cert.RawSubjectPublicKeyInfo)] = map[bool]string{false: record.StatusActive, true: record.StatusRevoked}[o.revoke]
			}
		}
		if len(d.Credentials) != len(want) {
			t.Errorf("%s has %d credentials, want %d", dev, len(d.Credentials), len(want))
		}
		for _, c := range d.Credentials {
			if want[string(c.SPKI)] != c.Status {
				t.Errorf("%s: a credential is %s, want %s", dev, c.Status, want[string(c.SPKI)])
			}
		}
	}
}

// TestCodeUsedOnce races ten enrollments with one code, each for its own key: exactly
// one gets a certificate, and the record holds exactly that key.
func TestCodeUsedOnce(t *testing.T) {
	r := testRegistry(t)
	ca := testCA(t)
	ctx := context.Background()
	code, err := r.IssueCode(ctx, "sensor7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	won := make(chan []byte, 10)
	for range 10 {
		wg.Go(func() {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			spki, _ := x509.MarshalPKIXPublicKey(key.Public())
			cert, err := r.EnrollWithCode(ctx, "sensor7", code, spki, func() (record.Credential, error) {
				c, err := ca.Issue("sensor7", key.Public(), time.Now())
				return record.Credential{Cert: c.Raw}, err
			})
			if err == nil {
				won <- cert
			} else if !errors.Is(err, ErrBadCode) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(won)
	var winners [][]byte
	for c := range won {
		winners = append(winners, c)
	}
	d, _, err := r.Get(ctx, "sensor7")
	if len(winners) != 1 || err != nil || len(d.Credentials) != 1 || string(d.Credentials[0].Cert) != string(winners[0]) {
		t.Errorf("%d enrollments won; record %+v %v", len(winners), d, err)
	}
	if _, err := r.EnrollWithCode(ctx, "sensor7", "wrong", []byte("x"), nil); !errors.Is(err, ErrBadCode) {
		t.Errorf("wrong code: %v", err)
	}
}
