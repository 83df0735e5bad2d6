package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// SoftHSM's module, from Debian's libsofthsm2.
var softHSMModules = []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"}

// HSM is a SoftHSM2 token: its module, its label, and a file with its user PIN. The
// keys a test makes there carry a prefix of the test's own.
type HSM struct {
	Module, Token, PINFile string
	prefix                 string
}

var (
	softHSMOnce sync.Once
	softHSM     HSM
	softHSMDir  string
	softHSMErr  error
	hsmTests    atomic.Int32
)

// Main runs a package's tests (call it from TestMain) and then removes the SoftHSM2
// token they made, which lives as long as the process.
func Main(m *testing.M) {
	code := m.Run()
	if softHSMDir != "" {
		os.RemoveAll(softHSMDir)
	}
	os.Exit(code)
}

// SoftHSM returns the test process's SoftHSM2 token, made at the first call. A
// PKCS#11 module reads its configuration and finds its tokens when it is first
// initialized, so every test of a process shares one token, each with key labels of
// its own (HSM.URI).
func SoftHSM(t testing.TB) *HSM {
	t.Helper()
	softHSMOnce.Do(func() { softHSM, softHSMErr = newSoftHSM() })
	if softHSMErr != nil {
		t.Fatal(softHSMErr)
	}
	h := softHSM
	h.prefix = fmt.Sprintf("t%d-", hsmTests.Add(1))
	return &h
}

func newSoftHSM() (HSM, error) {
	var h HSM
	for _, m := range softHSMModules {
		if _, err := os.Stat(m); err == nil {
			h.Module = m
			break
		}
	}
	if h.Module == "" {
		return h, fmt.Errorf("SoftHSM2 is not installed (Debian package softhsm2): none of %v", softHSMModules)
	}
	dir, err := os.MkdirTemp("", "deviceid-softhsm-")
	if err != nil {
		return h, err
	}
	softHSMDir = dir
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+dir+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return h, err
	}
	os.Setenv("SOFTHSM2_CONF", conf) // for the module in this process and softhsm2-util
	h.Token, h.PINFile = "deviceid-test", filepath.Join(dir, "pin")
	if err := os.WriteFile(h.PINFile, []byte("1234\n"), 0o600); err != nil {
		return h, err
	}
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", h.Token, "--pin", "1234", "--so-pin", "123456").CombinedOutput()
	if err != nil {
		return h, fmt.Errorf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return h, nil
}

// Label is the label of the test's key named object.
func (h *HSM) Label(object string) string { return h.prefix + object }

// URI is the PKCS#11 URI of the test's key named object, module and PIN file included.
func (h *HSM) URI(object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=%s", h.Token, h.Label(object), h.Module, h.PINFile)
}

// TokenURI names the token with its module and PIN file, and no key: what keys etcd's
// hsm line and the key manager take.
func (h *HSM) TokenURI() string {
	return fmt.Sprintf("pkcs11:token=%s?module-path=%s&pin-source=%s", h.Token, h.Module, h.PINFile)
}
