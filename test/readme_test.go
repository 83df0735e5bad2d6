package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
)

// readmeBlocks returns the sh blocks of the README marked <!-- production -->, in order.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)<!-- production -->\\s*```sh\\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) < 5 {
		t.Fatalf("the README's production section has %d marked blocks, want 5", len(blocks))
	}
	return blocks
}

// TestREADMEProduction runs the README's production section as written (its blocks
// are read from README.md) against a 3-member etcd cluster with TLS and roles, made
// with the PKI its first block makes: it must end with an EST enrollment and a
// DNSSEC-validated answer for the device.
func TestREADMEProduction(t *testing.T) {
	blocks := readmeBlocks(t)
	tools := t.TempDir()
	for out, pkg := range map[string]string{
		"../bin/coredns": "../cmd/coredns", "../bin/deviceid-signer": "../cmd/deviceid-signer",
		filepath.Join(tools, "etcdctl"): "go.etcd.io/etcd/etcdctl/v3",
	} {
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	d := t.TempDir()
	env := append(os.Environ(), "D="+d, "ETCD_HOSTS=127.0.0.1", "PATH="+tools+":"+os.Getenv("PATH"))
	run := func(name, script string) string {
		t.Helper()
		log, err := os.Create(filepath.Join(d, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		defer log.Close()
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = "..", env, log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		err = cmd.Run()
		// What the script started in the background (the signer, CoreDNS) ends with the test.
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) })
		out, _ := os.ReadFile(log.Name())
		if err != nil {
			t.Fatalf("README production %s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	run("pki", blocks[0])
	pki := filepath.Join(d, "etcd-pki")
	cluster := testenv.StartClusterTLS(t, 3, filepath.Join(pki, "127.0.0.1.pem"), filepath.Join(pki, "127.0.0.1-key.pem"), filepath.Join(pki, "ca.pem"))
	env = append(env,
		"DEVICEID_ETCD="+strings.Join(cluster.Endpoints(), ","),
		fmt.Sprintf("SIGNER_LISTEN=127.0.0.1:%d", testenv.FreePort(t)),
		fmt.Sprintf("DEVICEID_DNS_PORT=%d", dnsPort(t)),
		fmt.Sprintf("DEVICEID_READY=127.0.0.1:%d", testenv.FreePort(t)),
		fmt.Sprintf("DEVICEID_HEALTH=127.0.0.1:%d", testenv.FreePort(t)),
		fmt.Sprintf("DEVICEID_METRICS=127.0.0.1:%d", testenv.FreePort(t)))
	out := run("rest", strings.Join(blocks[1:], "\n"))
	if !strings.Contains(out, "; fully validated") || !regexp.MustCompile(`thermo1\._device\.iot\.example\.\s+\d+\s+IN\s+TLSA\s+3 1 1 `).MatchString(out) {
		t.Errorf("no validated answer for the enrolled device:\n%s", out)
	}
	if pem, err := os.ReadFile(filepath.Join(d, "thermo1.pem")); err != nil || !strings.Contains(string(pem), "BEGIN CERTIFICATE") {
		t.Errorf("no certificate from the EST enrollment: %v %s", err, pem)
	}
}
