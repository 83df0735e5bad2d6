package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
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
	"github.com/deviceid/deviceid/signer/httpapi"
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
	if err != nil || !strings.Contains(out, "KEY (SHA-256 of the SPKI)") || !strings.Contains(out, "3 1 1, 4 0 0") || !strings.Contains(out, "state active") {
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

// TestHelp: each command's -h shows its usage line, what it does (a registry
// command: its route's summary), an example and its own flags only.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		name       string
		run        func([]string) error
		has, hasNo []string
	}{
		{"show", func(a []string) error { return runAdmin("show", a) }, []string{"usage: deviceid-signer show", "example:", "-device", "-json", "-etcd-cert"}, []string{"-ca-key", "-csr", "-listen"}},
		{"enroll", func(a []string) error { return runAdmin("enroll", a) }, []string{"-csr", "-ca-key", "-supersede"}, []string{"-listen", "-reason"}},
		{"list", func(a []string) error { return runAdmin("list", a) }, []string{"-after", "-limit"}, []string{"-device", "-ca-key"}},
		{"assign", func(a []string) error { return runAdmin("assign", a) }, []string{"Give a device to a tenant without a transfer code", "The registry operator only.", "-keep-keys"}, []string{"-csr", "-ca-key"}},
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

// TestCommandRoutes: every command calls a route of the admin API and has a flag for
// each of its parameters, and every route has a command but for the few listed.
func TestCommandRoutes(t *testing.T) {
	noCommand := map[string]string{ // route → why it has no command
		"getWhoami":         "a check of a token; the signer's console calls it",
		"getDevicesNameDns": "show prints what DNS publishes, worked out from the record",
		"getTenantsTenant":  "tenants lists the tenants, each whole",
		"getKeys":           "keys list reads the keys on etcd directly, beside the keys commands that change them",
	}
	called := map[string]string{}
	for name, c := range adminCommands {
		rt, ok := apiRoutes[c.route]
		if !ok {
			t.Errorf("%s calls %q, no route of the API", name, c.route)
			continue
		}
		if other, ok := called[c.route]; ok {
			t.Errorf("%s and %s both call %s", name, other, c.route)
		}
		called[c.route] = name
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		if c.flags != nil {
			c.flags(fs, &cmdValues{})
		}
		params := rt.Query
		for _, s := range strings.Split(rt.Path, "/") {
			if p, ok := strings.CutPrefix(s, "{"); ok {
				params = append(params, strings.TrimSuffix(p, "}"))
			}
		}
		for _, p := range params {
			if fs.Lookup(paramFlag(p)) == nil {
				t.Errorf("%s: no flag -%s for the parameter %s of %s %s", name, paramFlag(p), p, rt.Method, rt.Path)
			}
		}
	}
	for _, rt := range httpapi.Routes() {
		_, exempt := noCommand[rt.ID]
		switch name, ok := called[rt.ID]; {
		case ok && exempt:
			t.Errorf("%s has the command %s: take it off noCommand", rt.ID, name)
		case !ok && !exempt:
			t.Errorf("%s %s (%s) has no command", rt.Method, rt.Path, rt.ID)
		}
		delete(noCommand, rt.ID)
	}
	for id := range noCommand {
		t.Errorf("noCommand lists %s, no route of the API", id)
	}
}

// TestCommandRequests: the flags fill in the route's path, escaped, its query
// parameters and the body.
func TestCommandRequests(t *testing.T) {
	for _, tc := range []struct {
		args               []string
		method, path, body string
		err                string
	}{
		{[]string{"revoke", "-device", "sensor7", "-reason", "keyCompromise"}, "POST", "/api/v1/devices/sensor7/revoke", `{"reason":"keyCompromise"}`, ""},
		{[]string{"show", "-device", "a/b c"}, "GET", "/api/v1/devices/a%2Fb%20c", "", ""},
		{[]string{"delete"}, "", "", "", "-device is required"},
		{[]string{"list", "-tenant", "acme", "-attr", "model=th-200", "-attr", "rev=2", "-after", "s7"}, "GET", "/api/v1/devices?after=s7&attr=model%3Dth-200&attr=rev%3D2&limit=100&tenant=acme", "", ""},
		{[]string{"export", "-state", "active", "-name-prefix", "lamp"}, "GET", "/api/v1/export?prefix=lamp&state=active", "", ""},
		{[]string{"services", "-limit", "5"}, "GET", "/api/v1/services?limit=5", "", ""},
		{[]string{"audit", "-device", "sensor7", "-operation", "device.revoke"}, "GET", "/api/v1/audit?device=sensor7&limit=100&operation=device.revoke", "", ""},
		{[]string{"audit", "-since", "2026-12-01T00:00:00Z"}, "GET", "/api/v1/audit?limit=100&since=2026-12-01T00%3A00%3A00Z", "", ""},
		{[]string{"overview", "-tenant", "acme"}, "GET", "/api/v1/overview?tenant=acme", "", ""},
		{[]string{"assign", "-device", "sensor7"}, "", "", "", "assign needs -tenant"},
		{[]string{"assign", "-device", "sensor7", "-tenant", "acme", "-keep-keys"}, "POST", "/api/v1/devices/sensor7/assign", `{"tenant":"acme","keep_keys":true}`, ""},
		{[]string{"service-revoke", "-service", "_8883._tcp.mqtt"}, "POST", "/api/v1/services/_8883._tcp.mqtt/revoke", `{"reason":"superseded"}`, ""},
		{[]string{"service-delete"}, "", "", "", "-service is required"},
		{[]string{"tenant-create", "-tenant", "acme"}, "POST", "/api/v1/tenants", `{"name":"acme"}`, ""},
		{[]string{"tokens", "-tenant", "acme"}, "GET", "/api/v1/tenants/acme/tokens", "", ""},
		{[]string{"token-revoke", "-tenant", "acme", "-id", "0123"}, "DELETE", "/api/v1/tenants/acme/tokens/0123", "", ""},
		{[]string{"token-revoke", "-tenant", "acme"}, "", "", "", "-id is required"},
		{[]string{"tenants"}, "GET", "/api/v1/tenants", "", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c := adminCommands[tc.args[0]]
			fs := flag.NewFlagSet(tc.args[0], flag.ContinueOnError)
			var v cmdValues
			if c.flags != nil {
				c.flags(fs, &v)
			}
			if err := fs.Parse(tc.args[1:]); err != nil {
				t.Fatal(err)
			}
			req, err := c.request(apiRoutes[c.route], fs, &v)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body := ""
			if req.body != nil {
				b, _ := json.Marshal(req.body)
				body = string(b)
			}
			if req.method != tc.method || req.path != tc.path || body != tc.body {
				t.Errorf("%s %s %s, want %s %s %s", req.method, req.path, body, tc.method, tc.path, tc.body)
			}
		})
	}
}
