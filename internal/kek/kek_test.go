package kek

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrap(t *testing.T) {
	dir := t.TempDir()
	a, err := Generate(filepath.Join(dir, "a.kek"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(filepath.Join(dir, "a.kek")); err == nil {
		t.Error("Generate overwrote a KEK")
	}
	loaded, err := Load(filepath.Join(dir, "a.kek"))
	if err != nil || loaded.ID != a.ID {
		t.Fatalf("load: %v %v", loaded, err)
	}
	b, _ := Generate(filepath.Join(dir, "b.kek"))
	secret := []byte("a PKCS#8 private key")
	sealed := a.Wrap(secret, "iot.example/ksk-1")
	if bytes.Contains(sealed, secret) {
		t.Fatal("wrapped key holds the secret in the clear")
	}
	if got, err := loaded.Unwrap(sealed, a.ID, "iot.example/ksk-1"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unwrap: %q %v", got, err)
	}
	altered := bytes.Clone(sealed)
	altered[len(altered)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"another KEK":      func() ([]byte, error) { return b.Unwrap(sealed, a.ID, "iot.example/ksk-1") },
		"another KEK's ID": func() ([]byte, error) { return b.Unwrap(sealed, b.ID, "iot.example/ksk-1") },
		"another key":      func() ([]byte, error) { return a.Unwrap(sealed, a.ID, "iot.example/ksk-2") },
		"altered":          func() ([]byte, error) { return a.Unwrap(altered, a.ID, "iot.example/ksk-1") },
		"short":            func() ([]byte, error) { return a.Unwrap(sealed[:10], a.ID, "iot.example/ksk-1") },
	} {
		if _, err := try(); !errors.Is(err, ErrWrongKEK) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestLoadBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tt := range []struct{ path, err string }{
		{filepath.Join(dir, "missing"), "no such file"},
		{write("open", "AAAA", 0o644), "readable by others"},
		{write("text", "not base64!", 0o600), "not base64"},
		{write("short", "AAAA", 0o600), "32 bytes"},
	} {
		if _, err := Load(tt.path); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: %v, want %q", tt.path, err, tt.err)
		}
	}
}
