package test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/devpki"
	"github.com/deviceid/deviceid/internal/embedetcd"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// exampleCorefile reads a Corefile from corefile/ and moves its fixed ports to free
// ones, so that the test starts the file as shipped, on ports nothing else uses.
func exampleCorefile(t testing.TB, name string, ports ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "corefile", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, p := range ports {
		if !strings.Contains(s, p) {
			t.Fatalf("%s has no %q", name, p)
		}
		s = strings.ReplaceAll(s, p, fmt.Sprintf(":%d", freePort(t)))
	}
	return s
}

func TestDevCorefile(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "sensor7", time.Now().AddDate(1, 0, 0))
	put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(d, "active")))

	cf := exampleCorefile(t, "dev.Corefile", ":8181", ":8080", ":9153")
	cf = strings.Replace(cf, ":1053", ":0", 1)
	cf = strings.Replace(cf, "http://127.0.0.1:2379", etcd.cfg.ClientURL, 1)
	key := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	if !strings.Contains(cf, ".deviceid-dev/Kiot.example") {
		t.Fatal("dev.Corefile does not name the dev key")
	}
	cf = strings.Replace(cf, ".deviceid-dev/Kiot.example", key.base, 1)
	c := startCoreDNS(t, cf)
	eventually(t, "dev Corefile serves", func() error {
		return answerIs(t, c, "sensor7._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()})
	})
	r, err := resolve(c.udp, "udp", "sensor7._device.iot.example.", dns.TypeTLSA)
	if err != nil {
		t.Fatal(err)
	}
	verifySection(t, r.Answer, trustedKeys(t, c, key.ds))
}

// TestProductionCorefile runs corefile/production.Corefile against an etcd that
// requires mutual TLS, configured through the environment as the file documents.
func TestProductionCorefile(t *testing.T) {
	dir := t.TempDir()
	ca, err := devpki.NewCA("etcd test CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, ca.PEM())
	serverCert, serverKey := tlsPair(t, ca, dir, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := tlsPair(t, ca, dir, "client", x509.ExtKeyUsageClientAuth)

	clientURL := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	e, err := embedetcd.Start(embedetcd.Config{
		Dir: filepath.Join(dir, "etcd"), ClientURL: clientURL, PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		CertFile: serverCert, KeyFile: serverKey, ClientCAFile: caFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	devCA, _ := devpki.NewCA("device CA")
	d := newDevice(t, devCA, "sensor7", time.Now().AddDate(1, 0, 0))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	pair, err := tlsKeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second, TLS: tlsConfig(pair, pool)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(d, "active")))

	t.Setenv("DEVICEID_ZONE", "iot.example")
	t.Setenv("DEVICEID_ETCD", clientURL)
	t.Setenv("DEVICEID_ETCD_CERT", clientCert)
	t.Setenv("DEVICEID_ETCD_KEY", clientKey)
	t.Setenv("DEVICEID_ETCD_CA", caFile)
	t.Setenv("DEVICEID_NS", "ns1.example.net. ns2.example.net.")
	ksk := genZoneKey(t, dir, dns.ECDSAP256SHA256, true)
	zsk := genZoneKey(t, dir, dns.ED25519, false)
	t.Setenv("DEVICEID_KEYS", ksk.base+" "+zsk.base)
	cf := exampleCorefile(t, "production.Corefile", ":8181", ":8080", ":9153")
	cf = strings.Replace(cf, ":53 {", ":0 {", 1)
	c := startCoreDNS(t, cf)
	eventually(t, "production Corefile serves", func() error {
		return answerIs(t, c, "sensor7._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()})
	})
	if ns := c.query(t, zone, dns.TypeNS); len(ns.Answer) != 2 {
		t.Errorf("NS from the environment: %v", ns.Answer)
	}
	r, err := resolve(c.udp, "udp", "sensor7._device.iot.example.", dns.TypeTLSA)
	if err != nil {
		t.Fatal(err)
	}
	verifySection(t, r.Answer, trustedKeys(t, c, ksk.ds))
}

// tlsPair writes a certificate for 127.0.0.1 with the given use, and its key.
func tlsPair(t testing.TB, ca *devpki.CA, dir, name string, use x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := devpki.NewDeviceKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{use},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return certFile, keyFile
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
