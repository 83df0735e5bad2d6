package test

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// fastPackets sums coredns_deviceid_fastpath_packets_total of path over servers.
func fastPackets(t testing.TB, path string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "coredns_deviceid_fastpath_packets_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "path" && l.GetValue() == path {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// waitFastPath waits until n fast path sockets are open on c's address: they open once
// the server reads its own socket, just after the server started (a reload's old ones
// close after the new ones open).
func waitFastPath(t testing.TB, c *testenv.CoreDNS, n int) {
	t.Helper()
	testenv.Within(t, testenv.PollTimeout, "fast path open", func() error {
		mfs, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			return err
		}
		for _, mf := range mfs {
			if mf.GetName() != "coredns_deviceid_fastpath_sockets" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "server" && l.GetValue() == "dns://"+c.UDP {
						if got := m.GetGauge().GetValue(); got != float64(n) {
							return fmt.Errorf("%v sockets, want %d", got, n)
						}
						return nil
					}
				}
			}
		}
		return fmt.Errorf("no coredns_deviceid_fastpath_sockets{server=%q}", "dns://"+c.UDP)
	})
}

// sensor7Zone is etcd holding the test zone with one device, sensor7, active.
func sensor7Zone(t testing.TB) *testenv.Etcd {
	t.Helper()
	etcd, cli, ca := testbed(t)
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(newDevice(t, ca, "sensor7", time.Now().AddDate(1, 0, 0)), "active")))
	return etcd
}

// exchangeRaw sends the packet q over UDP to addr and returns the answer's bytes.
func exchangeRaw(t testing.TB, addr string, q []byte) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 65535)
	for {
		n, err := c.Read(b)
		if err != nil {
			t.Fatalf("%x: %v", q, err)
		}
		if n >= 2 && binary.BigEndian.Uint16(b) == binary.BigEndian.Uint16(q) {
			return b[:n]
		}
	}
}

// TestFastPathIdentical: every kind of query the DNS tests ask, sent to a server with
// the fast path, is answered byte for byte as the framework answers it. The framework's
// answer is the same query with one byte after it: the server ignores trailing bytes,
// and the fast path hands such a packet to the chain.
func TestFastPathIdentical(t *testing.T) {
	t.Run("signed", func(t *testing.T) {
		fastPathIdentical(t, genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true), genZoneKey(t, t.TempDir(), dns.ED25519, false))
	})
	t.Run("unsigned", func(t *testing.T) { fastPathIdentical(t) })
}

func fastPathIdentical(t *testing.T, keys ...zoneKey) {
	etcd, cli, ca := testbed(t)
	year := time.Now().AddDate(1, 0, 0)
	active := newDevice(t, ca, "sensor7", year)
	revoked := newDevice(t, ca, "sensor8", year)
	multi := newDevice(t, ca, "c90a.airquality", year)
	var fleet []string // more than 1232 bytes
	for range 4 {
		fleet = append(fleet, credentialJSON(newDevice(t, ca, "fleet", year), "active"))
	}
	aki := record.KeyID(ca.Cert.SubjectKeyId)
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(active, "active")))
	testenv.Put(t, cli, deviceKey("sensor8"), deviceJSON(credentialJSON(revoked, "revoked")))
	testenv.Put(t, cli, deviceKey("c90a.airquality"), deviceJSON(credentialJSON(multi, "active")))
	testenv.Put(t, cli, deviceKey("fleet"), deviceJSON(fleet...))
	testenv.Put(t, cli, "/deviceid/iot.example/ca/"+aki, string(ca.PEM()))
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefileWith(port, etcd.URL(), 60, []string{"fastpath 2"}, keys...))
	waitLoaded(t, c)
	waitFastPath(t, c, 2)

	names := []string{zone, "sensor7._device." + zone, "SeNsOr7._DeViCe.IoT.example.", "sensor8._device." + zone,
		"c90a.airquality._device." + zone, "airquality._device." + zone, "_device." + zone, "fleet._device." + zone,
		aki + "._ca._device." + zone, "nosuch._device." + zone, "a.b.nosuch." + zone, "other.example.", "bad\\.name._device." + zone}
	types := []uint16{dns.TypeTLSA, dns.TypeA, dns.TypeSOA, dns.TypeNS, dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY, dns.TypeNSEC, dns.TypeANY, dns.TypeDS, dns.TypeNXNAME, dns.TypeAXFR}
	type edns struct {
		on     bool
		size   uint16
		do, co bool
		cookie bool
	}
	opts := []edns{{}, {on: true, size: 512}, {on: true, size: 1232, do: true}, {on: true, size: 4096, do: true, co: true},
		{on: true, size: 65535, do: true}, {on: true, size: 1232}, {on: true, size: 300, do: true}, {on: true, size: 1232, do: true, cookie: true}}
	fast0, handed0, framework0 := fastPackets(t, "fast"), fastPackets(t, "handed"), fastPackets(t, "framework")
	asked := 0
	for _, name := range names {
		for _, qt := range types {
			for _, o := range opts {
				m := new(dns.Msg)
				m.SetQuestion(name, qt)
				m.RecursionDesired = asked%2 == 0
				m.CheckingDisabled = asked%3 == 0
				if o.on {
					m.SetEdns0(o.size, o.do)
					opt := m.IsEdns0()
					if o.co {
						opt.SetCo(true)
					}
					if o.cookie {
						opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
					}
				}
				q, err := m.Pack()
				if err != nil {
					t.Fatal(err)
				}
				what := fmt.Sprintf("%s %s %+v", name, dns.TypeToString[qt], o)
				// The framework first: a proof of nonexistence it signs is the one the
				// fast path then finds cached.
				slow := exchangeRaw(t, c.UDP, append(q, 0))
				fast := exchangeRaw(t, c.UDP, q)
				asked++
				if string(fast) != string(slow) {
					a, b := new(dns.Msg), new(dns.Msg)
					a.Unpack(fast)
					b.Unpack(slow)
					t.Errorf("%s: the fast path's answer differs from the framework's:\n%v\n%v", what, a, b)
				}
			}
		}
	}
	fast, handed := fastPackets(t, "fast")-fast0, fastPackets(t, "handed")-handed0
	t.Logf("%d queries: %v answered by the fast path, %v handed over", asked, fast, handed)
	if handed < float64(asked) {
		t.Errorf("%v handed over, want at least the %d framework queries", handed, asked)
	}
	if fast < float64(asked)/3 {
		t.Errorf("the fast path answered %v of %d queries", fast, asked)
	}
	if f := fastPackets(t, "framework") - framework0; f != 0 {
		t.Errorf("%v answers took the server's own socket, want every packet steered to the fast path", f)
	}
}

// TestFastPathOverBudget: over the denial budget the fast path answers a fresh name
// with TC, as the framework does, and signs nothing.
func TestFastPathOverBudget(t *testing.T) {
	etcd := sensor7Zone(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ED25519, true)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefileWith(port, etcd.URL(), 60, []string{"fastpath 1", "denial_budget 1"}, ksk))
	waitLoaded(t, c)
	waitFastPath(t, c, 1)
	pack := func(name string) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeTLSA)
		m.SetEdns0(1232, true)
		q, _ := m.Pack()
		return q
	}
	truncated := 0
	for i := range 20 {
		exchangeRaw(t, c.UDP, pack("sensor7._device."+zone)) // names that exist are asked: the budget holds
		q := pack(fmt.Sprintf("fresh%d._device.%s", i, zone))
		fast := exchangeRaw(t, c.UDP, q)
		m := new(dns.Msg)
		if err := m.Unpack(fast); err != nil {
			t.Fatal(err)
		}
		if !m.Truncated {
			continue // a token of the budget: signed by the chain
		}
		truncated++
		if slow := exchangeRaw(t, c.UDP, append(q, 0)); string(slow) != string(fast) {
			t.Errorf("%s over the budget: the fast path's answer %x, the framework's %x", m.Question[0].Name, fast, slow)
		}
	}
	if truncated < 10 {
		t.Errorf("%d of 20 fresh names truncated at a budget of one signature a second", truncated)
	}
}

// TestFastPathRefused: a block with a plugin that must see every query refuses the
// fast path at startup, naming the plugin.
func TestFastPathRefused(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	for _, plugin := range []string{"log", "acl", "cache"} {
		_, err := testenv.TryStartCoreDNS(t, fmt.Sprintf(`iot.example:%d {
    bind 127.0.0.1
    %s
    deviceid {
        endpoint %s
        fastpath
    }
}`, dnsPort(t), plugin, etcd.URL()))
		if err == nil || !strings.Contains(err.Error(), "plugin "+plugin+" is in the block") {
			t.Errorf("%s in the block: %v, want the fast path refused", plugin, err)
		}
	}
}

// TestFastPathOneBlockPerAddress: two blocks on one address cannot both have the fast
// path (the server has one UDP writer decorator): the second is refused.
func TestFastPathOneBlockPerAddress(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	port := dnsPort(t)
	block := func(zone string) string {
		return fmt.Sprintf(`%s:%d {
    bind 127.0.0.1
    deviceid {
        endpoint %s
        fastpath
    }
}
`, zone, port, etcd.URL())
	}
	_, err := testenv.TryStartCoreDNS(t, block("iot.example")+block("other.example"))
	if err == nil || !strings.Contains(err.Error(), "one block per address") {
		t.Errorf("two blocks with the fast path on one address: %v", err)
	}
}
