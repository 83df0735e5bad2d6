package deviceid

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"net"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// testDeviceid returns a plugin serving iot.example. from memory (no etcd) with the
// devices sensor7 (active) and c90a.airquality (revoked), and the CA's record.
func testDeviceid(t testing.TB) (*Deviceid, []dns.RR, []dns.RR, []dns.RR) {
	t.Helper()
	return testDeviceidWith(t, caddyConfig(t))
}

func testDeviceidWith(t testing.TB, c *config) (*Deviceid, []dns.RR, []dns.RR, []dns.RR) {
	t.Helper()
	d := newDeviceid(c)
	ca, err := testenv.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	z := d.zones["iot.example."]
	zd := z.newData(42, z.keys)
	now := time.Now()
	var sets [][]dns.RR
	for _, dev := range []struct{ name, status string }{{"sensor7", "active"}, {"c90a.airquality", "revoked"}} {
		key, _ := testenv.NewDeviceKey()
		der, err := ca.Issue(dev.name+"._device.iot.example", key.Public(), now.AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		rec := &record.Device{Version: 1, Credentials: []record.Credential{{Cert: der, Status: dev.status}}}
		if err := rec.Validate(); err != nil {
			t.Fatal(err)
		}
		owner, _ := record.DeviceOwner(dev.name, "iot.example.")
		rr, _ := c.deviceRRset(rec, now)
		z.put(zd, owner, rr, true, nil)
		sets = append(sets, rrsOf(owner, rr))
	}
	aki := record.KeyID(ca.Cert.SubjectKeyId)
	caRR, _ := c.caRRset(ca.Cert.Raw)
	z.put(zd, record.CAOwner(aki, "iot.example."), caRR, false, nil)
	z.setSerial(zd, 42, now)
	z.swap(zd)
	return d, sets[0], sets[1], rrsOf(record.CAOwner(aki, "iot.example."), caRR)
}

// rrsOf returns the records of a packed RRset as TLSA records at owner.
func rrsOf(owner string, rr []byte) []dns.RR {
	var rrs []dns.RR
	eachRecord(rr, func(_ int64, w []byte) {
		rdata := w[12:]
		rrs = append(rrs, &dns.TLSA{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTLSA, Class: dns.ClassINET,
				Ttl: binary.BigEndian.Uint32(w[6:10])},
			Usage: rdata[0], Selector: rdata[1], MatchingType: rdata[2],
			Certificate: hex.EncodeToString(rdata[3:]),
		})
	})
	return rrs
}

func caddyConfig(t testing.TB) *config {
	return &config{
		zones:  []string{"iot.example."},
		prefix: "/deviceid",
		ns:     []string{"ns1.iot.example."},
		ttl:    60,
		render: record.RenderOptions{RevokedUsage: 255, Discovery: true},
	}
}

func TestServeDNS(t *testing.T) {
	d, sensor7, c90a, ca := testDeviceid(t)
	soa := "iot.example. 60 IN SOA ns1.iot.example. hostmaster.iot.example. 42 7200 1800 1209600 60"
	if len(sensor7) != 2 || len(c90a) != 1 || len(ca) != 1 {
		t.Fatalf("rendered %v %v %v", sensor7, c90a, ca)
	}
	tests := []test.Case{
		{Qname: "sensor7._device.iot.example.", Qtype: dns.TypeTLSA, Answer: sensor7},
		{Qname: "c90a.airquality._device.iot.example.", Qtype: dns.TypeTLSA, Answer: c90a},
		{Qname: ca[0].Header().Name, Qtype: dns.TypeTLSA, Answer: ca},
		{Qname: "sensor7._device.iot.example.", Qtype: dns.TypeANY, Answer: sensor7},
		{Qname: "sensor7._device.iot.example.", Qtype: dns.TypeAAAA, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "airquality._device.iot.example.", Qtype: dns.TypeTLSA, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "_device.iot.example.", Qtype: dns.TypeTLSA, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "_ca._device.iot.example.", Qtype: dns.TypeTLSA, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "nosuch._device.iot.example.", Qtype: dns.TypeTLSA, Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "x.sensor7._device.iot.example.", Qtype: dns.TypeTLSA, Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "iot.example.", Qtype: dns.TypeSOA, Answer: []dns.RR{test.SOA(soa)}},
		{Qname: "iot.example.", Qtype: dns.TypeNS, Answer: []dns.RR{test.NS("iot.example. 60 IN NS ns1.iot.example.")}},
		{Qname: "iot.example.", Qtype: dns.TypeANY, Answer: []dns.RR{test.SOA(soa)}},
		{Qname: "iot.example.", Qtype: dns.TypeTXT, Ns: []dns.RR{test.SOA(soa)}},
		{Qname: "iot.example.", Qtype: dns.TypeAXFR, Rcode: dns.RcodeRefused},
		{Qname: "iot.example.", Qtype: dns.TypeIXFR, Rcode: dns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.Qname+"/"+dns.TypeToString[tc.Qtype], func(t *testing.T) {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			m := tc.Msg()
			m.SetEdns0(4096, false)
			rcode, err := d.ServeDNS(context.Background(), rec, m)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Msg == nil { // not written: the server answers with rcode
				if rcode != tc.Rcode {
					t.Fatalf("rcode %d, want %d", rcode, tc.Rcode)
				}
				return
			}
			if !rec.Msg.Authoritative {
				t.Error("AA not set")
			}
			rec.Msg.Extra = nil // the OPT record, added here or by the server
			if err := test.SortAndCheck(rec.Msg, tc); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestServeDNSKeepsCase(t *testing.T) {
	d, _, _, _ := testDeviceid(t)
	qname := "SENSOR7._Device.IoT.Example."
	m := new(dns.Msg)
	m.SetQuestion(qname, dns.TypeTLSA)
	m.SetEdns0(4096, false)
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if _, err := d.ServeDNS(context.Background(), rec, m); err != nil {
		t.Fatal(err)
	}
	if len(rec.Msg.Answer) != 2 {
		t.Fatalf("answer %v", rec.Msg.Answer)
	}
	for _, rr := range rec.Msg.Answer {
		if rr.Header().Name != qname {
			t.Errorf("owner %q, want %q", rr.Header().Name, qname)
		}
	}
	// The stored records keep their lower-case owner.
	again := dnstest.NewRecorder(&test.ResponseWriter{})
	m.SetQuestion("sensor7._device.iot.example.", dns.TypeTLSA)
	d.ServeDNS(context.Background(), again, m)
	if again.Msg.Answer[0].Header().Name != "sensor7._device.iot.example." {
		t.Errorf("stored owner changed: %v", again.Msg.Answer[0])
	}
}

func TestServeDNSBeforeLoad(t *testing.T) {
	d := newDeviceid(caddyConfig(t))
	if d.Ready() {
		t.Error("ready before the first load")
	}
	m := new(dns.Msg)
	m.SetQuestion("sensor7._device.iot.example.", dns.TypeTLSA)
	rcode, _ := d.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), m)
	if rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %d before load, want SERVFAIL", rcode)
	}
	z := d.zones["iot.example."]
	z.swap(z.newData(1, z.keys))
	if !d.Ready() {
		t.Error("not ready after the first load")
	}
}

func TestServeDNSOtherZone(t *testing.T) {
	d, _, _, _ := testDeviceid(t)
	d.Next = test.NextHandler(dns.RcodeBadCookie, nil)
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	rcode, _ := d.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), m)
	if rcode != dns.RcodeBadCookie {
		t.Errorf("a query outside the zone was not passed on: rcode %d", rcode)
	}
}

func TestStoreNames(t *testing.T) {
	d := newDeviceid(caddyConfig(t))
	z := d.zones["iot.example."]
	zd := z.newData(1, z.keys)
	c := z.cfg
	key, _ := testenv.NewDeviceKey()
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	rec := &record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki, Status: "active"}}}
	rr, _ := c.deviceRRset(rec, time.Now())
	z.put(zd, "a.b._device.iot.example.", rr, true, nil)
	z.put(zd, "a.b._device.iot.example.", rr, true, nil) // a replacement counts once
	z.put(zd, "b._device.iot.example.", rr, true, nil)
	if n := zd.st.len(); n != 3 || zd.devices.Load() != 2 {
		t.Fatalf("names %d devices %d", n, zd.devices.Load())
	}
	z.remove(zd, "b._device.iot.example.")
	var below uint32
	var flags uint8 = 0xff
	zd.st.view("b._device.iot.example.", func(e entry) { below, flags = e.below(), e.flags() })
	if flags != 0 || below != 1 {
		t.Errorf("b stays as an empty non-terminal: flags %d below %d", flags, below)
	}
	z.remove(zd, "a.b._device.iot.example.")
	z.remove(zd, "a.b._device.iot.example.") // twice is harmless
	if n := zd.st.len(); n != 0 || zd.devices.Load() != 0 {
		t.Errorf("names %d devices %d after removing all", n, zd.devices.Load())
	}
	// A device with nothing to publish is no name at all.
	empty, _ := c.deviceRRset(&record.Device{Version: 1}, time.Now())
	z.put(zd, "c._device.iot.example.", empty, true, nil)
	if n := zd.st.len(); n != 0 || zd.devices.Load() != 0 {
		t.Errorf("a device without credentials: names %d devices %d", n, zd.devices.Load())
	}
}

// Benchmarks of the query path: a lookup in memory and the message assembly,
// with no etcd call.
func BenchmarkServeDNS(b *testing.B) {
	d, _, _, _ := testDeviceid(b)
	for _, bc := range []struct{ name, qname string }{
		{"device", "sensor7._device.iot.example."},
		{"nonexistent", "nosuch._device.iot.example."},
		{"empty-non-terminal", "airquality._device.iot.example."},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := new(dns.Msg)
			m.SetQuestion(bc.qname, dns.TypeTLSA)
			m.SetEdns0(1232, false)
			// As in the server: a ScrubWriter over the connection's writer.
			w := request.NewScrubWriter(m, discardWriter{&test.ResponseWriter{}})
			b.ReportAllocs()
			for b.Loop() {
				d.ServeDNS(context.Background(), w, m)
			}
		})
	}
}

// TestPackedAnswer checks the bytes written straight to the client (no plugin wraps
// the writer) against what the message path gives, and truncation to the buffer.
func TestPackedAnswer(t *testing.T) {
	d, sensor7, _, _ := testDeviceid(t)
	for _, tc := range []struct {
		name      string
		qname     string
		edns      uint16 // 0: no EDNS
		do, co    bool
		rd, cd    bool
		tcp       bool
		truncated bool
	}{
		{name: "edns", qname: "sensor7._device.iot.example.", edns: 1232, rd: true},
		{name: "do and co", qname: "SENSOR7._device.iot.example.", edns: 4096, do: true, co: true, cd: true},
		{name: "no edns: 512 bytes", qname: "sensor7._device.iot.example.", truncated: true},
		{name: "no edns over tcp", qname: "sensor7._device.iot.example.", tcp: true},
		{name: "small buffer", qname: "sensor7._device.iot.example.", edns: 512, truncated: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := new(dns.Msg)
			q.SetQuestion(tc.qname, dns.TypeTLSA)
			q.Id, q.RecursionDesired, q.CheckingDisabled = 4711, tc.rd, tc.cd
			if tc.edns != 0 {
				q.SetEdns0(tc.edns, tc.do)
				q.IsEdns0().SetCo(tc.co)
			}
			raw := &rawWriter{ResponseWriter: &test.ResponseWriter{TCP: tc.tcp}}
			if _, err := d.ServeDNS(context.Background(), request.NewScrubWriter(q, raw), q); err != nil {
				t.Fatal(err)
			}
			if raw.buf == nil {
				t.Fatal("nothing written with Write")
			}
			m := new(dns.Msg)
			if err := m.Unpack(raw.buf); err != nil {
				t.Fatalf("unpacking the answer: %v", err)
			}
			if m.Id != 4711 || !m.Response || !m.Authoritative || m.RecursionDesired != tc.rd || m.CheckingDisabled != tc.cd ||
				m.Rcode != dns.RcodeSuccess || m.Question[0] != q.Question[0] {
				t.Errorf("header or question wrong: %v", m)
			}
			if m.Truncated != tc.truncated {
				t.Errorf("TC = %v", m.Truncated)
			}
			if o := m.IsEdns0(); (o != nil) != (tc.edns != 0) || o != nil && (o.Do() != tc.do || o.Co() != tc.co) {
				t.Errorf("OPT %v", o)
			}
			if tc.truncated {
				if len(m.Answer) != 0 {
					t.Errorf("truncated answer has records")
				}
				return
			}
			if err := test.Section(test.Case{Qname: tc.qname, Answer: withOwner(sensor7, tc.qname)}, test.Answer, m.Answer); err != nil {
				t.Error(err)
			}
			for _, rr := range m.Answer {
				if rr.Header().Name != tc.qname {
					t.Errorf("owner %q, want the query's %q", rr.Header().Name, tc.qname)
				}
			}
		})
	}
}

// discardWriter packs messages as the server would, and drops all it is given.
type discardWriter struct{ dns.ResponseWriter }

func (discardWriter) WriteMsg(m *dns.Msg) error   { _, err := m.Pack(); return err }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }

// rawWriter records what is written with Write, or with WriteMsg.
type rawWriter struct {
	dns.ResponseWriter
	buf []byte
	msg *dns.Msg
}

func (w *rawWriter) WriteMsg(m *dns.Msg) error {
	w.msg = m
	return nil
}

func (w *rawWriter) Write(b []byte) (int, error) {
	w.buf = append([]byte(nil), b...)
	return len(b), nil
}

// FuzzServeDNS sends arbitrary messages through the query path, over UDP or TCP, from
// arbitrary source addresses, rate limited at 5 a second per prefix on a clock the
// fuzzer moves by up to 65 ms a query (the UDP seeds come from one /24, and exceed it):
// no panic, and every reply written is a well-formed message that answers the query;
// over UDP it is at most the client's buffer and max_udp_size, a truncated reply has no
// records, and the OPT advertises no more than max_udp_size.
func FuzzServeDNS(f *testing.F) {
	d := signedDeviceid(f, true, dns.ECDSAP256SHA256)
	addBigDevice(f, d, "big", record.MaxCredentials)
	d.rrl = newRRL(rrlConfig{rate: 5, window: 1, slip: 2, v4: 24, v6: 56, tableSize: 64})
	clock := time.Now()
	d.now = func() time.Time { return clock }
	for i, q := range []struct {
		name  string
		qtype uint16
		edns  uint16 // 0: none
	}{
		{"sensor7._device.iot.example.", dns.TypeTLSA, 1232},
		{"SENSOR7._device.iot.example.", dns.TypeTLSA, 0},
		{"airquality._device.iot.example.", dns.TypeANY, 1232},
		{"nosuch._device.iot.example.", dns.TypeTLSA, 1232},
		{"iot.example.", dns.TypeSOA, 0},
		{"iot.example.", dns.TypeDNSKEY, 65000},
		{"iot.example.", dns.TypeAXFR, 0},
		{"example.org.", dns.TypeA, 0},
		{"nosuch._device.iot.example.", dns.TypeNXNAME, 1232},
		{"big._device.iot.example.", dns.TypeTLSA, 65000},
		{"big._device.iot.example.", dns.TypeTLSA, 4096},
		{"big._device.iot.example.", dns.TypeTLSA, 0},
		{"big._device.iot.example.", dns.TypeTLSA, 512},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns != 0 {
			m.SetEdns0(q.edns, true)
			m.IsEdns0().SetCo()
		}
		b, _ := m.Pack()
		f.Add(b, false, []byte{192, 0, 2, byte(i)}, uint16(0))
		f.Add(b, true, [][]byte{net.ParseIP("2001:db8::1"), {127, 0, 0, 1}, nil}[i%3], uint16(50000))
	}
	d.Next = test.NextHandler(dns.RcodeRefused, nil)
	f.Fuzz(func(t *testing.T, wire []byte, tcp bool, src []byte, advance uint16) {
		r := new(dns.Msg)
		if r.Unpack(wire) != nil || len(r.Question) != 1 {
			return // the server drops these before any plugin sees them
		}
		clock = clock.Add(time.Duration(advance) * time.Microsecond)
		w := &test.ResponseWriter{TCP: tcp}
		if len(src) == net.IPv4len || len(src) == net.IPv6len {
			w.RemoteIP = net.IP(src).String()
		}
		raw := &rawWriter{ResponseWriter: w}
		size := (&request.Request{Req: r, W: raw}).Size() // the client's buffer, before ServeDNS lowers it
		d.ServeDNS(context.Background(), request.NewScrubWriter(r, raw), r)
		buf := raw.buf
		if raw.msg != nil { // the apex's answers: packed as the server would
			var err error
			if buf, err = raw.msg.Pack(); err != nil {
				t.Fatalf("reply does not pack: %v", err)
			}
		}
		if buf == nil {
			return // not written: the server answers with the RCODE, or nothing (rate limited)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf); err != nil {
			t.Fatalf("reply does not unpack: %v", err)
		}
		if m.Id != r.Id || !m.Response || len(m.Question) != 1 || m.Question[0] != r.Question[0] {
			t.Fatalf("reply %v does not answer %v", m, r)
		}
		if m.Truncated && len(m.Answer)+len(m.Ns) != 0 {
			t.Fatalf("a truncated reply with records: %v", m)
		}
		if o := m.IsEdns0(); o != nil && o.UDPSize() > defaultMaxUDPSize {
			t.Fatalf("the reply advertises a buffer of %d", o.UDPSize())
		}
		if !tcp && len(buf) > min(size, defaultMaxUDPSize) {
			t.Fatalf("UDP reply of %d bytes exceeds the client's buffer of %d or %d", len(buf), size, defaultMaxUDPSize)
		}
	})
}

func TestMatchZone(t *testing.T) {
	origins := []string{"iot.example.", "b.iot.example.", "example.org."}
	for qname, want := range map[string]string{
		"iot.example.":                 "iot.example.",
		"a.iot.example.":               "iot.example.",
		"x.b.iot.example.":             "b.iot.example.",
		"b.iot.example.":               "b.iot.example.",
		"xiot.example.":                "",
		"example.":                     "",
		"sensor7._device.example.org.": "example.org.",
		".":                            "",
		`a\.iot.example.`:              "",             // the label "a.iot" under example.
		`a\\.iot.example.`:             "iot.example.", // the label "a\" under iot.example.
		`a\\\.iot.example.`:            "",
	} {
		if got := matchZone(origins, qname); got != want {
			t.Errorf("matchZone(%q) = %q, want %q", qname, got, want)
		}
	}
}

// TestPackedAnswerUnderPrometheus: behind the prometheus plugin's recorder the bytes
// still go out as they are, and the recorder gets the RCODE and the size it reports.
// Behind another wrapper (log's recorder) the answer is written as a message.
func TestPackedAnswerUnderPrometheus(t *testing.T) {
	d, _, _, _ := testDeviceid(t)
	for _, tc := range []struct {
		qname string
		rcode int
	}{{"sensor7._device.iot.example.", dns.RcodeSuccess}, {"nosuch._device.iot.example.", dns.RcodeNameError}} {
		q := new(dns.Msg)
		q.SetQuestion(tc.qname, dns.TypeTLSA)
		q.SetEdns0(1232, false)
		raw := &rawWriter{ResponseWriter: &test.ResponseWriter{}}
		rec := metrics.NewRecorder(request.NewScrubWriter(q, raw))
		if _, err := d.ServeDNS(context.Background(), rec, q); err != nil {
			t.Fatal(err)
		}
		if raw.buf == nil || raw.msg != nil || rec.Rcode != tc.rcode || rec.Len != len(raw.buf) {
			t.Errorf("%s: bytes %d, message %v, recorded rcode %d size %d", tc.qname, len(raw.buf), raw.msg != nil, rec.Rcode, rec.Len)
		}
		raw = &rawWriter{ResponseWriter: &test.ResponseWriter{}}
		logRec := dnstest.NewRecorder(metrics.NewRecorder(request.NewScrubWriter(q, raw)))
		if _, err := d.ServeDNS(context.Background(), logRec, q); err != nil {
			t.Fatal(err)
		}
		if logRec.Msg == nil || logRec.Msg.Rcode != tc.rcode {
			t.Errorf("%s: behind two recorders the answer is not a message: %v", tc.qname, logRec.Msg)
		}
	}
}
