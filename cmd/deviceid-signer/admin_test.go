package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"
)

// TestAdminCommands runs the operator's commands against etcd directly and against
// a running signer, and checks the registry and what they print.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	etcd := testenv.StartEtcd(t)
	etcdURL := etcd.URL()
	if _, err := stdout(t, func() error { return initCA([]string{"-dir", dir, "-zone", "iot.example"}) }); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "admin-token")
	if b, err := os.ReadFile(token); err != nil || len(strings.TrimSpace(string(b))) < 32 {
		t.Fatalf("init-ca wrote no admin token: %v %q", err, b)
	}
	if err := initCA([]string{"-dir", dir, "-zone", "iot.example"}); err == nil {
		t.Error("init-ca overwrote a CA")
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := testenv.CSR(t, key, "")
	csrFile := filepath.Join(dir, "csr.der") // DER, as openssl writes with -outform DER
	testenv.WriteFile(t, csrFile, csr)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	pubFile := filepath.Join(dir, "pub.pem")
	testenv.WriteFile(t, pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))

	direct := []string{"-zone", "iot.example", "-etcd", etcdURL}
	authority := []string{"-ca-cert", filepath.Join(dir, "ca.pem"), "-ca-key", filepath.Join(dir, "ca-key.pem")}
	certOut := filepath.Join(dir, "cert.pem")
	if _, err := stdout(t, func() error {
		return runAdmin("enroll", append(append(direct, authority...), "-device", "Sensor7", "-csr", csrFile, "-out", certOut))
	}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(certOut); err != nil || !strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Errorf("-out: %v %s", err, b)
	}
	if err := runAdmin("show", append(direct, "-device", "nosuch")); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("show of a missing device: %v", err)
	}
	if err := runAdmin("enroll", append(append(direct, authority...), "-device", "bad_name", "-pubkey", pubFile)); err == nil {
		t.Error("a bad name was enrolled")
	}
	// show and list need no CA, print a table, and flag an invalid record.
	testenv.Put(t, etcd.Client(), "/deviceid/iot.example/device/broken", `{"version": 1, "credentials": [{"status": "maybe"}]}`)
	out, err := stdout(t, func() error { return runAdmin("show", append(direct, "-device", "sensor7")) })
	if err != nil || !strings.Contains(out, "KEY (SHA-256 of the SPKI)") || !strings.Contains(out, "3 1 1, 4 0 0") {
		t.Errorf("show: %v\n%s", err, out)
	}
	out, err = stdout(t, func() error { return runAdmin("list", direct) })
	if err != nil || !strings.Contains(out, "INVALID RECORD") || !strings.Contains(out, "sensor7") {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = stdout(t, func() error { return runAdmin("list", append(direct, "-json")) })
	if err != nil || !strings.Contains(out, `"name":"broken"`) || !strings.Contains(out, `"name":"sensor7"`) {
		t.Errorf("list -json: %v\n%s", err, out)
	}
	if out, err := stdout(t, func() error { return runAdmin("delete", append(direct, "-device", "broken")) }); err != nil || !strings.Contains(out, "deleted broken") {
		t.Errorf("delete of an invalid record: %v %s", err, out)
	}
	if err := runAdmin("delete", append(direct, "-device", "broken")); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("delete of nothing: %v", err)
	}

	// The same commands through a running signer.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serveFlags{
		etcdFlags: etcdFlags{zone: "iot.example", prefix: "/deviceid", endpoints: etcdURL},
		caFlags:   caFlags{caCert: filepath.Join(dir, "ca.pem"), caKey: filepath.Join(dir, "ca-key.pem"), lifetime: ca.DefaultLifetime},
		listen:    "127.0.0.1:0", tokenFile: token,
	}
	ready := make(chan string, 1)
	served := make(chan error, 1)
	go func() { served <- srv.run(ctx, ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-served:
		t.Fatal(err)
	}
	remote := []string{"-server", "https://" + addr, "-token-file", token, "-server-ca", filepath.Join(dir, "ca.pem")}
	for _, c := range [][]string{
		{"enroll", "-device", "bare", "-pubkey", pubFile},
		{"code", "-device", "new"},
		{"revoke", "-device", "sensor7", "-reason", "keyCompromise"},
		{"list"},
		{"show", "-device", "sensor7"},
		{"delete", "-device", "bare"},
	} {
		if _, err := stdout(t, func() error { return runAdmin(c[0], append(remote, c[1:]...)) }); err != nil {
			t.Errorf("%v through the signer: %v", c, err)
		}
	}
	if err := runAdmin("delete", append(remote, "-device", "bare")); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Errorf("delete of nothing through the signer: %v", err)
	}
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: "iot.example"}
	d, _, err := reg.Get(ctx, "sensor7")
	if err != nil || len(d.Credentials) != 1 || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Cert == nil {
		t.Errorf("sensor7: %+v %v", d, err)
	}
	if _, _, err := reg.Get(ctx, "bare"); err != registry.ErrNotFound {
		t.Errorf("bare after delete: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve ended with %v", err)
	}
}

// TestHelp: each command's -h shows its usage line, an example and its own flags only.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		name       string
		run        func([]string) error
		has, hasNo []string
	}{
		{"show", func(a []string) error { return runAdmin("show", a) }, []string{"usage: deviceid-signer show", "example:", "-device", "-json", "-etcd-cert"}, []string{"-ca-key", "-csr", "-listen"}},
		{"enroll", func(a []string) error { return runAdmin("enroll", a) }, []string{"-csr", "-ca-key", "-supersede"}, []string{"-listen", "-reason"}},
		{"list", func(a []string) error { return runAdmin("list", a) }, []string{"-after", "-limit"}, []string{"-device", "-ca-key"}},
		{"serve", serve, []string{"-listen", "-etcd-password-file", "-ca-key"}, []string{"-device", "-csr"}},
		{"keygen", keygen, []string{"-pkcs11", "example:"}, []string{"-etcd"}},
		{"init-ca", initCA, []string{"-key", "-csr"}, []string{"-etcd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			flagOutput = &out
			defer func() { flagOutput = nil }()
			if err := tc.run([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("-h: %v", err)
			}
			for _, s := range tc.has {
				if !strings.Contains(out.String(), s) {
					t.Errorf("-h lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tc.hasNo {
				if strings.Contains(out.String(), s+" ") {
					t.Errorf("-h shows %q, not a flag of %s", s, tc.name)
				}
			}
		})
	}
}
