package deviceid

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBudget drives the token bucket with a fake clock.
func TestBudget(t *testing.T) {
	b := &budget{rate: 10}
	t0 := time.Unix(1000, 0).UnixNano()
	// Nothing that exists asked for: no limit.
	for range 50 {
		if v, _ := b.take(t0, false); v != budgetSign {
			t.Fatalf("limited with no names that exist asked for: %d", v)
		}
	}
	b.sawExisting(t0)
	for i := range 10 {
		if v, _ := b.take(t0, false); v != budgetSign {
			t.Fatalf("signature %d of a budget of 10: %d", i, v)
		}
	}
	if v, _ := b.take(t0, false); v != budgetTruncate {
		t.Errorf("over the budget over UDP: %d, want TC", v)
	}
	v, wait := b.take(t0, true)
	if v != budgetWait || wait != 100*time.Millisecond {
		t.Errorf("over the budget over TCP: %d, wait %s; want a wait of 100ms", v, wait)
	}
	// Nine more reservations fill the second ahead; the next would wait over maxWait.
	for range 9 {
		b.take(t0, true)
	}
	if v, _ := b.take(t0, true); v != budgetRefuse {
		t.Errorf("a wait past maxWait: %d, want refused", v)
	}
	// Half a second later five tokens have come back, minus the debt: none yet.
	if v, _ := b.take(t0+5e8, false); v != budgetTruncate {
		t.Errorf("while the debt is paid back: %d", v)
	}
	// Names that exist asked for in this second or the last keep it engaged; after
	// two quiet seconds it lets everything through.
	b.sawExisting(t0 + 1e9)
	if !b.engaged(t0+15e8) || !b.engaged(t0+25e8) || b.engaged(t0+35e8) {
		t.Error("engaged at the wrong times")
	}
	if v, _ := b.take(t0+4e9, false); v != budgetSign {
		t.Errorf("after the existing names stopped: %d", v)
	}
	// Refilled after a while: the full budget again, no more.
	b.sawExisting(t0 + 10e9)
	n := 0
	for range 30 {
		if v, _ := b.take(t0+10e9, false); v == budgetSign {
			n++
		}
	}
	if n != 10 {
		t.Errorf("%d signatures after a refill, want the budget of 10", n)
	}
}

// TestBudgetAnswers: over the budget, a query over UDP gets TC and no records, and is
// counted; names that exist are answered as ever.
func TestBudgetAnswers(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	z.signer.budget.rate = 2
	truncated := testutil.ToFloat64(overBudget.WithLabelValues("iot.example.", "truncated"))
	ask(t, d, "sensor7._device.iot.example.", dns.TypeTLSA, true, false) // engages the budget
	tc := 0
	for i := range 5 {
		m, _ := ask(t, d, "nx"+string(rune('a'+i))+"._device.iot.example.", dns.TypeTLSA, true, false)
		if m.Truncated {
			tc++
			if len(m.Answer)+len(m.Ns) != 0 {
				t.Errorf("a truncated answer with records: %v", m)
			}
		} else {
			verifyAll(t, d, m)
		}
	}
	if tc != 3 || testutil.ToFloat64(overBudget.WithLabelValues("iot.example.", "truncated")) != truncated+3 {
		t.Errorf("%d truncated of 5 with a budget of 2", tc)
	}
	// A name asked again comes from the cache, within the budget or not.
	if m, _ := ask(t, d, "nxa._device.iot.example.", dns.TypeTLSA, true, false); m.Truncated {
		t.Error("a cached proof was truncated")
	}
	if m, _ := ask(t, d, "sensor7._device.iot.example.", dns.TypeTLSA, true, false); m.Truncated || len(m.Answer) != 3 {
		t.Errorf("a name that exists: %v", m)
	}
}
