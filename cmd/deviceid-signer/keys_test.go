package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// TestKeysCommand: an operator takes over a running zone's BIND key files, turns on
// managed keys, lists them and rolls the ZSK by hand; mistakes get clear errors.
func TestKeysCommand(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	direct := []string{"-zone", "iot.example", "-etcd", etcd.URL()}
	kekFile := filepath.Join(dir, "kek")
	if err := keysCommand([]string{"kek", "-out", kekFile}); err != nil {
		t.Fatal(err)
	}
	if err := keysCommand([]string{"kek", "-out", kekFile}); err == nil {
		t.Error("keys kek overwrote a KEK")
	}
	ksk, _, err := dnskey.Generate(dir, "iot.example.", dns.ECDSAP256SHA256, true)
	if err != nil {
		t.Fatal(err)
	}
	zsk, _, _ := dnskey.Generate(dir, "iot.example.", dns.ECDSAP256SHA256, false)
	if err := keysCommand(append([]string{"import"}, append(direct, ksk)...)); err == nil || !strings.Contains(err.Error(), "-kek") {
		t.Errorf("import without -kek: %v", err)
	}
	other, _, _ := dnskey.Generate(dir, "other.example.", dns.ECDSAP256SHA256, true)
	if err := keysCommand(append([]string{"import", "-kek", kekFile}, append(direct, other)...)); err == nil || !strings.Contains(err.Error(), "not iot.example") {
		t.Errorf("import of another zone's key: %v", err)
	}
	if out, err := stdout(t, func() error {
		return keysCommand(append([]string{"import", "-kek", kekFile}, append(direct, ksk+".key", zsk+".private")...))
	}); err != nil || strings.Count(out, ", imported\n") != 2 {
		t.Fatalf("import: %q %v", out, err)
	}
	if err := keysCommand(append([]string{"roll", "-role", "zsk", "-kek", kekFile}, direct...)); err == nil || !strings.Contains(err.Error(), "not managed") {
		t.Errorf("roll before enable: %v", err)
	}
	if err := keysCommand(append([]string{"enable", "-zsk-lifetime", "1m"}, direct...)); err == nil || !strings.Contains(err.Error(), "zsk_lifetime") {
		t.Errorf("enable with an impossible policy: %v", err)
	}
	if err := keysCommand(append([]string{"enable", "-parent", "127.0.0.1:1"}, direct...)); err != nil {
		t.Fatal(err)
	}
	if out, err := stdout(t, func() error { return keysCommand(append([]string{"roll", "-role", "zsk", "-kek", kekFile}, direct...)) }); err != nil || !strings.Contains(out, "zsk rollover asked by the operator") {
		t.Fatalf("roll: %q %v", out, err)
	}
	if err := keysCommand(append([]string{"roll", "-role", "zsk", "-kek", kekFile}, direct...)); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Errorf("a second roll during one: %v", err)
	}
	out, err := stdout(t, func() error { return keysCommand(append([]string{"list"}, direct...)) })
	if err != nil || strings.Count(out, "published") != 3 || !strings.Contains(out, "zsk-") {
		t.Errorf("list: %q %v", out, err)
	}
	if err := keysCommand(append([]string{"pause"}, direct...)); err != nil {
		t.Fatal(err)
	}
	if out, _ := stdout(t, func() error { return keysCommand(append([]string{"list"}, direct...)) }); !strings.Contains(out, "paused") {
		t.Errorf("list when paused: %q", out)
	}
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: "iot.example"}
	keys, _ := reg.ZoneKeys(t.Context())
	var roles []string
	for _, k := range keys {
		if k.Err != nil {
			t.Fatalf("%s: %v", k.ID, k.Err)
		}
		roles = append(roles, k.Key.Role)
	}
	slices.Sort(roles)
	if !slices.Equal(roles, []string{record.RoleKSK, record.RoleZSK, record.RoleZSK}) {
		t.Errorf("roles %v", roles)
	}
	entries, _, _ := reg.Audit(t.Context(), registry.OperatorActor("t"), registry.AuditFilter{})
	var ops []string
	for _, e := range entries {
		ops = append(ops, e.Operation)
	}
	if !slices.Contains(ops, "key.import") || !slices.Contains(ops, "key.create") || !slices.Contains(ops, "keys.settings") {
		t.Errorf("audit %v", ops)
	}
	if err := keysCommand(append([]string{"frobnicate"}, direct...)); err == nil || !strings.Contains(err.Error(), "unknown keys command") {
		t.Errorf("unknown: %v", err)
	}
	if err := keysCommand(append([]string{"enabel"}, direct...)); err == nil || !strings.Contains(err.Error(), `did you mean "enable"`) {
		t.Errorf("misspelt: %v", err)
	}
}
