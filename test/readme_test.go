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
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
)

// readmeBlock is one command block of the README: an sh block, or the "$ " commands
// of a console block (with their continuation lines), in the README's order.
type readmeBlock struct {
	line       int // where it starts in README.md
	production bool
	text       string
}

// readmeBlocks returns the README's command blocks in order; production tells those
// marked <!-- production --> (the production section) from the dev walkthrough.
func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	var blocks []readmeBlock
	for _, m := range regexp.MustCompile("(?ms)^(<!-- production -->\\s*)?```(sh|console)\\n(.*?)^```").FindAllStringSubmatchIndex(src, -1) {
		blk := readmeBlock{line: strings.Count(src[:m[0]], "\n") + 1, production: m[2] >= 0, text: src[m[6]:m[7]]}
		if src[m[4]:m[5]] == "console" {
			var cmds []string
			more := false
			for _, l := range strings.Split(blk.text, "\n") {
				c, ok := strings.CutPrefix(l, "$ ")
				if !ok && !more {
					continue // output
				}
				cmds = append(cmds, c) // c is l on a continuation line
				more = strings.HasSuffix(l, "\\")
			}
			blk.text = strings.Join(cmds, "\n")
		}
		if strings.TrimSpace(blk.text) != "" {
			blocks = append(blocks, blk)
		}
	}
	return blocks
}

// productionBlocks returns the sh blocks of the README marked <!-- production -->.
func productionBlocks(t *testing.T) []string {
	t.Helper()
	var blocks []string
	for _, b := range readmeBlocks(t) {
		if b.production {
			blocks = append(blocks, b.text)
		}
	}
	if len(blocks) < 5 {
		t.Fatalf("the README's production section has %d marked blocks, want 5", len(blocks))
	}
	return blocks
}

// runScript runs script with bash -euo pipefail in dir (argv before bash, e.g. unshare),
// its output in logFile; what it starts in the background ends with the test.
func runScript(t *testing.T, dir string, env []string, logFile, script string, argv ...string) (string, error) {
	t.Helper()
	log, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	argv = append(argv, "bash", "-euo", "pipefail", "-c", script)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = dir, env, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	if err == nil {
		t.Cleanup(func() {
			// Stopped before the temporary directories they write in are removed.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			for i := 0; i < 200 && syscall.Kill(-cmd.Process.Pid, 0) == nil; i++ {
				if i == 100 {
					syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		err = cmd.Wait()
	}
	out, _ := os.ReadFile(logFile)
	return string(out), err
}

// TestREADMEProduction runs the README's production section as written (its blocks
// are read from README.md) against a 3-member etcd cluster with TLS and roles, made
// with the PKI its first block makes: it must end with an EST enrollment and a
// DNSSEC-validated answer for the device.
func TestREADMEProduction(t *testing.T) {
	blocks := productionBlocks(t)
	buildBinaries(t) // "after make build"
	tools := t.TempDir()
	if b, err := exec.Command("go", "build", "-o", filepath.Join(tools, "etcdctl"), "go.etcd.io/etcd/etcdctl/v3").CombinedOutput(); err != nil {
		t.Fatalf("go build etcdctl: %v\n%s", err, b)
	}
	d := t.TempDir()
	env := append(os.Environ(), "D="+d, "ETCD_HOSTS=127.0.0.1", "PATH="+tools+":"+os.Getenv("PATH"))
	run := func(name, script string) string {
		t.Helper()
		out, err := runScript(t, "..", env, filepath.Join(d, name+".log"), script)
		if err != nil {
			t.Fatalf("README production %s: %v\n%s", name, err, out)
		}
		return out
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

// notRun are the dev walkthrough's blocks the test does not run, by their first line.
var notRun = map[string]string{
	"make run": "the stack itself: the test runs make run's parts (make build, scripts/run-dev.sh)",
}

// sandbox runs first, inside unshare's new network and mount namespaces: make run's
// fixed ports (1053, 2379, 8443, ...) are the namespace's own, and the walkthrough's
// writes to /etc/deviceid and SoftHSM's token directory go to private overlays, so
// that the blocks run as written on a machine that another test or a developer's
// make run shares. Then make run's stack, until its simulated device is connected
// (what a reader waits for before the walkthrough).
const sandbox = `ip link set lo up
for d in /etc /var/lib/softhsm; do
  [ -d $d ] || continue
  o=$SANDBOX/overlay$d; mkdir -p $o/up $o/work
  mount -t overlay overlay -o lowerdir=$d,upperdir=$o/up,workdir=$o/work $d
done
# start_stack LOG PATTERN: make run's stack, until PATTERN is in its log.
start_stack() {
  scripts/run-dev.sh > $1 2>&1 &
  STACK=$!
  for i in $(seq 600); do
    grep -q "$2" $1 && return
    kill -0 $STACK && [ $i -lt 600 ] || { echo "make run did not come up:"; cat $1; exit 1; }
    sleep 0.2
  done
}
start_stack $SANDBOX/make-run.log 'connected device=thermo-sim'
`

// restart stops make run's stack as Ctrl-C does and starts it again without make clean,
// as a reader does the next day: the device, revoked by the walkthrough, says so and
// the stack stays up.
const restart = `
kill -TERM $STACK; wait $STACK || true # as Ctrl-C does: run-dev.sh stops its parts on INT and TERM (a background job ignores INT)
start_stack $SANDBOX/make-run-2.log 'DNS no longer vouches'
sleep 1
kill -0 $STACK || { echo "make run stopped after a restart:"; cat $SANDBOX/make-run-2.log; exit 1; }
echo 'make run: started again'
kill -TERM $STACK; wait $STACK || true
`

// TestREADMEDev runs the README's dev walkthrough (every sh block and every console
// block's commands outside the production section, read from README.md) in order, as
// one script against make run's stack, as a reader would in one shell: each command
// must succeed, and the landmarks the README promises must be in the output.
func TestREADMEDev(t *testing.T) {
	var script []string
	for _, b := range readmeBlocks(t) {
		first, _, _ := strings.Cut(strings.TrimSpace(b.text), "\n")
		if b.production || notRun[first] != "" {
			continue
		}
		script = append(script, fmt.Sprintf("# README.md:%d\n%s", b.line, b.text))
	}
	if len(script) < 10 {
		t.Fatalf("the README's dev walkthrough has %d command blocks, want at least 10", len(script))
	}
	buildBinaries(t)
	// The repository's root as the reader sees it, without its .deviceid-dev.
	root, sandboxDir := t.TempDir(), t.TempDir()
	for _, f := range []string{"bin", "scripts", "corefile", "deploy", "go.mod", "go.sum"} {
		abs, _ := filepath.Abs(filepath.Join("..", f))
		if err := os.Symlink(abs, filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SOFTHSM2_CONF=") && !strings.HasPrefix(e, "DEVICEID_") { // the reader's defaults
			env = append(env, e)
		}
	}
	env = append(env, "SANDBOX="+sandboxDir)
	unshare := []string{"unshare", "--net", "--mount"}
	if os.Geteuid() != 0 { // CI runs as root; elsewhere a user namespace, where SoftHSM's group is unmapped
		unshare = append(unshare, "--map-root-user")
	}
	out, err := runScript(t, root, env, filepath.Join(sandboxDir, "walkthrough.log"),
		sandbox+strings.Join(script, "\n")+"\necho 'README walkthrough: the end'\n"+restart, unshare...)
	if err != nil {
		t.Fatalf("README dev walkthrough: %v\n%s", err, out)
	}
	for _, want := range []string{
		"hello thermo1._device.iot.example., authenticated by TLSA 3 1 1", // the demo service
		"accepted thermo-sim._device.iot.example.: matched TLSA 3 1 1",    // deviceid-verify
		"refused thermo1._device.iot.example.: the client's key is revoked",
		"; fully validated",
		"; negative response, fully validated",
		"README walkthrough: the end",
		"make run: started again",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the walkthrough's output:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "accepted thermo-sim"); n != 2 {
		t.Errorf("deviceid-verify accepted thermo-sim %d times, want 2 (locally and through unbound):\n%s", n, out)
	}
	// Only the one error the walkthrough shows: demo asking for the device it transferred.
	if n := strings.Count(out, `{"error"`); n != 1 {
		t.Errorf("%d API errors in the walkthrough, want 1:\n%s", n, out)
	}
}
