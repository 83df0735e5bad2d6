package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAdminCommands runs the operator's commands against etcd directly and against
// a running signer, and checks the registry after each.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	etcdURL := testenv.StartEtcd(t).URL()
	if err := initCA([]string{"-dir", dir, "-zone", "iot.example"}); err != nil {
		t.Fatal(err)
	}
	if err := initCA([]string{"-dir", dir, "-zone", "iot.example"}); err == nil {
		t.Error("init-ca overwrote a CA")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := testenv.CSR(t, key, "")
	csrFile := filepath.Join(dir, "csr.der") // DER, as openssl writes with -outform DER
	os.WriteFile(csrFile, csr, 0o600)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	pubFile := filepath.Join(dir, "pub.pem")
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("a-token-of-enough-length\n"), 0o600)

	direct := []string{"-zone", "iot.example", "-etcd", etcdURL, "-ca-cert", filepath.Join(dir, "ca.pem"), "-ca-key", filepath.Join(dir, "ca-key.pem")}
	certOut := filepath.Join(dir, "cert.pem")
	if err := adminCommand("enroll", append(direct, "-device", "Sensor7", "-csr", csrFile, "-out", certOut)); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(certOut); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("-out: %v %s", err, b)
	}
	if err := adminCommand("show", append(direct, "-device", "nosuch")); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("show of a missing device: %v", err)
	}
	if err := adminCommand("enroll", append(direct, "-device", "bad_name", "-pubkey", pubFile)); err == nil {
		t.Error("a bad name was enrolled")
	}
	// Reading needs no CA key (only enroll issues certificates).
	noCA := []string{"-zone", "iot.example", "-etcd", etcdURL, "-ca-key", filepath.Join(dir, "missing.pem")}
	if err := adminCommand("show", append(noCA, "-device", "sensor7")); err != nil {
		t.Errorf("show without the CA key: %v", err)
	}
	if err := adminCommand("list", noCA); err != nil {
		t.Errorf("list without the CA key: %v", err)
	}

	// The same commands through a running signer.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serveFlags{listen: "127.0.0.1:0", zone: "iot.example", prefix: "/deviceid", etcd: etcdURL,
		caCert: filepath.Join(dir, "ca.pem"), caKey: filepath.Join(dir, "ca-key.pem"), tokenFile: token, lifetime: signer.DefaultLifetime}
	ready := make(chan string, 1)
	served := make(chan error, 1)
	go func() { served <- srv.run(ctx, ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-served:
		t.Fatal(err)
	}
	remote := []string{"-server", "https://" + addr, "-token-file", token, "-ca-cert", filepath.Join(dir, "ca.pem")}
	if err := adminCommand("enroll", append(remote, "-device", "bare", "-pubkey", pubFile)); err != nil {
		t.Fatal(err)
	}
	if err := adminCommand("code", append(remote, "-device", "new")); err != nil {
		t.Error(err)
	}
	if err := adminCommand("revoke", append(remote, "-device", "sensor7", "-reason", "keyCompromise")); err != nil {
		t.Fatal(err)
	}
	if err := adminCommand("list", remote); err != nil {
		t.Error(err)
	}
	if err := adminCommand("delete", append(remote, "-device", "bare")); err != nil {
		t.Error(err)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg := &signer.Registry{Client: cli, Prefix: "/deviceid", Zone: "iot.example"}
	d, _, err := reg.Get(ctx, "sensor7")
	if err != nil || len(d.Credentials) != 1 || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Cert == nil {
		t.Errorf("sensor7: %+v %v", d, err)
	}
	if _, _, err := reg.Get(ctx, "bare"); err != signer.ErrNotFound {
		t.Errorf("bare after delete: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve ended with %v", err)
	}
}
