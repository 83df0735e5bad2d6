package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// gauge reads a gauge or a counter of this process's metrics (CoreDNS runs here) for
// zone; a counter not counted yet is 0.
func gauge(t testing.TB, name, zone string) float64 {
	t.Helper()
	v, ok := metric(t, name, zone)
	if !ok && !strings.HasSuffix(name, "_total") {
		t.Fatalf("no metric %s{zone=%q}", name, zone)
	}
	return v
}

// metric reads a gauge or a counter for zone, and reports whether it is there.
func metric(t testing.TB, name, zone string) (float64, bool) {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "zone" && l.GetValue() == zone {
					if c := m.GetCounter(); c != nil {
						return c.GetValue(), true
					}
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// sinceGauge is how long ago the Unix time a gauge holds was.
func sinceGauge(t testing.TB, name string) time.Duration {
	return time.Since(time.Unix(0, int64(gauge(t, name, zone)*1e9)))
}

// TestReplicaAcrossWAN: a replica follows etcd through toxiproxy as a site 150 ms
// away would (latency with jitter both ways, a bandwidth limit), through resets and
// stalled connections, and through a cut of the link during which etcd compacts past
// the replica's revision: unbound, validating from the zone's DS, gets a signed
// answer at every query throughout, the lag metrics say when the link went down and
// come back, and every write made meanwhile is served after the heal.
func TestReplicaAcrossWAN(t *testing.T) {
	etcd, cli, ca := testbed(t)
	ctx := t.Context()
	x := testenv.StartToxiproxy(t)
	wan := x.Proxy(t, "etcd", strings.TrimPrefix(etcd.URL(), "http://"))
	for _, toxic := range []struct {
		name, kind, stream string
		attrs              toxiproxy.Attributes
	}{
		{"latency-down", "latency", "downstream", toxiproxy.Attributes{"latency": 150, "jitter": 50}},
		{"latency-up", "latency", "upstream", toxiproxy.Attributes{"latency": 150, "jitter": 50}},
		{"bandwidth", "bandwidth", "downstream", toxiproxy.Attributes{"rate": 256}}, // KB/s
	} {
		if _, err := wan.AddToxic(toxic.name, toxic.kind, toxic.stream, 1, toxic.attrs); err != nil {
			t.Fatal(err)
		}
	}
	year := time.Now().AddDate(1, 0, 0)
	put := func(name string) {
		testenv.Put(t, cli, deviceKey(name), deviceJSON(credentialJSON(newDevice(t, ca, name, year), "active")))
	}
	put("always")
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefileTTL(port, "http://"+wan.Listen, 1, ksk))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)

	// Validated answers all along: a device that is always there, and one never.
	probe := startProber(100*time.Millisecond, func(int) (int, []string) {
		var failed []string
		for _, q := range []struct {
			name   string
			exists bool
		}{{"always._device." + zone, true}, {"never._device." + zone, false}} {
			// (A name that does not exist is NOERROR without records: compact denial.)
			m, err := resolve(unbound, "udp", q.name, dns.TypeTLSA)
			if err != nil || m.Rcode != dns.RcodeSuccess || !m.AuthenticatedData || (len(tlsaSet(m)) > 0) != q.exists {
				failed = append(failed, fmt.Sprintf("%s %s: %v %v", time.Now().Format("15:04:05.000"), q.name, m, err))
			}
		}
		return 2, failed
	})
	served := func(what string, names []string, present bool) {
		t.Helper()
		testenv.Within(t, time.Minute, what, func() error {
			for _, n := range names {
				r := c.Query(t, n+"._device."+zone, dns.TypeTLSA)
				if got := r.Rcode == dns.RcodeSuccess && len(tlsaSet(r)) > 0; got != present {
					return fmt.Errorf("%s: %s (contact %s ago, event %s ago, behind %v)", n, dns.RcodeToString[r.Rcode], sinceGauge(t, "coredns_deviceid_etcd_last_contact_timestamp_seconds"), sinceGauge(t, "coredns_deviceid_etcd_last_event_timestamp_seconds"), gauge(t, "coredns_deviceid_etcd_revisions_behind", zone))
				}
			}
			return nil
		})
	}
	batch := func(prefix string, n int) []string {
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("%s%d", prefix, i))
			put(names[i])
		}
		return names
	}

	// Writes over the slow link.
	slow := batch("slow", 20)
	served("the writes over the WAN", slow, true)

	// Connections reset, then stalled and closed.
	for _, toxic := range []struct {
		kind  string
		attrs toxiproxy.Attributes
	}{{"reset_peer", toxiproxy.Attributes{"timeout": 300}}, {"timeout", toxiproxy.Attributes{"timeout": 2000}}} {
		if _, err := wan.AddToxic(toxic.kind, toxic.kind, "downstream", 1, toxic.attrs); err != nil {
			t.Fatal(err)
		}
		names := batch(strings.ReplaceAll(toxic.kind, "_", "-"), 10)
		time.Sleep(3 * time.Second)
		if err := wan.RemoveToxic(toxic.kind); err != nil {
			t.Fatal(err)
		}
		served("the writes through "+toxic.kind, names, true)
	}

	// The site cut off; meanwhile devices come and go, and etcd compacts past the
	// replica's revision.
	reloads := gauge(t, "coredns_deviceid_watch_restarts_total", zone)
	if err := wan.Disable(); err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	during := batch("cut", 50)
	for _, n := range slow[:10] {
		if _, err := cli.Delete(ctx, deviceKey(n)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cli.Get(ctx, "compact-here")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	testenv.Within(t, time.Minute, "the lag metrics see the link down", func() error {
		if d := sinceGauge(t, "coredns_deviceid_etcd_last_contact_timestamp_seconds"); d < 2*5*time.Second {
			return fmt.Errorf("last contact %s ago", d)
		}
		return nil
	})
	t.Logf("cut off for %s", time.Since(cutAt).Round(time.Second))
	if err := wan.Enable(); err != nil {
		t.Fatal(err)
	}
	served("the writes during the cut", during, true)
	served("the deletions during the cut", slow[:10], false)
	testenv.Within(t, time.Minute, "the lag metrics see the link up and the data current", func() error {
		if d := sinceGauge(t, "coredns_deviceid_etcd_last_contact_timestamp_seconds"); d > 10*time.Second {
			return fmt.Errorf("last contact %s ago", d)
		}
		if n := gauge(t, "coredns_deviceid_etcd_revisions_behind", zone); n != 0 {
			return fmt.Errorf("%v revisions behind", n)
		}
		return nil
	})
	if n := gauge(t, "coredns_deviceid_watch_restarts_total", zone); n <= reloads {
		t.Errorf("no full load after etcd compacted past the replica's revision (%v watch restarts before, %v after)", reloads, n)
	}
	if d := sinceGauge(t, "coredns_deviceid_etcd_last_event_timestamp_seconds"); d > time.Minute {
		t.Errorf("the last event from etcd %s ago", d)
	}
	asked, failures := probe.done()
	if len(failures) > 0 {
		t.Errorf("%d of %d validated answers failed, e.g. %v", len(failures), asked, failures[:min(5, len(failures))])
	}
}

// etcdWatchers is how many watchers the etcd of this process holds.
func etcdWatchers(t testing.TB) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("etcd exports no etcd_debugging_mvcc_watcher_total")
	return 0
}

// TestReplicasBehindGRPCProxy: three replicas follow etcd through one etcd grpc-proxy
// (etcd grpc-proxy start), the documented way to put a site's replicas on the
// cluster: the proxy coalesces their watches, so etcd holds one watcher for them
// all; every replica serves the writes, and hears from etcd (progress) through it.
func TestReplicasBehindGRPCProxy(t *testing.T) {
	etcd, cli, ca := testbed(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "etcd")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("etcd's own binary: %v (make bin/etcd)", err)
	}
	dir := t.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	startDaemon(t, "(make bin/etcd)", dir, bin, "grpc-proxy", "start", "--endpoints", strings.TrimPrefix(etcd.URL(), "http://"), "--listen-addr", listen)
	testenv.Eventually(t, "the grpc-proxy answers", func() error {
		c := testenv.Client(t, "http://"+listen)
		defer c.Close()
		_, err := c.Get(t.Context(), "probe")
		return err
	})
	year := time.Now().AddDate(1, 0, 0)
	put := func(name string) {
		testenv.Put(t, cli, deviceKey(name), deviceJSON(credentialJSON(newDevice(t, ca, name, year), "active")))
	}
	put("first")
	before := etcdWatchers(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	var replicas []*testenv.CoreDNS
	for range 3 {
		c := testenv.StartCoreDNS(t, signedCorefileTTL(dnsPort(t), "http://"+listen, 1, ksk))
		waitLoaded(t, c)
		replicas = append(replicas, c)
	}
	for i := range 5 {
		put(fmt.Sprintf("next%d", i))
	}
	testenv.Eventually(t, "every replica serves the writes", func() error {
		for i, c := range replicas {
			for j := range 5 {
				if r := c.Query(t, fmt.Sprintf("next%d._device.%s", j, zone), dns.TypeTLSA); len(tlsaSet(r)) == 0 {
					return fmt.Errorf("replica %d: next%d %s", i, j, dns.RcodeToString[r.Rcode])
				}
			}
		}
		return nil
	})
	if n := etcdWatchers(t) - before; n != 1 {
		t.Errorf("etcd holds %v watchers for 3 replicas behind one proxy, want 1", n)
	}
	// The progress notifications come through the proxy: the lag metrics stay fresh.
	time.Sleep(2 * 5 * time.Second)
	if d := sinceGauge(t, "coredns_deviceid_etcd_last_contact_timestamp_seconds"); d > 7*time.Second {
		t.Errorf("behind the proxy, the last contact with etcd was %s ago", d)
	}
}

// TestReplicaRestartsFromSnapshot: a replica that keeps a snapshot and restarts while
// its site is cut off from etcd serves at once from it, every answer validated; when
// the link returns it follows etcd from the snapshot's revision.
func TestReplicaRestartsFromSnapshot(t *testing.T) {
	etcd, cli, ca := testbed(t)
	link := startProxy(t, strings.TrimPrefix(etcd.URL(), "http://"))
	year := time.Now().AddDate(1, 0, 0)
	put := func(name string) {
		testenv.Put(t, cli, deviceKey(name), deviceJSON(credentialJSON(newDevice(t, ca, name, year), "active")))
	}
	for i := range 50 {
		put(fmt.Sprintf("before%d", i))
	}
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	snapshots := t.TempDir()
	corefile := func(port int) string {
		return strings.Replace(signedCorefileTTL(port, "http://"+link.addr(), 1, ksk), "    }\n}", "        snapshot "+snapshots+" 1s\n    }\n}", 1)
	}
	first := testenv.StartCoreDNS(t, corefile(dnsPort(t)))
	waitLoaded(t, first)
	resp, err := cli.Get(t.Context(), "x")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the snapshot written", func() error {
		if got, _ := metric(t, "coredns_deviceid_snapshot_revision", zone); got < float64(resp.Header.Revision) {
			return fmt.Errorf("snapshot of revision %v, want %d", got, resp.Header.Revision)
		}
		return nil
	})
	first.Stop()

	link.cut()
	port := dnsPort(t)
	second := testenv.StartCoreDNS(t, corefile(port))
	waitLoaded(t, second)
	unbound := startUnbound(t, port, ksk.ds)
	for _, name := range []string{"before0", "before49"} {
		m, err := resolve(unbound, "udp", name+"._device."+zone, dns.TypeTLSA)
		if err != nil || m.Rcode != dns.RcodeSuccess || !m.AuthenticatedData || len(tlsaSet(m)) == 0 {
			t.Errorf("%s from the snapshot, etcd out of reach: %v %v", name, m, err)
		}
	}
	link.restore()
	put("after")
	testenv.Eventually(t, "a write after the restart", func() error {
		if r := second.Query(t, "after._device."+zone, dns.TypeTLSA); len(tlsaSet(r)) == 0 {
			return fmt.Errorf("after: %s", dns.RcodeToString[r.Rcode])
		}
		return nil
	})
}
