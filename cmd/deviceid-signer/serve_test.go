package main

import (
	"crypto/elliptic"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
)

// The signer refuses to start with CA files that would give one role's certificates
// another's power: the device CA as the operator's or the tenants' CA, or the
// operator's CA among the tenants'.
func TestSeparateRoles(t *testing.T) {
	dir := t.TempDir()
	authority, err := ca.InitCA(dir, "device CA", "iot.example", elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	deviceCA := filepath.Join(dir, ca.CACertFile)
	write := func(name string, pem []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, pem, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	operators := write("operators.pem", testenv.NewTestCA(t, "operators").PEM())
	tenants := write("tenants.pem", testenv.NewTestCA(t, "tenants").PEM())
	b, _ := os.ReadFile(operators)
	mixed := write("mixed.pem", append(testenv.NewTestCA(t, "more tenants").PEM(), b...))
	for _, tc := range []struct{ admin, tenant, want string }{
		{operators, tenants, ""},
		{"", "", ""},
		{deviceCA, "", "every device would act as the registry operator"},
		{"", deviceCA, "every device would act as a tenant"},
		{operators, operators, "every tenant would act as the registry operator"},
		{operators, mixed, "every tenant would act as the registry operator"},
	} {
		admins, err := certPool(tc.admin)
		if err != nil {
			t.Fatal(err)
		}
		tenantPool, err := certPool(tc.tenant)
		if err != nil {
			t.Fatal(err)
		}
		err = separateRoles(authority, tc.admin, admins, tc.tenant, tenantPool)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("-admin-ca %q -tenant-ca %q: %v, want %q", filepath.Base(tc.admin), filepath.Base(tc.tenant), err, tc.want)
		}
	}
}

// TestCheckDNSAddrs: -dns and -dns-replicas take host:port, each one; anything else is
// refused at startup, naming the flag and the value.
func TestCheckDNSAddrs(t *testing.T) {
	for _, tc := range []struct {
		dns, replicas string
		bad           string // "" when accepted
	}{
		{"", "", ""},
		{"127.0.0.1:53", "10.0.0.1:53, [2001:db8::1]:5353 ns2.example.net:53", ""},
		{"127.0.0.1", "", `-dns "127.0.0.1"`},
		{"", "10.0.0.1:53,10.0.0.2", `-dns-replicas "10.0.0.2"`},
		{"", ":53", `-dns-replicas ":53"`},
		{"", "10.0.0.1:0", `-dns-replicas "10.0.0.1:0"`},
		{"", "10.0.0.1:dns", `-dns-replicas "10.0.0.1:dns"`},
	} {
		err := checkDNSAddrs(tc.dns, tc.replicas)
		if tc.bad == "" && err != nil || tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)) {
			t.Errorf("-dns %q -dns-replicas %q: %v, want %q", tc.dns, tc.replicas, err, tc.bad)
		}
	}
}
