package pkcs11key

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
)

func signs(t *testing.T, k *Key) error {
	t.Helper()
	d := sha256.Sum256([]byte("probe"))
	sig, err := k.Sign(rand.Reader, d[:], crypto.SHA256)
	if err == nil && !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("the token's signature does not verify")
	}
	return err
}

func TestGenerateOpen(t *testing.T) {
	h := testenv.SoftHSM(t)
	k, err := Generate(h.URI("ca"), elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	if err := signs(t, k); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(h.URI("ca"), elliptic.P384()); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("a second key of the same name: %v", err)
	}
	opened, err := Open(h.URI("ca"), elliptic.P256(), elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { opened.Close() })
	if !opened.Public().(*ecdsa.PublicKey).Equal(k.Public()) || signs(t, opened) != nil {
		t.Error("the opened key is not the one made")
	}
	// The PIN from $DEVICEID_PKCS11_PIN_FILE and the module from $DEVICEID_PKCS11_MODULE.
	t.Setenv(ModuleEnv, h.Module)
	t.Setenv(PINFileEnv, h.PINFile)
	byEnv, err := Open("pkcs11:token="+h.Token+";object="+h.Label("ca"), elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	byEnv.Close()
}

// TestBadKeys: each bad URI or token gives an error that says what is wrong.
func TestBadKeys(t *testing.T) {
	h := testenv.SoftHSM(t)
	k, err := Generate(h.URI("p384"), elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	wrongPIN := filepath.Join(t.TempDir(), "pin")
	testenv.WriteFile(t, wrongPIN, []byte("9999\n"))
	q := "?module-path=" + h.Module + "&pin-source=" + h.PINFile
	for _, tc := range []struct{ name, uri, want string }{
		{"not a URI", "ksk.pem", "missing pcks11: prefix"},
		{"malformed", "pkcs11:token", "malformed path attribute"},
		{"both pins", "pkcs11:token=x;object=y?pin-value=1&pin-source=/p", "must not contain pin-source and pin-value"},
		{"relative module", "pkcs11:token=x;object=y?module-path=lib.so", "must be absolute"},
		{"no module", "pkcs11:token=x;object=y?pin-source=/p", "names no module"},
		{"unreachable module", "pkcs11:token=x;object=y?module-path=/nonexistent/module.so&pin-source=" + h.PINFile, "not a readable module"},
		{"no pin", "pkcs11:token=x;object=y?module-path=" + h.Module, "has no PIN"},
		{"relative pin file", "pkcs11:token=x;object=y?module-path=" + h.Module + "&pin-source=pin", "Could not parse pin-source"},
		{"no token", "pkcs11:object=y" + q, "exactly one of token="},
		{"two tokens", "pkcs11:token=x;serial=1;object=y" + q, "exactly one of token="},
		{"no object", "pkcs11:token=x" + q, "names no key"},
		{"a certificate", "pkcs11:token=x;object=y;type=cert" + q, "type=private"},
		{"no such token", "pkcs11:token=nosuch;object=y" + q, "no such token"},
		{"missing object", "pkcs11:token=" + h.Token + ";object=nosuch" + q, "no such key pair"},
		{"wrong pin", "pkcs11:token=" + h.Token + ";object=" + h.Label("p384") + "?module-path=" + h.Module + "&pin-source=" + wrongPIN, "wrong PIN"},
		{"wrong key type", h.URI("p384"), "want ECDSA on P-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.uri, elliptic.P256())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open(%q) = %v, want an error with %q", tc.uri, err, tc.want)
			}
		})
	}
	if _, err := Open("pkcs11:token=x;object=y?pin-value=secret", elliptic.P256()); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("an error shows the PIN: %v", err)
	}
}

// TestRecovers: a key whose token session is lost signs again once the token can be
// opened, at most one attempt a second.
func TestRecovers(t *testing.T) {
	h := testenv.SoftHSM(t)
	k, err := Generate(h.URI("ksk"), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	clock := time.Now()
	now = func() time.Time { return clock }
	t.Cleanup(func() { now = time.Now })

	k.spec.logout(k.ctx) // the token went away under the key: its session is gone
	k.ctx = nil
	pin := k.spec.config.Pin
	k.spec.config.Pin = "9999" // and cannot be opened for now
	if err := signs(t, k); err == nil {
		t.Fatal("a key whose token is gone signed")
	}
	k.spec.config.Pin = pin // the token is back
	if err := signs(t, k); err == nil {
		t.Error("reopened within a second of the last attempt")
	}
	clock = clock.Add(time.Second)
	if err := signs(t, k); err != nil {
		t.Errorf("after the token came back: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"pkcs11:token=a;object=b?module-path=/m.so&pin-source=/p", "pkcs11:id=%01%02;slot-id=3", "pkcs11:", "pkcs11:token=%zz", "pkcs11:?pin-value=1&&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		s, err := parse(uri)
		if err == nil && s.label == nil && s.id == nil {
			t.Errorf("%q parsed without naming a key", uri)
		}
	})
}

// TestWrongPINWhileLoggedIn: while a key of a token is open, the process is logged in
// to the token, and a second Open with another PIN would not be checked by the token:
// it is refused here, so that a reload with a wrong PIN fails now rather than at the
// next start. Once every key is closed the token checks the PIN itself.
func TestWrongPINWhileLoggedIn(t *testing.T) {
	h := testenv.SoftHSM(t)
	k, err := Generate(h.URI("open"), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	wrongPIN := filepath.Join(t.TempDir(), "pin")
	testenv.WriteFile(t, wrongPIN, []byte("9999\n"))
	wrong := "pkcs11:token=" + h.Token + ";object=" + h.Label("open") + "?module-path=" + h.Module + "&pin-source=" + wrongPIN
	if k2, err := Open(wrong, elliptic.P256()); err == nil || !strings.Contains(err.Error(), "PIN") {
		t.Errorf("another PIN while logged in: %v", err)
		if k2 != nil {
			k2.Close()
		}
	}
	same, err := Open(h.URI("open"), elliptic.P256())
	if err != nil {
		t.Fatalf("the same PIN while logged in: %v", err)
	}
	same.Close()
	k.Close()
	if _, err := Open(wrong, elliptic.P256()); err == nil || !strings.Contains(err.Error(), "wrong PIN") {
		t.Errorf("another PIN once logged out: %v", err)
	}
	if k, err := Open(h.URI("open"), elliptic.P256()); err != nil {
		t.Errorf("the right PIN again: %v", err)
	} else {
		k.Close()
	}
}

// TestInToken: a key record names a key in the token by path attributes only; the
// module and the PIN are always the replica's own.
func TestInToken(t *testing.T) {
	h := testenv.SoftHSM(t)
	token := h.TokenURI()
	ref, err := ObjectRef(token, h.Label("zsk-1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "pkcs11:token=" + h.Token + ";object=" + h.Label("zsk-1"); ref != want {
		t.Errorf("ObjectRef: %q, want %q", ref, want)
	}
	if _, err := ObjectRef(h.URI("k"), "zsk-1"); err == nil || !strings.Contains(err.Error(), "names a key") {
		t.Errorf("ObjectRef of a key's URI: %v", err)
	}
	// Only the token's name goes into a record: a replica naming the token alike
	// takes it, whatever else the manager's URI says.
	withModel := strings.Replace(token, "pkcs11:", "pkcs11:model=SoftHSM%20v2;", 1)
	if ref, err := ObjectRef(withModel, "zsk-1"); err != nil || ref != "pkcs11:token="+h.Token+";object=zsk-1" {
		t.Errorf("ObjectRef(%q) = %q, %v", withModel, ref, err)
	}
	tests := []struct {
		name, ref, err string
	}{
		{"object", ref, ""},
		{"id", "pkcs11:token=" + h.Token + ";id=%01%02", ""},
		{"a module", ref + "?module-path=/tmp/evil.so", "module or a PIN"},
		{"a PIN file", ref + "?pin-source=/etc/shadow", "module or a PIN"},
		{"another token", "pkcs11:token=other;object=k", "not in the token"},
		{"no token", "pkcs11:object=k", "not in the token"},
		{"no key", "pkcs11:token=" + h.Token, "names no key"},
		{"an empty label", "pkcs11:token=" + h.Token + ";object=", "empty object="},
		{"another attribute", "pkcs11:token=" + h.Token + ";object=k;library-manufacturer=x", "library-manufacturer="},
		{"not a URI", "file:/etc/key", "PKCS#11 URI"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uri, err := InToken(token, tt.ref)
			if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
			if err == nil && (!strings.Contains(uri, "module-path="+h.Module) || !strings.Contains(uri, "pin-source="+h.PINFile)) {
				t.Errorf("%q does not carry the token URI's module and PIN", uri)
			}
		})
	}
	// The key made under the name a record gives opens by that name.
	uri, _ := InToken(token, ref)
	k, err := Generate(uri, elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	opened, err := Open(uri, elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	if err := opened.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(uri, elliptic.P256()); err == nil {
		t.Error("a deleted key opens")
	}
	for _, bad := range []string{h.URI("k"), "pkcs11:object=k?module-path=" + h.Module + "&pin-source=" + h.PINFile, "pkcs11:token=x?module-path=/nonexistent.so&pin-source=" + h.PINFile} {
		if err := CheckToken(bad); err == nil {
			t.Errorf("CheckToken(%q) passed", bad)
		}
	}
}
