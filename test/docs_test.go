package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coredns/coredns/coremain"
)

var (
	buildOnce sync.Once
	buildErr  error
	buildOut  []byte
)

// buildBinaries runs make build once for the tests that run bin/ as the docs do.
func buildBinaries(t *testing.T) {
	t.Helper()
	buildOnce.Do(func() { buildOut, buildErr = exec.Command("make", "-C", "..", "build").CombinedOutput() })
	if buildErr != nil {
		t.Fatalf("make build: %v\n%s", buildErr, buildOut)
	}
}

// docs returns the text of README.md, docs/*.md and plugin/README.md, continuation
// lines joined.
func docs(t *testing.T) string {
	t.Helper()
	files, _ := filepath.Glob("../docs/*.md")
	var all []string
	for _, f := range append(files, "../README.md", "../plugin/README.md") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, strings.ReplaceAll(string(b), "\\\n", " "))
	}
	return strings.Join(all, "\n")
}

// helpFlags returns the flags `bin/NAME ARGS... -h` lists, and -h.
func helpFlags(t *testing.T, name string, args ...string) []string {
	t.Helper()
	out, _ := exec.Command(filepath.Join("..", "bin", name), append(args, "-h")...).CombinedOutput()
	flags := []string{"-h"}
	for _, m := range regexp.MustCompile(`(?m)^  (-[a-z0-9.-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags = append(flags, m[1])
	}
	return flags
}

// TestDocsNameWhatExists: every flag the docs give a command (in a command line or
// prose such as "`deviceid-signer keygen -pkcs11 URI`") is one its -h lists, every
// flag the docs name alone (`-recheck-grace`) is one of some binary's, and every
// DEVICEID_* variable they name is read somewhere in the code or the Corefiles.
func TestDocsNameWhatExists(t *testing.T) {
	buildBinaries(t)
	text := docs(t)
	known := map[string][]string{} // "deviceid-signer keys enable" -> its flags
	var all []string
	flagsOf := func(cmd string) []string {
		if f, ok := known[cmd]; ok {
			return f
		}
		w := strings.Fields(cmd)
		known[cmd] = helpFlags(t, w[0], w[1:]...)
		all = append(all, known[cmd]...)
		return known[cmd]
	}
	for _, b := range []string{"coredns", "deviceid-verify", "deviceid-mqtt", "deviceid-device"} {
		flagsOf(b)
	}
	// A command, its subcommand (keys: and its own), and its words up to the end of
	// the command (a pipe, redirection, ;, &, comment, or the end of the code span).
	invocation := regexp.MustCompile("(?:^|[^\\w.-])(?:bin/)?(coredns|deviceid-signer|deviceid-verify|deviceid-mqtt|deviceid-device)([ \\t][^|;&>#`\\n]*)?")
	checked := 0
	for _, m := range invocation.FindAllStringSubmatch(text, -1) {
		words := strings.Fields(m[2])
		cmd := m[1]
		if cmd == "deviceid-signer" {
			if len(words) == 0 || !regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(words[0]) {
				continue // the command named, not run
			}
			cmd, words = cmd+" "+words[0], words[1:]
			if strings.HasSuffix(cmd, " keys") && len(words) > 0 && !strings.HasPrefix(words[0], "-") {
				cmd, words = cmd+" "+words[0], words[1:]
			}
		}
		for _, w := range words {
			if !regexp.MustCompile(`^-[a-z]`).MatchString(w) {
				continue
			}
			flag, _, _ := strings.Cut(w, "=")
			flag = strings.TrimRight(flag, ",.:)")
			if !slices.Contains(flagsOf(cmd), flag) {
				t.Errorf("the docs give %s %s, which its -h does not list", cmd, flag)
			}
			checked++
		}
	}
	if checked < 50 {
		t.Errorf("checked %d flags of commands in the docs, want at least 50", checked)
	}
	// Flags of other programs that the docs name alone, and one that is gone.
	others := []string{
		"-c",                // mosquitto's clean-session flag (security.md)
		"-fuzzminimizetime", // go test's (security.md)
		"-code",             // the flag security.md says was replaced by -code-file
	}
	for _, m := range regexp.MustCompile("`(-[a-z][a-z0-9-]*)[ `]").FindAllStringSubmatch(text, -1) {
		if !slices.Contains(all, m[1]) && !slices.Contains(others, m[1]) {
			t.Errorf("the docs name the flag %s, which no binary's -h lists", m[1])
		}
	}

	var code []string // what reads variables: the Go code, the Corefiles, scripts, units
	filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if d.IsDir() && (d.Name() == "bin" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if !d.IsDir() && !strings.HasSuffix(path, ".md") {
			if b, err := os.ReadFile(path); err == nil {
				code = append(code, string(b))
			}
		}
		return nil
	})
	src := strings.Join(code, "\n")
	for _, v := range regexp.MustCompile(`DEVICEID_[A-Z0-9_]*[A-Z0-9]`).FindAllString(text, -1) {
		if !regexp.MustCompile(`\b` + v + `\b`).MatchString(src) {
			t.Errorf("the docs name $%s, which nothing reads", v)
		}
	}
}

// TestServeFlagsFromEnvironment: the README says every flag of serve can come from
// a DEVICEID_* variable, and serve -h names it.
func TestServeFlagsFromEnvironment(t *testing.T) {
	buildBinaries(t)
	out, _ := exec.Command("../bin/deviceid-signer", "serve", "-h").CombinedOutput()
	flags := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)[^\n]*\n((?:    [^\n]*\n)*)`).FindAllStringSubmatch(string(out), -1)
	if len(flags) < 10 {
		t.Fatalf("serve -h lists %d flags:\n%s", len(flags), out)
	}
	for _, f := range flags {
		if !strings.Contains(f[2], "$DEVICEID_") {
			t.Errorf("serve -%s names no DEVICEID_ variable: %s", f[1], strings.TrimSpace(f[2]))
		}
	}
}

// TestBuildVersion: each binary make build makes names the build (operations.md tells
// operators to check it on every host), CoreDNS's -version and -plugins included.
func TestBuildVersion(t *testing.T) {
	buildBinaries(t)
	v, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(v))
	for _, c := range []struct{ bin, flag, want string }{
		{"coredns", "-version", "CoreDNS-" + coremain.CoreVersion + " (deviceid " + version + ")\n"},
		{"coredns", "-plugins", "CoreDNS-" + coremain.CoreVersion + " (deviceid " + version + ")\n"},
		{"deviceid-signer", "-version", "deviceid-signer " + version + "\n"},
		{"deviceid-verify", "-version", "deviceid-verify " + version + "\n"},
		{"deviceid-mqtt", "-version", "deviceid-mqtt " + version + "\n"},
		{"deviceid-device", "-version", "deviceid-device " + version + "\n"},
	} {
		out, err := exec.Command(filepath.Join("..", "bin", c.bin), c.flag).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), c.want) {
			t.Errorf("%s %s: %v\n%s\nwant it to start with %q", c.bin, c.flag, err, out, c.want)
		}
	}
}
