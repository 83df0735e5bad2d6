package deviceid

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// addDevices puts n SPKI-only devices d0 … d<n-1> (every tenth below a shared label,
// making empty non-terminals) into the zone's current data, unsigned, as a full load
// leaves them.
func addDevices(t testing.TB, z *zone, n int) []string {
	t.Helper()
	zd := z.current()
	var owners []string
	z.write.Lock()
	defer z.write.Unlock()
	for i := range n {
		name := fmt.Sprintf("d%d", i)
		if i%10 == 0 {
			name += ".group"
		}
		spki := sha256.Sum256([]byte(name)) // any bytes: only their digest is published
		rec := &record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki[:], Status: "active"}}}
		rr, _ := z.cfg.deviceRRset(rec, z.now())
		owner, _ := record.DeviceOwner(name, z.origin)
		z.put(zd, owner, rr, true, nil)
		owners = append(owners, owner)
	}
	return append(owners, "group._device.iot.example.", "_device.iot.example.")
}

// signatureTimes returns the inception of every name's signatures (0: unsigned).
func signatureTimes(z *zone) map[string]uint32 {
	out := make(map[string]uint32)
	zd := z.current()
	for i := range storeShards {
		zd.st.each(i, func(e entry) bool {
			out[string(e.owner())], _ = e.signed()
			return true
		})
	}
	return out
}

// TestSignAheadCoversEveryName: after the first pass every name that exists is
// signed, answers need no signature, and the pass is reported done.
func TestSignAheadCoversEveryName(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	owners := addDevices(t, z, 300)
	if testutil.ToFloat64(firstPass.WithLabelValues("iot.example.")) == 1 && z.current().passDone.Load() {
		t.Fatal("the pass is done before it ran")
	}
	n, err := z.maintain(d.now())
	if err != nil {
		t.Fatal(err)
	}
	times := signatureTimes(z)
	if n != len(times) {
		t.Errorf("signed %d names of %d", n, len(times))
	}
	for owner, inc := range times {
		if inc == 0 {
			t.Errorf("%s not signed", owner)
		}
	}
	if !z.current().passDone.Load() || testutil.ToFloat64(firstPass.WithLabelValues("iot.example.")) != 1 {
		t.Error("the first pass is not reported done")
	}
	made := testutil.ToFloat64(signatures.WithLabelValues("iot.example."))
	for _, owner := range owners {
		for _, qtype := range []uint16{dns.TypeTLSA, dns.TypeA} {
			m, _ := ask(t, d, owner, qtype, true, false)
			if qtype == dns.TypeTLSA && owner[0] == 'd' && len(m.Answer) != 2 {
				t.Errorf("%s: %v", owner, m.Answer)
			}
			verifyAll(t, d, m)
		}
	}
	if again := testutil.ToFloat64(signatures.WithLabelValues("iot.example.")); again != made {
		t.Errorf("%v signatures made on the query path after the pass", again-made)
	}
	if n, _ := z.maintain(d.now()); n != 0 {
		t.Errorf("a second pass at the same time signed %d names", n)
	}
}

// TestSignAheadRenews: driven by a fake clock, every name is renewed once in each
// quarter of the validity, spread over it rather than all at once, and always before
// its signatures expire.
func TestSignAheadRenews(t *testing.T) {
	d := signedDeviceid(t, false, dns.ED25519)
	z := d.zones["iot.example."]
	addDevices(t, z, 400)
	clock := time.Now()
	d.now = func() time.Time { return clock }
	if _, err := z.maintain(clock); err != nil {
		t.Fatal(err)
	}
	first := signatureTimes(z)
	quarter := z.signer.validity / 4
	const steps = 8
	renewed := make(map[string]int)
	for step := range steps {
		clock = clock.Add(quarter / steps)
		n, err := z.maintain(clock)
		if err != nil {
			t.Fatal(err)
		}
		if n > len(first)/steps*2+10 {
			t.Errorf("step %d renewed %d of %d names: a storm", step, n, len(first))
		}
		for owner, inc := range signatureTimes(z) {
			if inc != first[owner] {
				renewed[owner]++
				first[owner] = inc
			}
		}
		zd := z.current()
		for i := range storeShards {
			zd.st.each(i, func(e entry) bool {
				if _, exp := e.signed(); !fresh(exp, clock.UnixNano()) {
					t.Errorf("%s served with signatures about to expire", e.owner())
				}
				return true
			})
		}
	}
	for owner := range first {
		if renewed[owner] != 1 {
			t.Errorf("%s renewed %d times in a quarter of the validity", owner, renewed[owner])
		}
	}
	// A day later (no pass ran meanwhile, say the process was stopped): all renewed,
	// and the answers validate at that time.
	clock = clock.Add(25 * time.Hour)
	if _, err := z.maintain(clock); err != nil {
		t.Fatal(err)
	}
	m, _ := ask(t, d, "d1._device.iot.example.", dns.TypeTLSA, true, false)
	for _, rr := range m.Answer {
		if sig, ok := rr.(*dns.RRSIG); ok && !sig.ValidityPeriod(clock) {
			t.Errorf("signature not valid at %s: %v", clock, sig)
		}
	}
}

// TestFirstPassNeverUnsigned: while the first signing pass runs, every DO answer is
// signed (signed on the spot where the pass has not been yet) and validates.
func TestFirstPassNeverUnsigned(t *testing.T) {
	d := signedDeviceid(t, true, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	owners := addDevices(t, z, 2000)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := z.maintain(d.now()); err != nil {
			t.Error(err)
		}
	})
	for range 2 {
		wg.Go(func() {
			for range 300 {
				owner := owners[rand.IntN(len(owners))]
				m, _ := ask(t, d, owner, dns.TypeTLSA, true, false)
				sigs := 0
				for _, rr := range append(m.Answer, m.Ns...) {
					if rr.Header().Rrtype == dns.TypeRRSIG {
						sigs++
					}
				}
				if sigs == 0 {
					t.Errorf("%s: unsigned answer %v", owner, m)
				}
				verifyAll(t, d, m)
			}
		})
	}
	wg.Wait()
}

// TestSignAheadWithdrawsExpired: a credential that expires is withdrawn at once from
// answers and from the store by the next pass; a device with nothing left is denied.
func TestSignAheadWithdrawsExpired(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	clock := time.Now()
	d.now = func() time.Time { return clock }
	spki := sha256.Sum256([]byte("x"))
	notAfter := clock.Add(time.Hour)
	rec := &record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki[:], Status: "active", NotAfter: &notAfter}}}
	rr, _ := z.cfg.deviceRRset(rec, clock)
	z.write.Lock()
	z.put(z.current(), "exp._device.iot.example.", rr, true, nil)
	z.write.Unlock()
	if _, err := z.maintain(clock); err != nil {
		t.Fatal(err)
	}
	if m, _ := ask(t, d, "exp._device.iot.example.", dns.TypeTLSA, true, false); len(m.Answer) != 2 {
		t.Fatalf("before expiry: %v", m.Answer)
	}
	clock = clock.Add(time.Hour + time.Second)
	for _, do := range []bool{true, false} {
		m, _ := ask(t, d, "exp._device.iot.example.", dns.TypeTLSA, do, true)
		if len(m.Answer) != 0 || m.Rcode != dns.RcodeNameError {
			t.Errorf("after expiry (do %v): rcode %s, %v", do, dns.RcodeToString[m.Rcode], m.Answer)
		}
	}
	z.maintain(clock)
	if z.current().st.view("exp._device.iot.example.", func(entry) {}) {
		t.Error("the expired device is still stored after the pass")
	}
}

// TestNoAllocationForNamesThatExist: once signed ahead, a DO answer for a name that
// exists (positive or NODATA) allocates nothing of its own; what is left is the test
// writer's (it parses its fake remote address on every write), as without DO.
func TestNoAllocationForNamesThatExist(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	if _, err := z.maintain(d.now()); err != nil {
		t.Fatal(err)
	}
	allocs := func(qname string, qtype uint16, do bool) float64 {
		m := new(dns.Msg)
		m.SetQuestion(qname, qtype)
		m.SetEdns0(1232, do)
		w := request.NewScrubWriter(m, discardWriter{&test.ResponseWriter{}})
		return testing.AllocsPerRun(200, func() { d.ServeDNS(context.Background(), w, m) })
	}
	base := allocs("sensor7._device.iot.example.", dns.TypeTLSA, false)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"sensor7._device.iot.example.", dns.TypeTLSA},
		{"sensor7._device.iot.example.", dns.TypeA},
		{"airquality._device.iot.example.", dns.TypeTLSA},
	} {
		if n := allocs(q.name, q.qtype, true); n > base {
			t.Errorf("%s %s with DO: %v allocations, %v without DO", q.name, dns.TypeToString[q.qtype], n, base)
		}
	}
}
