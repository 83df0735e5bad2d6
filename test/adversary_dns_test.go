package test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// The DNS side of the attack review (docs/security.md): CoreDNS must not be a
// reflector. Over UDP no answer is larger than 1,232 bytes whatever buffer the query
// offers, and the responses to one client prefix are rate limited (RRL).

// advDNSQuery makes a query as an attacker would: DO set, the largest buffer offered.
func advDNSQuery(name string, qtype uint16, bufsize uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	if bufsize != 0 {
		m.SetEdns0(bufsize, true)
	}
	return m
}

// advDNSExchange sends q over UDP from local (nil: any) to addr and returns the reply
// and its size on the wire, or a nil reply after timeout.
func advDNSExchange(t testing.TB, local *net.UDPAddr, addr string, q *dns.Msg, timeout time.Duration) (*dns.Msg, int) {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteToUDP(b, raddr); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 65535)
	for {
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil {
			return nil, 0
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) == nil && r.Id == q.Id {
			return r, n
		}
	}
}

// advDNSZone starts etcd and a signed CoreDNS (a KSK and a ZSK, so the DNSKEY RRset is
// as large as it gets) with the Corefile changed by edit (nil: as signedCorefile makes
// it), serving sensor7 (one certificate), pair (two), and big (record.MaxCredentials:
// an answer of about 36 KB). It returns CoreDNS and big's records.
func advDNSZone(t *testing.T, edit func(corefile string) string) (*testenv.CoreDNS, []string) {
	t.Helper()
	etcd, cli, ca := testbed(t)
	year := time.Now().AddDate(1, 0, 0)
	var big, bigWant []string
	for range record.MaxCredentials {
		d := newDevice(t, ca, "big", year)
		big = append(big, credentialJSON(d, "active"))
		bigWant = append(bigWant, d.ee(), d.discovery())
	}
	testenv.Put(t, cli, deviceKey("big"), deviceJSON(big...))
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(newDevice(t, ca, "sensor7", year), "active")))
	testenv.Put(t, cli, deviceKey("pair"), deviceJSON(credentialJSON(newDevice(t, ca, "pair", year), "active"),
		credentialJSON(newDevice(t, ca, "pair", year), "active")))
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	zsk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, false)
	corefile := signedCorefile(dnsPort(t), etcd.URL(), ksk, zsk)
	if edit != nil {
		corefile = edit(corefile)
	}
	c := testenv.StartCoreDNS(t, corefile)
	waitLoaded(t, c)
	return c, bigWant
}

// TestAdversaryDNSAmplification: a query offering a 65,000-byte buffer over UDP for a
// device with 64 certificates (about 36 KB of records) gets at most 1,232 bytes, with TC
// and no records, and the whole answer over TCP; no answer over UDP, of any kind, is
// larger than 1,232 bytes. Before the fix, a 53-byte query got 32,053 bytes (600×).
func TestAdversaryDNSAmplification(t *testing.T) {
	c, bigWant := advDNSZone(t, nil) // the defaults: no option in the Corefile
	bigName := "big._device.iot.example."

	q := advDNSQuery(bigName, dns.TypeTLSA, 65000)
	r, n := advDNSExchange(t, nil, c.UDP, q, 5*time.Second)
	if r == nil {
		t.Fatal("no answer over UDP")
	}
	if n > 1232 || !r.Truncated || len(r.Answer)+len(r.Ns) != 0 || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != 1232 {
		t.Errorf("UDP, buffer 65000: %d bytes, TC %v, %d records, OPT %v; want at most 1232 bytes, TC, no records, OPT 1232",
			n, r.Truncated, len(r.Answer)+len(r.Ns), r.IsEdns0())
	}
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	full, _, err := tcp.Exchange(advDNSQuery(bigName, dns.TypeTLSA, 65000), c.TCP)
	if err != nil {
		t.Fatal(err)
	}
	fullLen := full.Len()
	if full.Truncated || !sameSet(tlsaSet(full), bigWant) || fullLen < 30000 {
		t.Errorf("TCP: TC %v, %d TLSA records of %d, %d bytes", full.Truncated, len(tlsaSet(full)), len(bigWant), fullLen)
	}
	t.Logf("big: %d bytes over TCP; over UDP %d bytes with TC for a %d-byte query", fullLen, n, q.Len())

	// Every kind of answer, the largest buffer offered: none over 1,232 bytes.
	var worst struct {
		what       string
		q, r       int
		factor     float64
		nTruncated int
	}
	for _, a := range []struct {
		name  string
		qtype uint16
	}{
		{bigName, dns.TypeTLSA}, {bigName, dns.TypeANY}, {"sensor7._device.iot.example.", dns.TypeTLSA},
		{"pair._device.iot.example.", dns.TypeTLSA}, {"sensor7._device.iot.example.", dns.TypeA},
		{"nosuch._device.iot.example.", dns.TypeTLSA}, {"_device.iot.example.", dns.TypeTLSA},
		{zone, dns.TypeDNSKEY}, {zone, dns.TypeCDS}, {zone, dns.TypeCDNSKEY}, {zone, dns.TypeSOA},
		{zone, dns.TypeNS}, {zone, dns.TypeANY}, {zone, dns.TypeTXT},
	} {
		q := advDNSQuery(a.name, a.qtype, 65000)
		r, n := advDNSExchange(t, nil, c.UDP, q, 5*time.Second)
		if r == nil {
			t.Errorf("%s %s: no answer", a.name, dns.TypeToString[a.qtype])
			continue
		}
		what := a.name + " " + dns.TypeToString[a.qtype]
		if n > 1232 {
			t.Errorf("%s: %d bytes over UDP", what, n)
		}
		if r.Truncated {
			worst.nTruncated++
		}
		if f := float64(n) / float64(q.Len()); f > worst.factor {
			worst.what, worst.q, worst.r, worst.factor = what, q.Len(), n, f
		}
		t.Logf("%-40s query %3d bytes, answer %4d bytes (TC %v): %.1f×", what, q.Len(), n, r.Truncated, float64(n)/float64(q.Len()))
	}
	// The bound is 1,232 bytes over the query: 24.6× for the shortest query for a device
	// of iot.example with DO (a one-letter name, 50 bytes); apex answers are far smaller.
	t.Logf("largest amplification over UDP: %s, %d bytes for %d: %.1f× (%d of the answers truncated)",
		worst.what, worst.r, worst.q, worst.factor, worst.nTruncated)

	// As a client sees it: dig with a 65,000-byte buffer.
	if _, err := exec.LookPath("dig"); err != nil {
		t.Log("no dig (Debian package bind9-dnsutils): skipped")
		return
	}
	host, port, _ := net.SplitHostPort(c.UDP)
	out, err := exec.Command("dig", "@"+host, "-p", port, "+dnssec", "+bufsize=65000", "+ignore", "+norecurse", "+tries=1",
		"TLSA", bigName).CombinedOutput()
	if err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}
	size := regexp.MustCompile(`MSG SIZE\s+rcvd: (\d+)`).FindSubmatch(out)
	flags := regexp.MustCompile(`;; flags:([^;]*);`).FindSubmatch(out)
	if size == nil || flags == nil {
		t.Fatalf("dig says\n%s", out)
	}
	got, _ := strconv.Atoi(string(size[1]))
	if got > 1232 || !strings.Contains(string(flags[1]), " tc") || !strings.Contains(string(out), "udp: 1232") {
		t.Errorf("dig +bufsize=65000: %d bytes, flags%s\n%s", got, flags[1], out)
	}
	t.Logf("dig +bufsize=65000: %d bytes, flags:%s", got, flags[1])
}

// TestAdversaryDNSNormalAnswers: answers that fit are as before, whatever buffer is
// offered; the OPT advertises min(client's, 1232); without EDNS the limit is 512.
func TestAdversaryDNSNormalAnswers(t *testing.T) {
	c, _ := advDNSZone(t, nil)
	for _, tc := range []struct {
		name      string
		bufsize   uint16
		advertise uint16
		limit     int
	}{
		{"sensor7._device.iot.example.", 1232, 1232, 1232},
		{"sensor7._device.iot.example.", 4096, 1232, 1232},
		{"sensor7._device.iot.example.", 65000, 1232, 1232},
		{"sensor7._device.iot.example.", 1000, 1000, 1000},
		{"nosuch._device.iot.example.", 4096, 1232, 1232},
		{zone, 4096, 1232, 1232},
	} {
		q := advDNSQuery(tc.name, dns.TypeTLSA, tc.bufsize)
		if tc.name == zone {
			q = advDNSQuery(zone, dns.TypeDNSKEY, tc.bufsize)
		}
		r, n := advDNSExchange(t, nil, c.UDP, q, 5*time.Second)
		if r == nil {
			t.Fatalf("%s, buffer %d: no answer", tc.name, tc.bufsize)
		}
		if r.Truncated || n > tc.limit || len(r.Answer)+len(r.Ns) == 0 || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != tc.advertise {
			t.Errorf("%s, buffer %d: TC %v, %d bytes, %d records, OPT %v", tc.name, tc.bufsize, r.Truncated, n, len(r.Answer)+len(r.Ns), r.IsEdns0())
		}
		if r.Rcode != dns.RcodeSuccess {
			t.Errorf("%s: rcode %s", tc.name, dns.RcodeToString[r.Rcode])
		}
	}
	// Without EDNS (and so without DO): at most 512 bytes. sensor7's certificate does not fit.
	r, n := advDNSExchange(t, nil, c.UDP, advDNSQuery("sensor7._device.iot.example.", dns.TypeTLSA, 0), 5*time.Second)
	if r == nil || n > 512 || r.IsEdns0() != nil || (r.Truncated && len(r.Answer) != 0) {
		t.Errorf("no EDNS: %d bytes, %v", n, r)
	}
	r, n = advDNSExchange(t, nil, c.UDP, advDNSQuery(zone, dns.TypeSOA, 0), 5*time.Second)
	if r == nil || n > 512 || r.Truncated || len(r.Answer) != 1 {
		t.Errorf("SOA without EDNS: %d bytes, %v", n, r)
	}
}

// TestAdversaryDNSRateLimit: one client prefix flooding over UDP gets at most its rate
// (the burst of rate × window, then rate a second), part of the rest as TC answers
// (slip) and the rest not at all; another prefix is answered in full meanwhile, and so is
// TCP from the flooding prefix. The test clients are 127.0.1.1 and 127.0.2.1 (loopback
// is exempt by default; here only 127.0.0.1, which the helpers use, is).
//
// Nothing here depends on the machine's speed: the bound on the answers counts the time
// the flood took, and the flood is 200 queries at a rate of 5 a second, which only a
// machine that took over 39 s to handle them could answer in full (then the test says so
// and checks the bound alone).
func TestAdversaryDNSRateLimit(t *testing.T) {
	const (
		rate, window, n = 5, 1, 200
		burst           = rate * window
	)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c, _ := advDNSZone(t, func(corefile string) string {
		corefile = strings.Replace(corefile, "bind 127.0.0.1", "bind 127.0.0.1\n    prometheus "+metricsAddr, 1)
		return strings.Replace(corefile, "deviceid {", fmt.Sprintf("deviceid {\n        rrl %d window %d slip 2 exempt 127.0.0.1", rate, window), 1)
	})
	name := "sensor7._device.iot.example."

	flooder := &net.UDPAddr{IP: net.IPv4(127, 0, 1, 1)}
	other := &net.UDPAddr{IP: net.IPv4(127, 0, 2, 1)}
	server, err := net.ResolveUDPAddr("udp", c.UDP)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", flooder)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// Read the replies while the flood goes out, until none came for two seconds.
	var answered, truncated, other4 int
	var last time.Time
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			k, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			last = time.Now()
			r := new(dns.Msg)
			switch {
			case r.Unpack(buf[:k]) != nil:
				other4++
			case r.Truncated && len(r.Answer)+len(r.Ns) == 0:
				truncated++
			case !r.Truncated && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0:
				answered++
			default:
				other4++
			}
		}
	})
	for i := range n {
		q := advDNSQuery(name, dns.TypeTLSA, 1232)
		q.Id = uint16(i + 1)
		b, _ := q.Pack()
		if _, err := conn.WriteToUDP(b, server); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now()

	// Meanwhile another prefix is answered, within its own burst.
	for i := range burst - 1 {
		r, _ := advDNSExchange(t, other, c.UDP, advDNSQuery(name, dns.TypeTLSA, 1232), 5*time.Second)
		if r == nil || r.Truncated || len(r.Answer) == 0 {
			t.Errorf("query %d from another prefix during the flood: %v", i, r)
		}
	}
	// And TCP from the flooding prefix: the source address is proven there.
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: flooder.IP}}}
	if r, _, err := tcp.Exchange(advDNSQuery(name, dns.TypeTLSA, 1232), c.TCP); err != nil || r.Truncated || len(r.Answer) == 0 {
		t.Errorf("TCP from the flooding prefix: %v %v", err, r)
	}
	wg.Wait()

	end := sent // every answer counted was sent by the server before end
	if last.After(end) {
		end = last
	}
	took := end.Sub(start).Seconds()
	bound := burst + int(float64(rate)*took) + 1
	t.Logf("%d queries sent in %s from one prefix: %d answered, %d TC (slip), %d not answered, %d other; %.1f s until the last reply: at most %d answers allowed",
		n, sent.Sub(start).Round(time.Millisecond), answered, truncated, n-answered-truncated-other4, other4, took, bound)
	if answered > bound {
		t.Errorf("%d answers in %.1f s, more than the burst of %d and %d a second", answered, took, burst, rate)
	}
	if answered == 0 {
		t.Error("nothing answered from the flooding prefix, not even its burst")
	}
	if other4 != 0 {
		t.Errorf("%d replies neither answers nor TC", other4)
	}
	if bound >= n-1 {
		t.Logf("the machine took %.1f s: too slow for the flood to exceed the rate; only the bound is checked", took)
		return
	}
	if answered >= n || truncated == 0 || answered+truncated >= n {
		t.Errorf("the flood was not limited: %d answered, %d TC of %d", answered, truncated, n)
	}
	slipped, dropped := advDNSMetric(t, metricsAddr, "coredns_deviceid_rrl_slipped_total"), advDNSMetric(t, metricsAddr, "coredns_deviceid_rrl_dropped_total")
	if slipped < float64(truncated) || dropped < 1 {
		t.Errorf("metrics: slipped %v (%d TC received), dropped %v", slipped, truncated, dropped)
	}
}

// advDNSMetric scrapes one counter of the zone from the prometheus plugin at addr.
func advDNSMetric(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if l := s.Text(); strings.HasPrefix(l, name+`{zone="iot.example."}`) {
			v, err := strconv.ParseFloat(strings.Fields(l)[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}
