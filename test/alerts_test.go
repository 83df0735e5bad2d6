package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/deviceid/deviceid/internal/mqttbroker"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAlertRules: the alert rules of deploy/prometheus pass promtool's check and its
// unit tests (which fire each alert from made-up series), and every metric they name
// is one the plugin, the signer or the broker exports.
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
	exported := exportedMetrics(t)
	for _, name := range metricNames(string(rules)) {
		if !exported[name] {
			t.Errorf("the rules name %s, which nothing exports", name)
		}
	}
}

// TestGrafanaDashboard: every metric the dashboard's queries name is one deviceid
// exports, and every metric deviceid exports is on the dashboard.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "deviceid.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	var queries []string
	for _, p := range dash.Panels {
		for _, q := range p.Targets {
			if q.Expr == "" {
				t.Errorf("panel %q has a query with no expression", p.Title)
			}
			queries = append(queries, q.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			queries = append(queries, q)
		}
	}
	exported := exportedMetrics(t)
	shown := map[string]bool{}
	for _, name := range metricNames(strings.Join(queries, "\n")) {
		shown[name] = true
		if !exported[name] {
			t.Errorf("the dashboard queries %s, which nothing exports", name)
		}
	}
	for name := range exported {
		if !shown[name] && !shown[name+"_bucket"] {
			t.Errorf("%s is exported but not on the dashboard", name)
		}
	}
	if len(shown) < 10 {
		t.Errorf("the dashboard names only %d metrics", len(shown))
	}
}

// metricNames are the deviceid metrics that text names, a histogram's series (_bucket,
// _sum, _count) by the histogram's name.
func metricNames(text string) []string {
	var names []string
	for _, m := range regexp.MustCompile(`\b(coredns_deviceid|deviceid_signer|deviceid_mqtt)_[a-z_]+`).FindAllString(text, -1) {
		if base, ok := strings.CutSuffix(m, "_bucket"); ok {
			m = base
		}
		if !slices.Contains(names, m) {
			names = append(names, m)
		}
	}
	return names
}

// exportedMetrics are the metrics deviceid exports: the plugin's (coredns_deviceid_*)
// and the signer's (deviceid_signer_*), each declared with its Subsystem and Name in a
// metrics.go, and the broker's (deviceid_mqtt_*) as its collectors describe them.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join("..", "signer", "*", "metrics.go"))
	files = append(files, filepath.Join("..", "plugin", "metrics.go"))
	name := regexp.MustCompile(`Name:\s*"([a-z_]+)"`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		prefix := "deviceid_signer_"
		if strings.Contains(string(b), "plugin.Namespace") {
			prefix = "coredns_deviceid_"
		}
		for _, m := range name.FindAllStringSubmatch(string(b), -1) {
			names[prefix+m[1]] = true
		}
	}
	descs := make(chan *prometheus.Desc, 100)
	for _, c := range (&mqttbroker.Broker{}).Collectors() {
		c.Describe(descs)
	}
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names[m[1]] = true
	}
	if len(names) < 30 {
		t.Fatalf("only %d metrics found in the sources: %v", len(names), names)
	}
	return names
}
