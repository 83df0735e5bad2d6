package deviceid

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func testRRL(rate, window, slip, tableSize int) *rrl {
	c := defaultRRL
	c.rate, c.window, c.slip, c.tableSize = rate, window, slip, tableSize
	return newRRL(c)
}

// TestRRL drives one prefix's bucket with a fake clock: the burst of rate×window at
// once, then rate a second; every slip-th limited response is sent TC, the others
// dropped.
func TestRRL(t *testing.T) {
	l := testRRL(5, 2, 2, 64)
	ip := netip.MustParseAddr("192.0.2.1")
	t0 := time.Unix(1000, 0).UnixNano()
	for i := range 10 {
		if v := l.take(ip, t0); v != rrlAnswer {
			t.Fatalf("response %d of a burst of 10: %d", i, v)
		}
	}
	for i, want := range []rrlVerdict{rrlDrop, rrlSlip, rrlDrop, rrlSlip, rrlDrop} {
		if v := l.take(ip, t0); v != want {
			t.Errorf("limited response %d: %d, want %d", i, v, want)
		}
	}
	// A fifth of a second later one response more, and no more.
	if v := l.take(ip, t0+2e8); v != rrlAnswer {
		t.Errorf("after 200ms: %d", v)
	}
	if v := l.take(ip, t0+2e8); v == rrlAnswer {
		t.Error("two responses after 200ms at 5 a second")
	}
	// Quiet for the window: the whole burst again, no more.
	n := 0
	for range 30 {
		if l.take(ip, t0+5e9) == rrlAnswer {
			n++
		}
	}
	if n != 10 {
		t.Errorf("%d answered after a quiet window, want 10", n)
	}
	// A flood of 100 a second for ten seconds gets rate a second.
	n = 0
	start := t0 + 20e9
	for i := range 1000 {
		if l.take(ip, start+int64(i)*1e7) == rrlAnswer {
			n++
		}
	}
	if n < 10+49 || n > 10+50 {
		t.Errorf("%d answered of a flood of 100 a second for 10 s, want 10 + 5 a second", n)
	}
	// Slip 1: every limited response TC; slip 0: none.
	for slip, want := range map[int]rrlVerdict{1: rrlSlip, 0: rrlDrop} {
		l := testRRL(1, 1, slip, 64)
		l.take(ip, t0)
		for range 5 {
			if v := l.take(ip, t0); v != want {
				t.Errorf("slip %d: %d, want %d", slip, v, want)
			}
		}
	}
}

// TestRRLPrefixes: addresses share a bucket by prefix (IPv4 /24, IPv6 /56, an IPv4-
// mapped address as IPv4); loopback is exempt by default; only UDP is limited.
func TestRRLPrefixes(t *testing.T) {
	t0 := time.Unix(1000, 0).UnixNano()
	drain := func(l *rrl, a string) {
		for range 10 {
			l.take(netip.MustParseAddr(a), t0)
		}
	}
	limited := func(l *rrl, a string) bool { return l.take(netip.MustParseAddr(a), t0) != rrlAnswer }
	l := testRRL(1, 1, 0, 1024)
	drain(l, "192.0.2.1")
	drain(l, "2001:db8:0:100::1")
	for a, want := range map[string]bool{
		"192.0.2.200":         true,
		"192.0.3.1":           false,
		"2001:db8:0:1ff::2":   true,
		"2001:db8:0:200::1":   false,
		"2001:db8:1:100::1":   false,
		"127.0.0.1":           false,
		"::1":                 false,
		"127.200.0.1":         false,
		"::ffff:192.0.2.9":    true,
		"::ffff:198.51.100.7": false,
	} {
		if got := limited(l, a); got != want {
			t.Errorf("%s limited: %v, want %v", a, got, want)
		}
	}
	for range 5 {
		if l.take(netip.MustParseAddr("127.0.0.1"), t0) != rrlAnswer {
			t.Fatal("loopback limited")
		}
	}
	// Over TCP, and from an address that is not IP, nothing is limited.
	udp := &net.UDPAddr{IP: net.ParseIP("192.0.2.7"), Port: 53}
	tcp := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 53}
	if l.check(udp, t0) == rrlAnswer || l.check(tcp, t0) != rrlAnswer {
		t.Error("UDP not limited, or TCP limited")
	}
	// Other prefix lengths, and no exemption.
	c := defaultRRL
	c.rate, c.window, c.slip, c.v4, c.v6, c.exempt = 1, 1, 0, 32, 64, nil
	l = newRRL(c)
	drain(l, "192.0.2.1")
	drain(l, "2001:db8:0:100::1")
	drain(l, "127.0.0.1")
	for a, want := range map[string]bool{
		"192.0.2.1": true, "192.0.2.2": false, "2001:db8:0:100::2": true, "2001:db8:0:101::1": false, "127.0.0.1": true,
	} {
		if got := limited(l, a); got != want {
			t.Errorf("/32 and /64: %s limited: %v, want %v", a, got, want)
		}
	}
}

// TestRRLTableBounded: the table is allocated once, whatever the number of sources, and
// a flood from a million (spoofed) addresses neither grows it nor evicts the bucket of
// the victim being limited: the victim gets no more than its rate throughout. (A bucket
// that has spent one response is worth no more than any other new one, and may go: a
// victim is worth keeping once it is limited.)
func TestRRLTableBounded(t *testing.T) {
	l := testRRL(10, 1, 0, 64)
	sets := &l.sets[0]
	victim := netip.MustParseAddr("198.51.100.1")
	rnd := rand.New(rand.NewPCG(1, 2))
	t0 := time.Unix(1000, 0).UnixNano()
	answered := 0
	for range 20 { // the flood that drained the victim's bucket
		if l.take(victim, t0) == rrlAnswer {
			answered++
		}
	}
	const steps = 1000000 // 10 µs apart: 10 s
	for i := range steps {
		now := t0 + int64(i)*1e4
		var a [16]byte
		if i%2 == 0 {
			v4 := rnd.Uint32()
			a = netip.AddrFrom4([4]byte{byte(v4 >> 24), byte(v4 >> 16), byte(v4 >> 8), byte(v4)}).As16()
		} else {
			a = [16]byte{0x20, 0x01, 0x0d, 0xb8}
			for j := 4; j < 16; j++ {
				a[j] = byte(rnd.Uint32())
			}
		}
		l.take(netip.AddrFrom16(a).Unmap(), now)
		if i%100 == 0 { // the victim's flood: 1,000 a second
			if l.take(victim, now) == rrlAnswer {
				answered++
			}
		}
	}
	if len(l.sets) != 16 || &l.sets[0] != sets {
		t.Errorf("the table changed: %d sets", len(l.sets))
	}
	if answered > 10+10*10+1 {
		t.Errorf("the victim got %d answers in 10 s at a limit of 10 a second: its bucket was evicted", answered)
	}
	t.Logf("victim answered %d times in 10 s among %d spoofed sources; table of %d buckets: %d bytes",
		answered, steps, len(l.sets)*rrlWays, len(l.sets)*int(unsafe.Sizeof(rrlSet{})))
	def := newRRL(defaultRRL)
	t.Logf("the default table (table_size %d): %d bytes, %d per bucket", defaultRRL.tableSize,
		len(def.sets)*int(unsafe.Sizeof(rrlSet{})), unsafe.Sizeof(rrlSet{})/rrlWays)
}

// TestRRLServeDNS: over the rate, a query over UDP is dropped (nothing written) or,
// every slip-th, answered with TC and no records, before any signature is made; TCP
// and other prefixes are answered; every kind of response counts, errors too.
func TestRRLServeDNS(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	d.rrl = testRRL(2, 1, 2, 64)
	clock := time.Now()
	d.now = func() time.Time { return clock }
	dropped := func() float64 { return testutil.ToFloat64(rrlDropped.WithLabelValues("iot.example.")) }
	slipped := func() float64 { return testutil.ToFloat64(rrlSlipped.WithLabelValues("iot.example.")) }
	made := func() float64 { return testutil.ToFloat64(signatures.WithLabelValues("iot.example.")) }
	ask := func(ip string, tcp bool, qname string, qtype uint16) (*dns.Msg, int) {
		t.Helper()
		return askVia(t, d, &test.ResponseWriter{TCP: tcp, RemoteIP: ip}, qname, qtype, true, false)
	}
	for i := range 2 {
		if m, _ := ask("192.0.2.1", false, fmt.Sprintf("nx%d._device.iot.example.", i), dns.TypeTLSA); m == nil || m.Truncated || len(m.Ns) == 0 {
			t.Fatalf("within the rate: %v", m)
		}
	}
	d0, s0, sig0 := dropped(), slipped(), made()
	// Names that do not exist, each needing a signature: none is made.
	m, rcode := ask("192.0.2.2", false, "nx-a._device.iot.example.", dns.TypeTLSA)
	if m != nil || rcode != dns.RcodeSuccess {
		t.Errorf("dropped: %v, rcode %d (the server would write it)", m, rcode)
	}
	m, _ = ask("192.0.2.3", false, "nx-b._device.iot.example.", dns.TypeTLSA)
	if m == nil || !m.Truncated || len(m.Answer)+len(m.Ns) != 0 || m.IsEdns0() == nil || !m.IsEdns0().Do() || m.Question[0].Name != "nx-b._device.iot.example." {
		t.Errorf("slipped: %v", m)
	}
	// Errors count too: a zone transfer is refused by the server, here not at all.
	if m, rcode := ask("192.0.2.4", false, "iot.example.", dns.TypeAXFR); m != nil || rcode != dns.RcodeSuccess {
		t.Errorf("AXFR over the limit: %v, rcode %d", m, rcode)
	}
	if dropped() != d0+2 || slipped() != s0+1 || made() != sig0 {
		t.Errorf("dropped +%v, slipped +%v, signatures +%v; want 2, 1, 0", dropped()-d0, slipped()-s0, made()-sig0)
	}
	// TCP from the prefix, and another prefix, are answered.
	if m, _ := ask("192.0.2.1", true, "nx-c._device.iot.example.", dns.TypeTLSA); m == nil || m.Truncated || len(m.Ns) == 0 {
		t.Errorf("TCP from the limited prefix: %v", m)
	}
	if m, _ := ask("198.51.100.1", false, "sensor7._device.iot.example.", dns.TypeTLSA); m == nil || m.Truncated || len(m.Answer) == 0 {
		t.Errorf("another prefix: %v", m)
	}
	// Half a second later (2 a second) one more.
	clock = clock.Add(500 * time.Millisecond)
	if m, _ := ask("192.0.2.1", false, "sensor7._device.iot.example.", dns.TypeTLSA); m == nil || m.Truncated {
		t.Errorf("after 500ms: %v", m)
	}
}

// BenchmarkRRL measures what rate limiting adds to a query over UDP, from 4,096
// prefixes, none limited.
func BenchmarkRRL(b *testing.B) {
	l := newRRL(defaultRRL)
	addrs := make([]net.Addr, 4096)
	for i := range addrs {
		addrs[i] = &net.UDPAddr{IP: net.IPv4(192, byte(i>>8), byte(i), 1), Port: 53}
	}
	now := time.Now().UnixNano()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.check(addrs[i%len(addrs)], now)
			i++
		}
	})
}
