package deviceid

import (
	"context"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// addBigDevice publishes a device with n credentials, each with a certificate: with
// record.MaxCredentials about 36 KB of TLSA records.
func addBigDevice(t testing.TB, d *Deviceid, name string, n int) {
	t.Helper()
	ca, err := testenv.NewCA("big")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rec := &record.Device{Version: 1}
	for range n {
		key, _ := testenv.NewDeviceKey()
		der, err := ca.Issue(name+"._device.iot.example", key.Public(), now.AddDate(1, 0, 0))
		if err != nil {
			t.Fatal(err)
		}
		rec.Credentials = append(rec.Credentials, record.Credential{Cert: der, Status: "active"})
	}
	if err := rec.Validate(); err != nil {
		t.Fatal(err)
	}
	z := d.zones["iot.example."]
	owner, _ := record.DeviceOwner(name, "iot.example.")
	rr, ok := z.cfg.deviceRRset(rec, now)
	if !ok {
		t.Fatal("the big device does not fit an answer")
	}
	z.write.Lock()
	z.put(z.current(), owner, rr, true, nil)
	z.write.Unlock()
}

// TestUDPSizeCap: over UDP an answer is at most max_udp_size (default 1232) whatever
// buffer the client offers, 512 without EDNS; a larger one goes out with TC, no records
// and the OPT record, and the OPT advertises min(client's, ours). TCP is not limited.
// Found by the attack review: a 53-byte query got a 32,053-byte answer over UDP.
func TestUDPSizeCap(t *testing.T) {
	d := signedDeviceid(t, true, dns.ECDSAP256SHA256)
	addBigDevice(t, d, "big", record.MaxCredentials)
	truncated := func() float64 { return testutil.ToFloat64(udpTruncated.WithLabelValues("iot.example.")) }
	for _, tc := range []struct {
		name      string
		qname     string
		qtype     uint16
		edns      uint16 // 0: no EDNS
		tcp       bool
		limit     int    // the largest answer allowed
		advertise uint16 // the OPT's UDP size in the answer
		truncated bool
	}{
		{name: "65000 over UDP", qname: "big._device.iot.example.", qtype: dns.TypeTLSA, edns: 65000, limit: 1232, advertise: 1232, truncated: true},
		{name: "4096 over UDP", qname: "big._device.iot.example.", qtype: dns.TypeTLSA, edns: 4096, limit: 1232, advertise: 1232, truncated: true},
		{name: "no EDNS over UDP", qname: "big._device.iot.example.", qtype: dns.TypeTLSA, limit: 512, truncated: true},
		{name: "65000 over TCP", qname: "big._device.iot.example.", qtype: dns.TypeTLSA, edns: 65000, tcp: true, limit: dns.MaxMsgSize, advertise: 1232},
		{name: "small answer, big buffer", qname: "sensor7._device.iot.example.", qtype: dns.TypeTLSA, edns: 65000, limit: 1232, advertise: 1232},
		{name: "small buffer advertised back", qname: "sensor7._device.iot.example.", qtype: dns.TypeTLSA, edns: 1000, limit: 1000, advertise: 1000},
		{name: "apex DNSKEY, 65000 over UDP", qname: "iot.example.", qtype: dns.TypeDNSKEY, edns: 65000, limit: 1232, advertise: 1232},
		{name: "denial, 65000 over UDP", qname: "nosuch._device.iot.example.", qtype: dns.TypeTLSA, edns: 65000, limit: 1232, advertise: 1232},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := new(dns.Msg)
			q.SetQuestion(tc.qname, tc.qtype)
			if tc.edns != 0 {
				q.SetEdns0(tc.edns, true)
			}
			qlen := q.Len()
			raw := &rawWriter{ResponseWriter: &test.ResponseWriter{TCP: tc.tcp}}
			before := truncated()
			if _, err := d.ServeDNS(context.Background(), request.NewScrubWriter(q, raw), q); err != nil {
				t.Fatal(err)
			}
			m, n := raw.msg, len(raw.buf)
			if m == nil {
				m = new(dns.Msg)
				if err := m.Unpack(raw.buf); err != nil {
					t.Fatal(err)
				}
			} else {
				b, _ := m.Pack()
				n = len(b)
			}
			if n > tc.limit {
				t.Errorf("%d-byte answer to a %d-byte query (%.0f×), allowed %d", n, qlen, float64(n)/float64(qlen), tc.limit)
			}
			if m.Truncated != tc.truncated {
				t.Errorf("TC %v, want %v", m.Truncated, tc.truncated)
			}
			if m.Truncated && len(m.Answer)+len(m.Ns) != 0 {
				t.Errorf("a truncated answer with %d records", len(m.Answer)+len(m.Ns))
			}
			if !m.Truncated && len(m.Answer)+len(m.Ns) == 0 {
				t.Error("an answer without records")
			}
			if o := m.IsEdns0(); (o != nil) != (tc.edns != 0) || o != nil && o.UDPSize() != tc.advertise {
				t.Errorf("OPT %v, want UDP size %d", o, tc.advertise)
			}
			if got := truncated() - before; got != map[bool]float64{true: 1}[tc.truncated] {
				t.Errorf("udp_truncated_total +%v", got)
			}
		})
	}
}

// TestUDPSizeCapMessagePath: behind a plugin that wraps the writer (log), where the
// answer is handed on as a message, the server's ScrubWriter truncates at our size too.
func TestUDPSizeCapMessagePath(t *testing.T) {
	d := signedDeviceid(t, true, dns.ECDSAP256SHA256)
	addBigDevice(t, d, "big", record.MaxCredentials)
	q := new(dns.Msg)
	q.SetQuestion("big._device.iot.example.", dns.TypeTLSA)
	q.SetEdns0(65000, true)
	out := &rawWriter{ResponseWriter: &test.ResponseWriter{}}
	rec := dnstest.NewRecorder(request.NewScrubWriter(q, out))
	if _, err := d.ServeDNS(context.Background(), rec, q); err != nil {
		t.Fatal(err)
	}
	b, err := out.msg.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1232 || !out.msg.Truncated || len(out.msg.Answer) != 0 || out.msg.IsEdns0().UDPSize() != 1232 {
		t.Errorf("%d bytes, TC %v, %d records, OPT %v", len(b), out.msg.Truncated, len(out.msg.Answer), out.msg.IsEdns0())
	}
}
