package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestAlertRules: the alert rules of deploy/prometheus pass promtool's check and its
// unit tests (which fire each alert from made-up series), and every metric they name
// is one the plugin or the signer exports.
func TestAlertRules(t *testing.T) {
	dir := filepath.Join("..", "deploy", "prometheus")
	for _, args := range [][]string{{"check", "rules", "deviceid-alerts.yml"}, {"test", "rules", "deviceid-alerts_test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s (Debian package prometheus): %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	rules, err := os.ReadFile(filepath.Join(dir, "deviceid-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var sources strings.Builder
	for _, f := range []string{"../plugin/metrics.go", "../signer/keymgr/metrics.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources.Write(b)
	}
	for _, name := range regexp.MustCompile(`\b(coredns_deviceid|deviceid_signer)_([a-z_]+)`).FindAllStringSubmatch(string(rules), -1) {
		if !strings.Contains(sources.String(), `Name:      "`+name[2]+`"`) && !strings.Contains(sources.String(), `Name: "`+name[2]+`"`) {
			t.Errorf("the rules name %s, which nothing exports", name[0])
		}
	}
}
