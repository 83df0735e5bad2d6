package test

import (
	"context"
	"crypto/elliptic"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/httpapi"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The roles of docs/operations.md: CoreDNS reads the zone's prefix, the signer reads
// and writes it and its own data. setupRBAC does with the client API what the
// etcdctl commands there do.
func setupRBAC(t *testing.T, root *clientv3.Client, users map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	zonePrefix := "/deviceid/iot.example/"
	signerPrefix := "/deviceid/_signer/iot.example/"
	steps := []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", users["root"]); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, "deviceid-dns"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "deviceid-dns", zonePrefix, clientv3.GetPrefixRangeEnd(zonePrefix), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := root.RoleAdd(ctx, "deviceid-signer"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "deviceid-signer", zonePrefix, clientv3.GetPrefixRangeEnd(zonePrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error {
			_, err := root.RoleGrantPermission(ctx, "deviceid-signer", signerPrefix, clientv3.GetPrefixRangeEnd(signerPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "coredns", users["coredns"]); return err },
		func() error { _, err := root.UserGrantRole(ctx, "coredns", "deviceid-dns"); return err },
		func() error { _, err := root.UserAdd(ctx, "signer", users["signer"]); return err },
		func() error { _, err := root.UserGrantRole(ctx, "signer", "deviceid-signer"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("RBAC step %d: %v", i, err)
		}
	}
}

// TestRBAC: with etcd authentication on, CoreDNS works with the read-only role and
// cannot write; the signer enrolls (record, code, CA record) with its role; a wrong
// password is named as the cause.
func TestRBAC(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	pw := map[string]string{"root": "root-pw", "coredns": "dns-pw", "signer": "signer-pw"}
	setupRBAC(t, etcd.Client(), pw)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "coredns-password")
	testenv.WriteFile(t, pwFile, []byte(pw["coredns"]+"\n"))

	// CoreDNS with the read-only user, its password from a file through the environment.
	t.Setenv(etcdclient.EnvUser, "coredns")
	t.Setenv(etcdclient.EnvPasswordFile, pwFile)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), metrics))
	waitLoaded(t, c)

	// The signer with its own user.
	authority, err := ca.InitCA(dir, "rbac CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	s := serveSigner(t, authority, filepath.Join(dir, "ca.pem"), etcdclient.Settings{Endpoints: []string{etcd.URL()}, Username: "signer", Password: pw["signer"]})
	var code httpapi.CodeResponse
	if status := s.admin(t, "POST", "/api/v1/devices/thermo1/code", "", &code); status != http.StatusCreated {
		t.Fatalf("code with the signer's role: %d", status)
	}
	cert := estEnroll(t, s, t.TempDir(), "thermo1", code.Code, "device.key")
	testenv.Eventually(t, "enrolled device served by CoreDNS with the read-only role", func() error {
		return answerIs(t, c, "thermo1._device.iot.example.", dns.RcodeSuccess, []string{eeOf(cert), discoveryOf(cert)})
	})
	if status, b, _ := s.try("GET", "/healthz", ""); status != http.StatusOK {
		t.Errorf("/healthz with the signer's role: %d %s", status, b)
	}

	// The read-only user cannot write, and the signer's cannot write outside its prefixes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for user, key := range map[string]string{"coredns": "/deviceid/iot.example/device/x", "signer": "/deviceid/other.example/device/x"} {
		cli, err := etcdclient.Settings{Endpoints: []string{etcd.URL()}, Username: user, Password: pw[user]}.New()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, key, "{}"); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s wrote %s: %v", user, key, err)
		}
		cli.Close()
	}
	// A wrong password is named as the cause.
	bad := etcdclient.Settings{Endpoints: []string{etcd.URL()}, Username: "coredns", Password: "wrong"}
	if _, err := bad.Connect(ctx, 5*time.Second, "/deviceid/iot.example/"); err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Errorf("a wrong password: %v", err)
	}
}
