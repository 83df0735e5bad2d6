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
	deadline := time.Now().Add(PollTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %s: %v", what, PollTimeout, err)
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
