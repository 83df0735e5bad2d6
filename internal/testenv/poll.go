package testenv

import (
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/test"
)

// PollTimeout bounds every wait for a change to show; generous for a loaded CI machine.
const PollTimeout = 20 * time.Second

// Eventually polls f until it returns nil, failing the test after PollTimeout.
func Eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	Within(t, PollTimeout, what, f)
}

// Within polls f until it returns nil, failing the test after d: for what is
// scheduled to take a while (a key rollover with its waits).
func Within(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %s: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Metric returns the value of the Prometheus metric name whose labels include the
// value label ("" for a metric without labels), scraped from http://addr/metrics with
// CoreDNS's own scraper; "" when it is not there.
func Metric(addr, name, label string) string {
	mfs := test.Scrape("http://" + addr + "/metrics")
	if label == "" {
		v, _ := test.MetricValue(name, mfs)
		return v
	}
	v, _ := test.MetricValueLabel(name, label, mfs)
	return v
}
