package testenv

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/embedetcd"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TLSFiles are the PEM files of an etcd that requires client certificates: its CA,
// and a client certificate and key from that CA.
type TLSFiles struct {
	CA, ClientCert, ClientKey string
}

// StartEtcdTLS runs a single-node etcd that serves clients over TLS and requires a
// client certificate from its CA, and returns it with the files a client needs.
func StartEtcdTLS(t testing.TB) (*Etcd, TLSFiles) {
	t.Helper()
	dir := t.TempDir()
	ca := NewTestCA(t, "etcd test CA")
	files := TLSFiles{CA: filepath.Join(dir, "ca.pem")}
	WriteFile(t, files.CA, ca.PEM())
	serverCert, serverKey := ca.WriteTLSPair(t, dir, "server", x509.ExtKeyUsageServerAuth)
	files.ClientCert, files.ClientKey = ca.WriteTLSPair(t, dir, "client", x509.ExtKeyUsageClientAuth)
	s := &Etcd{t: t, Cfg: embedetcd.Config{
		Dir:       filepath.Join(dir, "etcd"),
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", FreePort(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", FreePort(t)),
		CertFile:  serverCert, KeyFile: serverKey, ClientCAFile: files.CA,
	}}
	s.Start()
	t.Cleanup(s.Stop)
	return s, files
}

// ClientTLS returns an etcd client that authenticates with the files' certificate.
func ClientTLS(t testing.TB, files TLSFiles, endpoints ...string) *clientv3.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		TLS: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// WriteTLSPair writes a certificate for 127.0.0.1 and localhost with the given use
// (server or client authentication), and its key, as dir/name.pem and dir/name-key.pem.
func (ca *CA) WriteTLSPair(t testing.TB, dir, name string, use x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key := DeviceKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
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
	WriteFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	WriteFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return certFile, keyFile
}

// WriteFile writes a file readable by its owner only, failing the test on error.
func WriteFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartClusterTLS runs an n-member cluster that serves clients over TLS with the
// given server certificate and key, requiring client certificates from caFile.
func StartClusterTLS(t testing.TB, n int, certFile, keyFile, caFile string) *Cluster {
	t.Helper()
	c := layout(t, n, embedetcd.Config{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile})
	c.start(t)
	return c
}
