package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// stdout runs f and returns what it printed.
func stdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = old
	w.Close()
	b, _ := io.ReadAll(r)
	return string(b), ferr
}

func TestKeygen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "dir") // made by keygen
	out, err := stdout(t, func() error { return keygen([]string{"-zone", "iot.example", "-dir", dir}) })
	if err != nil || !strings.Contains(out, "DS for the parent zone") || !strings.Contains(out, "key file "+dir) {
		t.Fatalf("keygen: %v\n%s", err, out)
	}

	h := testenv.SoftHSM(t)
	out, err = stdout(t, func() error { return keygen([]string{"-zone", "iot.example", "-pkcs11", h.URI("ksk")}) })
	if err != nil {
		t.Fatal(err)
	}
	k, err := pkcs11key.Open(h.URI("ksk"), elliptic.P256())
	if err != nil {
		t.Fatalf("the key keygen made is not in the token: %v", err)
	}
	defer k.Close()
	dk, _ := dnskey.FromECDSA("iot.example", k.Public().(*ecdsa.PublicKey), true)
	if ds := dk.ToDS(dns.SHA256).String(); !strings.Contains(out, ds) || !strings.Contains(out, `key pkcs11 "`+h.URI("ksk")+`"`) {
		t.Errorf("keygen -pkcs11 printed\n%s\nwant the Corefile line and %s", out, ds)
	}
	for _, args := range [][]string{
		{"-zone", "iot.example", "-pkcs11", h.URI("ksk")},          // the name is taken
		{"-zone", "iot.example", "-zsk", "-pkcs11", h.URI("zsk")},  // HSM keys are KSKs
		{"-zone", "iot.example", "-pkcs11", "pkcs11:token=nosuch"}, // names no key
	} {
		if _, err := stdout(t, func() error { return keygen(args) }); err == nil {
			t.Errorf("keygen %v succeeded", args)
		}
	}
}
