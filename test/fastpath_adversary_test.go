package test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// advPadded is a query for name with DO, padded to size bytes.
func advPadded(t testing.TB, name string, qtype uint16, size int) []byte {
	t.Helper()
	pad := func(n int) func(*dns.Msg) {
		return testenv.WithEDNS(1232, true, false, &dns.EDNS0_PADDING{Padding: make([]byte, n)})
	}
	n := len(testenv.PackQuery(t, name, qtype, pad(0)))
	return testenv.PackQuery(t, name, qtype, pad(size-n))
}

// advHeader is a DNS header.
func advHeader(id, flags, qd, an, ns, ar uint16) []byte {
	var b []byte
	for _, v := range []uint16{id, flags, qd, an, ns, ar} {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return b
}

// advCase is a packet an attacker sends.
type advCase struct {
	what string
	b    []byte
	none bool // no answer may come (a response, a packet shorter than a header)
}

// advCases are malformed and odd packets, each with ID 0x1234 where it has one.
func advCases(t testing.TB) []advCase {
	const name = "sensor7._device.iot.example."
	base := testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	question := []byte("\x07sensor7\x07_device\x03iot\x07example\x00\x00\x34\x00\x01")
	opt := func(size uint16, ttl uint32, rdata ...byte) []byte {
		b := binary.BigEndian.AppendUint16([]byte{0}, dns.TypeOPT)
		b = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(b, size), ttl)
		return append(binary.BigEndian.AppendUint16(b, uint16(len(rdata))), rdata...)
	}
	raw := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	aRR := &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 1)}
	var cs []advCase
	for n := range 12 {
		cs = append(cs, advCase{fmt.Sprintf("%d bytes of a header", n), base[:n], true})
	}
	for n := 12; n < len(base); n += 7 {
		cs = append(cs, advCase{fmt.Sprintf("cut at %d", n), base[:n], false})
	}
	longLabel := raw(advHeader(0x1234, 0, 1, 0, 0, 0), []byte{64}, bytes.Repeat([]byte{'a'}, 64), []byte("\x03iot\x07example\x00\x00\x34\x00\x01"))
	longName := advHeader(0x1234, 0, 1, 0, 0, 0)
	for range 4 {
		longName = raw(longName, []byte{60}, bytes.Repeat([]byte{'n'}, 60))
	}
	longName = raw(longName, []byte("\x03iot\x07example\x00\x00\x34\x00\x01"))
	cs = append(cs,
		advCase{"header only", advHeader(0x1234, 0, 0, 0, 0, 0), false},
		advCase{"QDCOUNT 0 with a question", raw(advHeader(0x1234, 0, 0, 0, 0, 0), question), false},
		advCase{"QDCOUNT 2", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
			m.Question = append(m.Question, dns.Question{Name: "other._device.iot.example.", Qtype: dns.TypeTLSA, Qclass: dns.ClassINET})
		}), false},
		advCase{"QDCOUNT 2, one question", raw(advHeader(0x1234, 0, 2, 0, 0, 0), question), false},
		advCase{"ANCOUNT 1", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Answer = []dns.RR{aRR} }), false},
		advCase{"NSCOUNT 1", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Ns = []dns.RR{aRR} }), false},
		advCase{"ANCOUNT 3", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Answer = []dns.RR{aRR, aRR, aRR} }), false},
		advCase{"ANCOUNT 1, no record", raw(advHeader(0x1234, 0, 1, 1, 0, 0), question), false},
		advCase{"ARCOUNT 2", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { testenv.WithEDNS(1232, true, false)(m); m.Extra = append(m.Extra, aRR) }), false},
		advCase{"ARCOUNT 2, two OPTs", raw(advHeader(0x1234, 0, 1, 0, 0, 2), question, opt(1232, 1<<15), opt(1232, 1<<15)), false},
		advCase{"ARCOUNT 3", raw(advHeader(0x1234, 0, 1, 0, 0, 3), question, opt(1232, 1<<15), opt(1232, 0), opt(512, 0)), false},
		advCase{"QR", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Response = true }), true},
		advCase{"QR with EDNS", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { testenv.WithEDNS(1232, true, false)(m); m.Response = true }), true},
		advCase{"QR, the apex", testenv.PackQuery(t, zone, dns.TypeSOA, func(m *dns.Msg) { m.Response = true }), true},
		advCase{"QR, malformed", raw(advHeader(0x1234, 0x8000, 2, 0, 0, 0), []byte{0xC0, 12}), true},
		advCase{"NOTIFY", testenv.PackQuery(t, zone, dns.TypeSOA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), false},
		advCase{"UPDATE", testenv.PackQuery(t, zone, dns.TypeSOA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), false},
		advCase{"STATUS", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus }), false},
		advCase{"IQUERY", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = dns.OpcodeIQuery }), false},
		advCase{"opcode 15", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Opcode = 15 }), false},
		advCase{"class CH", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), false},
		advCase{"version.bind CH TXT", testenv.PackQuery(t, "version.bind.", dns.TypeTXT, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), false},
		advCase{"class ANY", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }), false},
		advCase{"class NONE", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassNONE }), false},
		advCase{"EDNS version 1", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { testenv.WithEDNS(1232, true, false)(m); m.IsEdns0().SetVersion(1) }), false},
		advCase{"EDNS version 1, the apex", testenv.PackQuery(t, zone, dns.TypeDNSKEY, func(m *dns.Msg) { testenv.WithEDNS(1232, true, false)(m); m.IsEdns0().SetVersion(1) }), false},
		advCase{"extended RCODE in the query", raw(advHeader(0x1234, 0, 1, 0, 0, 1), question, opt(1232, 1<<24|1<<15)), false},
		advCase{"EDNS 65535", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(65535, true, false)), false},
		advCase{"EDNS 65535, the apex DNSKEY", testenv.PackQuery(t, zone, dns.TypeDNSKEY, testenv.WithEDNS(65535, true, false)), false},
		advCase{"EDNS 0", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(0, true, false)), false},
		advCase{"EDNS 0, the apex DNSKEY", testenv.PackQuery(t, zone, dns.TypeDNSKEY, testenv.WithEDNS(0, true, false)), false},
		advCase{"EDNS 1, a denial", testenv.PackQuery(t, "nosuch._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1, true, true)), false},
		advCase{"unknown EDNS option", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}})), false},
		advCase{"EDNS option 0", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, &dns.EDNS0_LOCAL{Code: 0})), false},
		advCase{"EDE in a query", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, &dns.EDNS0_EDE{InfoCode: 1})), false},
		advCase{"NSID", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})), false},
		advCase{"cookie of 3 bytes", testenv.PackQuery(t, name, dns.TypeTLSA, testenv.WithEDNS(1232, true, false, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "010203"})), false},
		advCase{"OPT data past the end", raw(advHeader(0x1234, 0, 1, 0, 0, 1), question, opt(1232, 1<<15)[:9], []byte{0, 40}), false},
		advCase{"option past its OPT", raw(advHeader(0x1234, 0, 1, 0, 0, 1), question, opt(1232, 1<<15, 0, 10, 0, 8, 1, 2)), false},
		advCase{"OPT not at the root", raw(advHeader(0x1234, 0, 1, 0, 0, 1), question, []byte{1, 'a'}, opt(1232, 1<<15)[1:]), false},
		advCase{"a compression pointer as the name", raw(advHeader(0x1234, 0, 1, 0, 0, 0), []byte{0xC0, 12, 0, 52, 0, 1}), false},
		advCase{"a pointer to the header", raw(advHeader(0x1234, 0, 1, 0, 0, 0), []byte{7, 's', 'e', 'n', 's', 'o', 'r', '7', 0xC0, 2, 0, 52, 0, 1}), false},
		advCase{"a pointer forward", raw(advHeader(0x1234, 0, 1, 0, 0, 0), []byte{7, 's', 'e', 'n', 's', 'o', 'r', '7', 0xC0, 24, 0, 52, 0, 1}, question[8:]), false},
		advCase{"a compressed second question", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
			m.Question = append(m.Question, dns.Question{Name: "x._device.iot.example.", Qtype: dns.TypeTLSA, Qclass: dns.ClassINET})
		}), false},
		advCase{"a compressed name, one question", raw(advHeader(0x1234, 0, 1, 0, 0, 0), []byte{7, 's', 'e', 'n', 's', 'o', 'r', '7', 0xC0, 30, 0, 52, 0, 1},
			[]byte("\x07_device\x03iot\x07example\x00")), false},
		advCase{"an escaped dot", testenv.PackQuery(t, "bad\\.name._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false)), false},
		advCase{"an escaped dot before the zone", testenv.PackQuery(t, "x\\.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false)), false},
		advCase{"a zero byte", testenv.PackQuery(t, "nul\\000._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false)), false},
		advCase{"a byte over 127", testenv.PackQuery(t, "\\200\\255._device.iot.example.", dns.TypeTLSA, nil), false},
		advCase{"upper case escapes", testenv.PackQuery(t, "\\083ENSOR7._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false)), false},
		advCase{"a label of 64", longLabel, false},
		advCase{"a name of 259", longName, false},
		advCase{"512 bytes", advPadded(t, name, dns.TypeTLSA, 512), false},
		advCase{"513 bytes", advPadded(t, name, dns.TypeTLSA, 513), false},
		advCase{"600 bytes", advPadded(t, name, dns.TypeTLSA, 600), false},
		advCase{"1232 bytes", advPadded(t, name, dns.TypeTLSA, 1232), false},
		advCase{"4000 bytes", advPadded(t, name, dns.TypeTLSA, 4000), false},
		advCase{"512 bytes, the apex", advPadded(t, zone, dns.TypeDNSKEY, 512), false},
		advCase{"trailing garbage", append(slices.Clone(base), "garbage"...), false},
		advCase{"trailing garbage, no EDNS", append(testenv.PackQuery(t, name, dns.TypeTLSA, nil), 0xC0, 0x0C, 0xFF), false},
		advCase{"trailing garbage, the apex", append(testenv.PackQuery(t, zone, dns.TypeSOA, nil), 1, 2, 3), false},
		advCase{"another zone", testenv.PackQuery(t, "other.example.", dns.TypeA, testenv.WithEDNS(1232, true, false)), false},
		advCase{"a name in another zone ending like ours", testenv.PackQuery(t, "notiot.example.", dns.TypeA, nil), false},
		advCase{"the root", testenv.PackQuery(t, ".", dns.TypeNS, testenv.WithEDNS(1232, true, false)), false},
		advCase{"the root DNSKEY", testenv.PackQuery(t, ".", dns.TypeDNSKEY, nil), false},
		advCase{"ANY", testenv.PackQuery(t, name, dns.TypeANY, testenv.WithEDNS(1232, true, false)), false},
		advCase{"AXFR over UDP", testenv.PackQuery(t, zone, dns.TypeAXFR, nil), false},
		advCase{"IXFR over UDP", testenv.PackQuery(t, zone, dns.TypeIXFR, nil), false},
		advCase{"DS at the apex", testenv.PackQuery(t, zone, dns.TypeDS, testenv.WithEDNS(1232, true, false)), false},
		advCase{"NXNAME", testenv.PackQuery(t, "nosuch._device.iot.example.", dns.TypeNXNAME, testenv.WithEDNS(1232, true, false)), false},
		advCase{"OPT as the type", testenv.PackQuery(t, name, dns.TypeOPT, testenv.WithEDNS(1232, true, false)), false},
		advCase{"TSIG unknown key", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) { m.SetTsig("key.", dns.HmacSHA256, 300, 0) }), false},
		advCase{"every flag", testenv.PackQuery(t, name, dns.TypeTLSA, func(m *dns.Msg) {
			testenv.WithEDNS(1232, true, true)(m)
			m.Authoritative, m.Truncated, m.RecursionDesired, m.RecursionAvailable, m.Zero, m.AuthenticatedData, m.CheckingDisabled = true, true, true, true, true, true, true
			m.Rcode = dns.RcodeRefused
		}), false},
		advCase{"a name that exists, no EDNS", testenv.PackQuery(t, name, dns.TypeTLSA, nil), false},
		advCase{"a name that does not exist", testenv.PackQuery(t, "nosuch._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, true)), false},
	)
	return cs
}

// advSentinel is the query sent after each packet: its answer says that the packet's has
// come by then, if any. The byte after it sends it through the chain, where the packet
// handed over goes too.
func advSentinel(t testing.TB) []byte {
	q := testenv.PackQuery(t, zone, dns.TypeSOA, nil)
	binary.BigEndian.PutUint16(q, 0xBEEF)
	return append(q, 0)
}

// advExchange sends b to addr and returns every answer that came back, read until the
// answer to the sentinel sent after it has come and 100 ms more have passed.
func advExchange(t testing.TB, addr string, b []byte) [][]byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(advSentinel(t)); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	sentinel := false
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if sentinel && errors.As(err, &ne) && ne.Timeout() {
				return got
			}
			t.Fatalf("%x: %v (the sentinel answered: %v)", b, err, sentinel)
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == 0xBEEF && !sentinel {
			sentinel = true
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			continue
		}
		got = append(got, slices.Clone(buf[:n]))
	}
}

// advNormal is an answer as two servers with the same keys and data give it: the RRSIGs'
// signatures and validity (made apart in each process) blanked.
func advNormal(b []byte) string {
	m := new(dns.Msg)
	if m.Unpack(b) != nil {
		return fmt.Sprintf("%x", b)
	}
	for _, s := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range s {
			if sig, ok := rr.(*dns.RRSIG); ok {
				sig.Signature, sig.Inception, sig.Expiration = "", 0, 0
			}
		}
	}
	return fmt.Sprintf("%d bytes\n%v", len(b), m)
}

// TestFastPathAdversary: malformed and odd packets sent to a server with the fast path
// and to one without, same data and keys, get the same answers (or none); both answer
// after the barrage, and the fast path saw the packets.
func TestFastPathAdversary(t *testing.T) {
	etcd := sensor7Zone(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	zsk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, false)
	fast := testenv.StartCoreDNS(t, signedCorefileWith(dnsPort(t), etcd.URL(), 60, []string{"fastpath 2"}, ksk, zsk))
	plain := testenv.StartCoreDNS(t, signedCorefileWith(dnsPort(t), etcd.URL(), 60, nil, ksk, zsk))
	waitLoaded(t, fast)
	waitLoaded(t, plain)

	paths := []string{"fast", "handed", "dropped", "framework"}
	before := map[string]float64{}
	for _, p := range paths {
		before[p] = fastPackets(t, p)
	}
	seen, responses := 0, 0
	for _, c := range advCases(t) {
		a, b := advExchange(t, fast.UDP, c.b), advExchange(t, plain.UDP, c.b)
		if len(c.b) >= 2 {
			seen += 2 // the packet and the sentinel
		} else {
			seen++
		}
		if c.none {
			if len(c.b) >= 3 && c.b[2]&0x80 != 0 {
				responses++
			}
			if len(a)+len(b) != 0 {
				t.Errorf("%s: answered (fast path %d, framework %d), want no answer", c.what, len(a), len(b))
			}
			continue
		}
		if len(a) != len(b) {
			t.Errorf("%s: %d answers with the fast path, %d without", c.what, len(a), len(b))
			continue
		}
		for i := range a {
			if !bytes.Equal(a[i], b[i]) {
				if na, nb := advNormal(a[i]), advNormal(b[i]); na != nb {
					t.Errorf("%s (%x): with the fast path\n%s\nwithout\n%s", c.what, c.b, na, nb)
				}
			}
		}
	}
	got := map[string]float64{}
	for _, p := range paths {
		got[p] = fastPackets(t, p) - before[p]
	}
	t.Logf("fast path packets: %v", got)
	if got["fast"]+got["handed"]+got["dropped"] < float64(seen) {
		t.Errorf("the fast path saw %v packets, want the %d sent", got["fast"]+got["handed"]+got["dropped"], seen)
	}
	if got["dropped"] < float64(responses) {
		t.Errorf("%v dropped, want the %d responses", got["dropped"], responses)
	}
	if got["framework"] != 0 {
		t.Errorf("%v answers on the server's own socket", got["framework"])
	}
	// Both still answer.
	for _, c := range []*testenv.CoreDNS{fast, plain} {
		for _, q := range [][]byte{testenv.PackQuery(t, "sensor7._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false)),
			testenv.PackQuery(t, zone, dns.TypeDNSKEY, testenv.WithEDNS(1232, true, false))} {
			m := new(dns.Msg)
			if err := m.Unpack(exchangeRaw(t, c.UDP, q)); err != nil {
				t.Fatal(err)
			}
			if m.Rcode != dns.RcodeSuccess || !m.Authoritative || m.Truncated || len(m.Answer) < 2 {
				t.Errorf("%s after the barrage: %v", c.UDP, m)
			}
		}
	}
}

// udpSockets counts the UDP sockets bound to port (/proc/net/udp and udp6).
func udpSockets(t testing.TB, port int) int {
	t.Helper()
	n := 0
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		s := bufio.NewScanner(fh)
		for s.Scan() {
			fields := strings.Fields(s.Text())
			if len(fields) > 1 && strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) {
				n++
			}
		}
		fh.Close()
	}
	return n
}

// fastGoroutines counts the goroutines of fast paths: their readers and the chain's server.
func fastGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "plugin.(*fastPath).serve") || strings.Contains(g, "plugin.(*handOverConn).ReadFrom") {
			n++
		}
	}
	return n
}

// TestFastPathReloadAndStop: a reload replaces the fast path's sockets and goroutines
// (none left of the old one), queries are answered by the fast path after it, and
// stopping the server closes every socket and ends every goroutine.
func TestFastPathReloadAndStop(t *testing.T) {
	etcd := sensor7Zone(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	zsk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, false)
	port := dnsPort(t)
	g0 := fastGoroutines()
	c := testenv.StartCoreDNS(t, signedCorefileWith(port, etcd.URL(), 60, []string{"fastpath 2"}, ksk, zsk))
	waitLoaded(t, c)
	q := testenv.PackQuery(t, "sensor7._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
	check := func(when string, sockets, goroutines int) {
		t.Helper()
		if n := udpSockets(t, port); n != sockets {
			t.Errorf("%s: %d UDP sockets on the port, want %d", when, n, sockets)
		}
		if n := fastGoroutines() - g0; n != goroutines {
			t.Errorf("%s: %d fast path goroutines, want %d", when, n, goroutines)
		}
	}
	ask := func(when string) {
		t.Helper()
		fast0, fw0 := fastPackets(t, "fast"), fastPackets(t, "framework")
		for i := range 20 {
			binary.BigEndian.PutUint16(q, uint16(i))
			m := new(dns.Msg)
			if err := m.Unpack(exchangeRaw(t, c.UDP, q)); err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) < 2 {
				t.Fatalf("%s: %v %v", when, m, err)
			}
		}
		if fast, fw := fastPackets(t, "fast")-fast0, fastPackets(t, "framework")-fw0; fast != 20 || fw != 0 {
			t.Errorf("%s: %v answered by the fast path, %v by the server's socket; want 20, 0", when, fast, fw)
		}
	}
	ask("started")
	check("started", 1+2, 2+1)
	c.Reload(t, signedCorefileWith(port, etcd.URL(), 60, []string{"fastpath 3"}, ksk, zsk))
	waitLoaded(t, c)
	ask("reloaded")
	check("reloaded", 1+3, 3+1)
	c.Reload(t, signedCorefileWith(port, etcd.URL(), 60, nil, ksk, zsk))
	waitLoaded(t, c)
	check("reloaded without the fast path", 1, 0)
	c.Reload(t, signedCorefileWith(port, etcd.URL(), 60, []string{"fastpath 2"}, ksk, zsk))
	waitLoaded(t, c)
	ask("with the fast path again")
	check("with the fast path again", 1+2, 2+1)
	c.Stop()
	check("stopped", 0, 0)
}

// TestFastPathAnswersFromTheQueriedAddress: a server listening on every address (no
// bind) answers a query from the address it was sent to, as CoreDNS does (miekg/dns
// reads the destination with IP_PKTINFO and writes from it): a client, and a resolver
// above all, drops an answer from another address. The fast path's answers and the
// chain's it writes go out from the address the kernel picks (127.0.0.1 for 127.0.0.2).
//
// It listens on every address of the host, so it runs only when asked, in a network
// namespace of its own with nothing but loopback:
//
//	unshare -n sh -c 'ip link set lo up && DEVICEID_TEST_WILDCARD=1 go test -run TestFastPathAnswersFromTheQueriedAddress ./test/'
func TestFastPathAnswersFromTheQueriedAddress(t *testing.T) {
	if os.Getenv("DEVICEID_TEST_WILDCARD") == "" {
		// Run again in a network namespace of its own, where every address is loopback.
		unshare := []string{"unshare", "--net"}
		if os.Geteuid() != 0 {
			unshare = append(unshare, "--map-root-user")
		}
		cmd := exec.Command(unshare[0], append(unshare[1:], "sh", "-c", `ip link set lo up && exec "$0" -test.run '^TestFastPathAnswersFromTheQueriedAddress$' -test.v`, os.Args[0])...)
		cmd.Env = append(os.Environ(), "DEVICEID_TEST_WILDCARD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestFastPathAnswersFromTheQueriedAddress") {
			t.Fatalf("in a network namespace: %v\n%s", err, out)
		}
		return
	}
	etcd := sensor7Zone(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	for _, extra := range [][]string{nil, {"fastpath 2"}} {
		port := dnsPort(t)
		corefile := strings.Replace(signedCorefileWith(port, etcd.URL(), 60, extra, ksk), "bind 127.0.0.1\n", "", 1)
		testenv.StartCoreDNS(t, corefile)
		to := fmt.Sprintf("127.0.0.2:%d", port)
		q := testenv.PackQuery(t, "sensor7._device.iot.example.", dns.TypeTLSA, testenv.WithEDNS(1232, true, false))
		for _, b := range [][]byte{q, append(slices.Clone(q), 0)} { // the fast path's, the chain's
			// A connected socket takes only what comes from the address it sent to.
			c, err := net.Dial("udp", to)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write(b)
			buf := make([]byte, 4096)
			_, err = c.Read(buf)
			c.Close()
			if err != nil {
				t.Errorf("%v, %d bytes sent to %s: no answer from it: %v", extra, len(b), to, err)
			}
		}
	}
}

// TestFastPathRefusedStartLeavesNothing: a Corefile refused at startup (here: a second
// block whose fast path refuses the log plugin, after the first block's fast path was
// set to open) leaves nothing behind: the next server starts at once, not after
// waiting the 5 s the fast path gives a server's sockets for the one of the refused
// instance, which never listened (the fast paths pending are kept process-wide).
func TestFastPathRefusedStartLeavesNothing(t *testing.T) {
	etcd, _, _ := testbed(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	first := signedCorefileWith(dnsPort(t), etcd.URL(), 60, []string{"fastpath 2"}, ksk)
	second := strings.Replace(signedCorefileWith(dnsPort(t), etcd.URL(), 60, []string{"fastpath 2"}, ksk), "    deviceid {", "    log\n    deviceid {", 1)
	if _, err := testenv.TryStartCoreDNS(t, first+"\n"+second); err == nil || !strings.Contains(err.Error(), "fastpath: plugin log") {
		t.Fatalf("the Corefile with log and the fast path: %v", err)
	}
	start := time.Now()
	c := testenv.StartCoreDNS(t, signedCorefileWith(dnsPort(t), etcd.URL(), 60, []string{"fastpath 2"}, ksk))
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the next server took %s to start", took.Round(time.Millisecond))
	}
	waitLoaded(t, c)
}
