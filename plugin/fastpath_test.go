package deviceid

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var (
	testCookie  = &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	testCookie2 = &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "01020304050607080102030405060708090a0b0c0d0e0f10"}
	testNSID    = &dns.EDNS0_NSID{Code: dns.EDNS0NSID}
	testUnknown = &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}}
)

func testPadding(n int) *dns.EDNS0_PADDING { return &dns.EDNS0_PADDING{Padding: make([]byte, n)} }

// paddedQuery is a query for name with DO, padded to size bytes.
func paddedQuery(t testing.TB, name string, size int) []byte {
	t.Helper()
	n := len(testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testPadding(0))))
	return testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testPadding(size-n)))
}

// fastQuerySeeds are real queries, the fast path's kind and every other kind, and
// their truncations.
func fastQuerySeeds(t testing.TB) [][]byte {
	const name = "sensor7._device.iot.example."
	var seeds [][]byte
	add := func(b []byte) { seeds = append(seeds, b) }
	for _, qt := range []uint16{dns.TypeTLSA, dns.TypeA, dns.TypeSOA, dns.TypeANY, dns.TypeDS, dns.TypeNXNAME, dns.TypeAXFR} {
		add(testenv.PackQuery(t, name, qt, nil))
		add(testenv.PackQuery(t, name, qt, testenv.WithEDNS(1232, true, false)))
	}
	for _, n := range []string{"iot.example.", ".", "SeNsOr7._DeViCe.IoT.ExAmPlE.", "a-b_c.iot.example.", "bad\\.name._device.iot.example.",
		"nul\\000byte.iot.example.", "sp\\032ace.iot.example.", "\\200high.iot.example.", "*.iot.example.",
		strings.Repeat("a", 63) + ".iot.example.", strings.Repeat("abcdefghi.", 24) + "iot.example."} {
		add(testenv.PackQuery(t, n, dns.TypeTLSA, testenv.WithEDNS(1232, true, false)))
	}
	for _, e := range []func(*dns.Msg){
		testenv.WithEDNS(512, false, false), testenv.WithEDNS(4096, true, true), testenv.WithEDNS(65535, true, false), testenv.WithEDNS(0, false, true),
		testenv.WithEDNS(1232, true, false, testCookie), testenv.WithEDNS(1232, true, true, testCookie2, testPadding(3)),
		testenv.WithEDNS(1232, true, false, testPadding(0)), testenv.WithEDNS(1232, true, false, testNSID), testenv.WithEDNS(1232, true, false, testUnknown),
		func(m *dns.Msg) { testenv.WithEDNS(1232, true, false)(m); m.IsEdns0().SetVersion(1) },
		func(m *dns.Msg) {
			testenv.WithEDNS(1232, true, false)(m)
			m.IsEdns0().SetExtendedRcode(dns.RcodeBadCookie)
		},
		func(m *dns.Msg) {
			m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData, m.Zero = true, true, true, true
		},
		func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify },
		func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate },
		func(m *dns.Msg) { m.Response = true },
		func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS },
		func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY },
		func(m *dns.Msg) {
			m.Question = append(m.Question, dns.Question{Name: "x." + name, Qtype: dns.TypeTLSA, Qclass: dns.ClassINET})
		},
		func(m *dns.Msg) { m.Question = nil },
		func(m *dns.Msg) {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}}}
		},
		func(m *dns.Msg) {
			m.Ns = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}}}
		},
		func(m *dns.Msg) {
			testenv.WithEDNS(1232, true, false)(m)
			m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}})
		},
		func(m *dns.Msg) {
			m.Extra = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{1, 2, 3, 4}}}
		},
		func(m *dns.Msg) { m.SetTsig("key.", dns.HmacSHA256, 300, 0) },
	} {
		add(testenv.PackQuery(t, name, dns.TypeTLSA, e))
	}
	add(paddedQuery(t, name, 512))
	add(paddedQuery(t, name, 513))
	// A compressed name: the second question points into the first.
	two := testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
		m.Question = append(m.Question, dns.Question{Name: "x._device.iot.example.", Qtype: dns.TypeTLSA, Qclass: dns.ClassINET})
	})
	add(two)
	// One question whose name is a pointer to itself, and one to a name after it.
	add([]byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 52, 0, 1})
	add([]byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xC0, 18, 0, 52, 0, 1, 3, 'i', 'o', 't', 0})
	// Labels over 63, names over 255, in raw bytes.
	long := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64}
	long = append(append(long, bytes.Repeat([]byte{'a'}, 64)...), 0, 0, 52, 0, 1)
	add(long)
	over := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for range 5 {
		over = append(append(over, 63), bytes.Repeat([]byte{'b'}, 63)...)
	}
	add(append(over, 0, 0, 52, 0, 1))
	// Names of exactly 255 and 256 octets.
	for _, last := range []int{61, 62} {
		b := []byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		for range 3 {
			b = append(append(b, 63), bytes.Repeat([]byte{'c'}, 63)...)
		}
		b = append(append(b, byte(last)), bytes.Repeat([]byte{'d'}, last)...)
		add(append(b, 0, 0, 52, 0, 1))
	}
	// Truncations and trailing bytes.
	full := testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, true, testCookie))
	for n := range len(full) {
		add(full[:n])
	}
	add(append(slices.Clone(full), 0))
	add(append(testenv.PackQuery(t, name, dns.TypeTLSA, nil), 0xC0, 0x0C))
	return seeds
}

// FuzzFastQuery: fastQuery never panics nor changes the packet, and whenever it takes a
// packet, miekg/dns reads the same query from it: the one the framework would answer.
func FuzzFastQuery(f *testing.F) {
	for _, b := range fastQuerySeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFastQuery(t, b)
	})
}

// checkFastQuery checks fastQuery on b against miekg/dns, and reports whether it took it.
func checkFastQuery(t *testing.T, b []byte) bool {
	t.Helper()
	var name [256]byte
	in := slices.Clone(b)
	q, question, qname, ok := fastQuery(b, &name)
	if !bytes.Equal(in, b) {
		t.Fatalf("fastQuery changed the packet %x", in)
	}
	if !ok {
		return false
	}
	if len(b) > dns.MinMsgSize {
		t.Fatalf("took %d bytes, more than the server reads", len(b))
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("fastQuery took %x, which miekg/dns does not unpack: %v", b, err)
	}
	if m.Id != q.id || m.RecursionDesired != q.rd || m.CheckingDisabled != q.cd || m.Opcode != dns.OpcodeQuery || q.opcode != dns.OpcodeQuery {
		t.Fatalf("%x: header %+v, fastQuery read %+v", b, m.MsgHdr, q)
	}
	if len(m.Question) != 1 || len(m.Answer) != 0 || len(m.Ns) != 0 {
		t.Fatalf("%x: fastQuery took %v", b, m)
	}
	mq := m.Question[0]
	if strings.ToLower(mq.Name) != qname || mq.Qtype != q.qtype || mq.Qclass != dns.ClassINET {
		t.Fatalf("%x: question %v, fastQuery read %q type %d", b, mq, qname, q.qtype)
	}
	packed := make([]byte, 256+4)
	off, err := dns.PackDomainName(mq.Name, packed, 0, nil, false)
	if err != nil {
		t.Fatalf("%x: %v", b, err)
	}
	packed = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(packed[:off], mq.Qtype), mq.Qclass)
	if !bytes.Equal(packed, question) {
		t.Fatalf("%x: question %x, fastQuery's %x", b, packed, question)
	}
	o := m.IsEdns0()
	switch {
	case len(m.Extra) > 1, len(m.Extra) == 1 && o == nil:
		t.Fatalf("%x: fastQuery took the records %v", b, m.Extra)
	case (o != nil) != q.opt:
		t.Fatalf("%x: OPT %v, fastQuery read opt %v", b, o, q.opt)
	case o != nil:
		if o.UDPSize() != q.udpSize || o.Do() != q.do() || o.Co() != q.co() || o.Version() != 0 || o.ExtendedRcode() != 0 || o.Hdr.Name != "." {
			t.Fatalf("%x: OPT %v, fastQuery read %+v", b, o, q)
		}
		for _, e := range o.Option {
			if c := e.Option(); c != dns.EDNS0COOKIE && c != dns.EDNS0PADDING {
				t.Fatalf("%x: fastQuery took the option %v", b, e)
			}
		}
	}
	// Nothing is lost: packed again the message is the packet.
	if again, err := m.Pack(); err != nil || !bytes.Equal(again, b) {
		t.Fatalf("%x: packed again %x, %v", b, again, err)
	}
	return true
}

// TestFastQuery: fastQuery takes the queries the fast path may answer, reads them as
// miekg/dns does, and leaves every other to the chain, for each reason it has.
func TestFastQuery(t *testing.T) {
	const name = "sensor7._device.iot.example."
	hdr := func(id, flags, qd, an, ns, ar uint16) []byte {
		var b []byte
		for _, v := range []uint16{id, flags, qd, an, ns, ar} {
			b = binary.BigEndian.AppendUint16(b, v)
		}
		return b
	}
	raw := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	question := []byte("\x07sensor7\x07_device\x03iot\x07example\x00\x00\x34\x00\x01")
	opt := func(size uint16, ttl uint32, rdata ...byte) []byte {
		b := binary.BigEndian.AppendUint16([]byte{0}, dns.TypeOPT)
		b = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(b, size), ttl)
		return append(binary.BigEndian.AppendUint16(b, uint16(len(rdata))), rdata...)
	}
	ednsq := testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	for _, c := range []struct {
		what  string
		b     []byte
		ok    bool
		qname string
	}{
		{"plain", testenv.PackQuery(t, name, dns.TypeTLSA, nil), true, name},
		{"upper case", testenv.PackQuery(t, "SeNsOr7._DeViCe.IoT.eXaMpLe.", dns.TypeTLSA, nil), true, name},
		{"EDNS DO", ednsq, true, name},
		{"EDNS DO CO 4096", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(4096, true, true)), true, name},
		{"EDNS 65535", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(65535, false, false)), true, name},
		{"EDNS 0", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(0, false, false)), true, name},
		{"cookie", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testCookie)), true, name},
		{"cookie and padding", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testCookie2, testPadding(7))), true, name},
		{"512 bytes", paddedQuery(t, name, 512), true, name},
		{"the apex", testenv.PackQuery(t, "iot.example.", dns.TypeSOA, nil), true, "iot.example."},
		{"digits, - and _", testenv.PackQuery(t, "a-0_Z.iot.example.", dns.TypeTLSA, nil), true, "a-0_z.iot.example."},
		{"RD CD AD Z", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
			m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData, m.Zero = true, true, true, true
		}), true, name},
		{"empty", nil, false, ""},
		{"11 bytes", ednsq[:11], false, ""},
		{"header only", ednsq[:12], false, ""},
		{"513 bytes", paddedQuery(t, name, 513), false, ""},
		{"NOTIFY", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), false, ""},
		{"UPDATE", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), false, ""},
		{"STATUS", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus }), false, ""},
		{"QDCOUNT 0", raw(hdr(1, 0, 0, 0, 0, 0), question), false, ""},
		{"QDCOUNT 2", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), false, ""},
		{"ANCOUNT 1", raw(hdr(1, 0, 1, 1, 0, 0), question, opt(512, 0)), false, ""},
		{"NSCOUNT 1", raw(hdr(1, 0, 1, 0, 1, 0), question, opt(512, 0)), false, ""},
		{"ARCOUNT 2", raw(hdr(1, 0, 1, 0, 0, 2), question, opt(512, 0), opt(512, 0)), false, ""},
		{"a record not an OPT", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
			m.Extra = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{1, 2, 3, 4}}}
		}), false, ""},
		{"TSIG", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.SetTsig("key.", dns.HmacSHA256, 300, 0) }), false, ""},
		{"OPT not at the root", raw(hdr(1, 0, 1, 0, 0, 1), question, []byte{1, 'a'}, opt(512, 0)[1:]), false, ""},
		{"compressed", raw(hdr(1, 0, 1, 0, 0, 0), []byte{0xC0, 12, 0, 52, 0, 1}), false, ""},
		{"compressed after a label", raw(hdr(1, 0, 1, 0, 0, 0), []byte{1, 'a', 0xC0, 12, 0, 52, 0, 1}), false, ""},
		{"escaped dot", testenv.PackQuery(t, "bad\\.name._device.iot.example.", dns.TypeTLSA, nil), false, ""},
		{"escaped byte", testenv.PackQuery(t, "nul\\000._device.iot.example.", dns.TypeTLSA, nil), false, ""},
		{"space", testenv.PackQuery(t, "a\\032b._device.iot.example.", dns.TypeTLSA, nil), false, ""},
		{"wildcard", testenv.PackQuery(t, "*.iot.example.", dns.TypeTLSA, nil), false, ""},
		{"label of 64", raw(hdr(1, 0, 1, 0, 0, 0), []byte{64}, bytes.Repeat([]byte{'a'}, 64), []byte{0, 0, 52, 0, 1}), false, ""},
		{"name of 256", raw(hdr(1, 0, 1, 0, 0, 0), bytes.Repeat(append([]byte{63}, bytes.Repeat([]byte{'a'}, 63)...), 4), []byte{0, 0, 52, 0, 1}), false, ""},
		{"the root", testenv.PackQuery(t, ".", dns.TypeNS, nil), false, ""},
		{"no type and class", raw(hdr(1, 0, 1, 0, 0, 0), question[:len(question)-4]), false, ""},
		{"no class", raw(hdr(1, 0, 1, 0, 0, 0), question[:len(question)-2]), false, ""},
		{"no end of name", raw(hdr(1, 0, 1, 0, 0, 0), question[:8]), false, ""},
		{"class CH", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), false, ""},
		{"class ANY", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }), false, ""},
		{"ARCOUNT 1, no OPT", raw(hdr(1, 0, 1, 0, 0, 1), question), false, ""},
		{"OPT cut short", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 0)[:10]), false, ""},
		{"EDNS version 1", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 1<<16)), false, ""},
		{"extended RCODE", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 1<<24)), false, ""},
		{"OPT data past the end", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 0)[:9], []byte{0, 4}), false, ""},
		{"option cut short", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 0, 0, 10, 0)), false, ""},
		{"option past its OPT", raw(hdr(1, 0, 1, 0, 0, 1), question, opt(512, 0, 0, 10, 0, 8, 1, 2)), false, ""},
		{"NSID", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testNSID)), false, ""},
		{"unknown option", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testUnknown)), false, ""},
		{"cookie then NSID", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, testCookie, testNSID)), false, ""},
		{"trailing byte", append(testenv.PackQuery(t, name, dns.TypeTLSA, nil), 0), false, ""},
		{"trailing byte after the OPT", append(slices.Clone(ednsq), 0), false, ""},
	} {
		t.Run(c.what, func(t *testing.T) {
			var n [256]byte
			_, _, qname, ok := fastQuery(c.b, &n)
			if ok != c.ok || qname != c.qname {
				t.Fatalf("%x: ok %v qname %q, want %v %q", c.b, ok, qname, c.ok, c.qname)
			}
			if checkFastQuery(t, c.b) != c.ok {
				t.Fatal("checkFastQuery disagrees")
			}
		})
	}
}

// fastAsk sends the packet b through the fast path of d from addr at now, as the
// fast path's reader does, and returns the answer and the verdict.
func fastAsk(d *Deviceid, b []byte, addr string, now time.Time) ([]byte, fastVerdict) {
	fp := &fastPath{d: d}
	var name [256]byte
	src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))
	local := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	return fp.answer(b, src, local, make([]byte, 0, maxMaxUDPSize), &name, now)
}

// frameworkAsk sends b through ServeDNS from addr, as the server would, and reports
// whether anything was written.
func frameworkAsk(t *testing.T, d *Deviceid, b []byte, addr string) bool {
	t.Helper()
	r := new(dns.Msg)
	if err := r.Unpack(b); err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(addr)
	raw := &rawWriter{ResponseWriter: &test.ResponseWriter{RemoteIP: ap.Addr().String()}}
	d.ServeDNS(context.Background(), request.NewScrubWriter(r, raw), r)
	return raw.buf != nil || raw.msg != nil
}

// TestFastPathRateLimitsFirst: a response over the rate limit changes nothing, through
// the fast path as through ServeDNS (where rate limiting "comes before any other work"):
// it neither engages the denial budget (names that exist asked for), nor counts a query
// over the budget, nor a hit of the signature cache.
func TestFastPathRateLimitsFirst(t *testing.T) {
	const client = "192.0.2.1:5353"
	exists := testenv.PackQuery(t, "sensor7._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	cached := testenv.PackQuery(t, "cached._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	nx := testenv.PackQuery(t, "nx._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	truncated := func() float64 { return testutil.ToFloat64(overBudget.WithLabelValues("iot.example.", "truncated")) }
	hits := func() float64 { return testutil.ToFloat64(cacheHits.WithLabelValues("iot.example.")) }
	type effects struct {
		existing          int64
		truncated, hits   float64
		answered, limited int
	}
	run := func(fast bool) effects {
		d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
		clock := time.Now()
		d.now = func() time.Time { return clock }
		z := d.zones["iot.example."]
		if _, err := z.maintain(clock); err != nil { // the signatures made ahead
			t.Fatal(err)
		}
		b := z.signer.budget
		b.rate = 1
		// The proof for cached is signed (through ServeDNS, from another client), and the
		// budget is spent.
		if !frameworkAsk(t, d, cached, "198.51.100.1:53") {
			t.Fatal("no answer for cached")
		}
		b.mu.Lock()
		b.tokens, b.last = 0, clock.UnixNano()
		b.mu.Unlock()
		d.rrl = testRRL(1, 1, 0, 64) // one response a second; over it, dropped
		var e effects
		t0, h0 := truncated(), hits()
		for _, q := range [][]byte{exists, exists, exists, cached, cached, nx, nx} {
			var sent bool
			if fast {
				_, v := fastAsk(d, q, client, clock)
				sent = v == fastAnswer
				if v == fastHandOver {
					t.Fatalf("%x handed over", q)
				}
			} else {
				sent = frameworkAsk(t, d, q, client)
			}
			if sent {
				e.answered++
			} else {
				e.limited++
			}
		}
		e.existing, e.truncated, e.hits = b.existing.Load(), truncated()-t0, hits()-h0
		return e
	}
	framework, fast := run(false), run(true)
	if fast != framework {
		t.Errorf("queries over the rate limit through the fast path: %+v; through ServeDNS: %+v", fast, framework)
	}
}

// TestFastPathContainsPanics: a panic while the fast path answers a query does not
// leave the fast path (where nothing recovers it: the process would end), as the server
// recovers one in its chain and answers SERVFAIL. The panic here is made by the clock.
func TestFastPathContainsPanics(t *testing.T) {
	d, _, _, _ := testDeviceid(t)
	now := time.Now()
	d.now = func() time.Time { panic("a bug in answering") }
	for _, q := range [][]byte{
		testenv.PackQuery(t, "iot.example.", dns.TypeSOA, nil), // the apex: ServeDNS
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%x: the fast path panicked: %v", q, r)
				}
			}()
			fastAsk(d, q, "192.0.2.1:5353", now)
		}()
	}
}

// FuzzFastAnswer: whatever the packet, when the fast path answers it the answer is the
// one ServeDNS writes for it (as the server calls it: the scrub writer, the RCODE of an
// error written as the server's errorFunc writes it), byte for byte; when the fast path
// drops it the server sends nothing. The signatures are made ahead, the clock stands
// still and nothing is limited.
func FuzzFastAnswer(f *testing.F) {
	d := signedDeviceid(f, true, dns.ECDSAP256SHA256)
	addBigDevice(f, d, "big", record.MaxCredentials)
	clock := time.Now()
	d.now = func() time.Time { return clock }
	if _, err := d.zones["iot.example."].maintain(clock); err != nil {
		f.Fatal(err)
	}
	d.Next = test.NextHandler(dns.RcodeRefused, nil)
	for _, b := range fastQuerySeeds(f) {
		f.Add(b)
	}
	for _, n := range []string{"iot.example.", "big._device.iot.example.", "c90a.airquality._device.iot.example.", "airquality._device.iot.example.",
		"_device.iot.example.", "nosuch._device.iot.example.", "x.sensor7._device.iot.example."} {
		for _, qt := range []uint16{dns.TypeTLSA, dns.TypeSOA, dns.TypeNS, dns.TypeDNSKEY, dns.TypeNSEC, dns.TypeRRSIG, dns.TypeCDS} {
			f.Add(testenv.PackQuery(f, n, qt, nil))
			f.Add(testenv.PackQuery(f, n, qt, testenv.WithEDNS(4096, true, true)))
			f.Add(testenv.PackQuery(f, n, qt, testenv.WithEDNS(600, true, false, testCookie)))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, v := fastAsk(d, slices.Clone(b), "192.0.2.1:5353", clock)
		if v == fastHandOver {
			return
		}
		r := new(dns.Msg)
		if r.Unpack(b) != nil || r.Response {
			if v != fastDrop {
				t.Fatalf("%x: the fast path answered a packet the server does not", b)
			}
			return
		}
		raw := &rawWriter{ResponseWriter: &test.ResponseWriter{RemoteIP: "192.0.2.1"}}
		w := request.NewScrubWriter(r, raw)
		if rcode, _ := d.ServeDNS(context.Background(), w, r); !plugin.ClientWrite(rcode) {
			m := new(dns.Msg)
			m.SetRcode(r, rcode)
			(&request.Request{W: w, Req: r}).SizeAndDo(m)
			w.WriteMsg(m)
		}
		framework := raw.buf
		if raw.msg != nil {
			var err error
			if framework, err = raw.msg.Pack(); err != nil {
				t.Fatal(err)
			}
		}
		if v == fastDrop {
			if framework != nil {
				t.Fatalf("%x: the fast path dropped it, the server answers %x", b, framework)
			}
			return
		}
		if !bytes.Equal(fast, framework) {
			a, c := new(dns.Msg), new(dns.Msg)
			a.Unpack(fast)
			c.Unpack(framework)
			t.Fatalf("%x: the fast path answers\n%v\nthe server\n%v", b, a, c)
		}
	})
}
