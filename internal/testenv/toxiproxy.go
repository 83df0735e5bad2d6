package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
)

// ToxiproxyEnv names the toxiproxy-server binary; without it, bin/toxiproxy-server of
// the checkout (make bin/toxiproxy-server).
const ToxiproxyEnv = "DEVICEID_TOXIPROXY_SERVER"

// Toxiproxy is a running toxiproxy-server, Shopify's fault-injection TCP proxy: its
// client makes proxies and puts toxics (latency, bandwidth, timeouts, resets) on them.
type Toxiproxy struct {
	*toxiproxy.Client
}

// StartToxiproxy runs toxiproxy-server on a free loopback port until the test ends.
func StartToxiproxy(t testing.TB) *Toxiproxy {
	t.Helper()
	bin := os.Getenv(ToxiproxyEnv)
	if bin == "" {
		root, err := checkoutRoot()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(root, "bin", "toxiproxy-server")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("toxiproxy-server: %v (make bin/toxiproxy-server, or set $%s)", err, ToxiproxyEnv)
	}
	port := FreePort(t)
	cmd := exec.Command(bin, "-host", "127.0.0.1", "-port", fmt.Sprint(port))
	cmd.Env = append(os.Environ(), "LOG_LEVEL=warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	x := &Toxiproxy{toxiproxy.NewClient(fmt.Sprintf("127.0.0.1:%d", port))}
	Eventually(t, "toxiproxy-server answers", func() error {
		_, err := x.Proxies()
		return err
	})
	return x
}

// Proxy makes a proxy named name from a free loopback port to upstream (host:port).
func (x *Toxiproxy) Proxy(t testing.TB, name, upstream string) *toxiproxy.Proxy {
	t.Helper()
	p, err := x.CreateProxy(name, fmt.Sprintf("127.0.0.1:%d", FreePort(t)), upstream)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// checkoutRoot is the directory of the go.mod above the working directory.
func checkoutRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
