package test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/embedetcd"
	"github.com/deviceid/deviceid/internal/testenv"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// sitesDevice is a device record with one SPKI-only credential (a 3 1 1 record), the
// same key for every device: the figures do not depend on it.
var sitesDevice = func() string {
	key, err := testenv.NewDeviceKey()
	if err != nil {
		panic(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	return fmt.Sprintf(`{"version": 1, "credentials": [{"spki": %q, "status": "active", "revoked_at": null}]}`, base64.StdEncoding.EncodeToString(spki))
}()

// putDevices writes devices first..first+n-1 named prefix<i>, 128 to a transaction.
func putDevices(tb testing.TB, cli *clientv3.Client, prefix string, first, n int) {
	tb.Helper()
	for i := first; i < first+n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(i+128, first+n); j++ {
			ops = append(ops, clientv3.OpPut(deviceKey(fmt.Sprintf("%s%d", prefix, j)), sitesDevice))
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkSites: the figures of "Replicas across sites" in BENCHMARKS.md (make
// bench-sites; DEVICEID_SITES_N devices, default 100,000): a replica's cold start and
// its restart from a snapshot (time to ready and to fully signed, bytes read from
// etcd, signatures made, the snapshot's size), write-to-answer at a replica 150 ms from
// etcd, and the catch-up after a cut (DEVICEID_SITES_CUT, default 10s) during which
// 10,000 changes were made.
func BenchmarkSites(b *testing.B) {
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("DEVICEID_SITES_N")); err == nil {
		n = v
	}
	etcd := testenv.StartEtcd(b, func(c *embedetcd.Config) {
		if n > 2_000_000 {
			c.QuotaBytes = 16 << 30 // beyond etcd's default of 2 GiB
		}
	})
	cli := etcd.Client()
	putDevices(b, cli, "dev", 0, n)
	link := startProxy(b, strings.TrimPrefix(etcd.URL(), "http://"))
	ksk := genZoneKey(b, b.TempDir(), dns.ECDSAP256SHA256, true)
	snapshots := b.TempDir()
	corefile := func(endpoint string) string {
		return strings.Replace(signedCorefileTTL(dnsPort(b), endpoint, 60, ksk), "    }\n}", "        snapshot "+snapshots+" 2s\n    }\n}", 1)
	}
	signatures := func() float64 { return gauge(b, "coredns_deviceid_signatures_total", zone) }
	start := func(endpoint, what string) *testenv.CoreDNS {
		read0, sigs0, t0 := link.read.Load(), signatures(), time.Now()
		c := testenv.StartCoreDNS(b, corefile(endpoint))
		waitLoadedWithin(b, c, 10*time.Minute)
		ready := time.Since(t0)
		testenv.Within(b, time.Hour, "fully signed", func() error {
			if v, _ := metric(b, "coredns_deviceid_signed_ahead", zone); v != 1 {
				return fmt.Errorf("signed_ahead %v", v)
			}
			return nil
		})
		signed := time.Since(t0)
		mib := float64(link.read.Load()-read0) / (1 << 20)
		b.Logf("%s, %d devices: ready in %.2f s, fully signed in %.2f s, %.1f MiB read from etcd, %.0f signatures made",
			what, n, ready.Seconds(), signed.Seconds(), mib, signatures()-sigs0)
		b.ReportMetric(ready.Seconds(), what+"-ready-s")
		b.ReportMetric(signed.Seconds(), what+"-signed-s")
		b.ReportMetric(mib, what+"-MiB-read")
		return c
	}

	cold := start("http://"+link.addr(), "cold")
	// The snapshot of the signed zone: written at the tick after the first signing pass.
	signedAt := time.Now().Add(-time.Second)
	file := filepath.Join(snapshots, strings.TrimSuffix(zone, ".")+".snapshot")
	testenv.Within(b, time.Hour, "the snapshot of the signed zone written", func() error {
		if info, err := os.Stat(file); err != nil || info.ModTime().Before(signedAt) {
			return errors.New("not yet")
		}
		return nil
	})
	cold.Stop()
	info, err := os.Stat(file)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("snapshot: %.1f MiB, %.0f bytes a device", float64(info.Size())/(1<<20), float64(info.Size())/float64(n))
	b.ReportMetric(float64(info.Size())/float64(n), "snapshot-B/device")
	warm := start("http://"+link.addr(), "snapshot")
	warm.Stop()

	// A replica 150 ms (± 20) from etcd each way.
	x := testenv.StartToxiproxy(b)
	wan := x.Proxy(b, "etcd", strings.TrimPrefix(etcd.URL(), "http://"))
	for _, s := range []string{"downstream", "upstream"} {
		if _, err := wan.AddToxic("latency-"+s, "latency", s, 1, toxiproxy.Attributes{"latency": 150, "jitter": 20}); err != nil {
			b.Fatal(err)
		}
	}
	c := testenv.StartCoreDNS(b, corefile("http://"+wan.Listen))
	waitLoadedWithin(b, c, 10*time.Minute)
	var lat []time.Duration
	for i := range 200 {
		name := fmt.Sprintf("wan%d", i)
		t0 := time.Now()
		putDevices(b, cli, "wan", i, 1)
		for len(tlsaSet(c.Query(b, name+"._device."+zone, dns.TypeTLSA))) == 0 {
			time.Sleep(2 * time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.Logf("write to signed answer at a replica 150 ms away: p50 %s, p99 %s (200 writes, one at a time)", p50.Round(time.Millisecond), p99.Round(time.Millisecond))
	b.ReportMetric(float64(p50.Milliseconds()), "wan-p50-ms")
	b.ReportMetric(float64(p99.Milliseconds()), "wan-p99-ms")
	pause := gauge(b, "coredns_deviceid_snapshot_pause_seconds", zone)
	b.Logf("the last snapshot held the etcd updates for %.0f ms", pause*1000)
	b.ReportMetric(pause*1000, "snapshot-pause-ms")

	// The site cut off while 10,000 changes are made; then the catch-up.
	if err := wan.Disable(); err != nil {
		b.Fatal(err)
	}
	putDevices(b, cli, "cut", 0, 10000)
	cut := 10 * time.Second
	if d, err := time.ParseDuration(os.Getenv("DEVICEID_SITES_CUT")); err == nil {
		cut = d
	}
	time.Sleep(cut)
	t0 := time.Now()
	if err := wan.Enable(); err != nil {
		b.Fatal(err)
	}
	for len(tlsaSet(c.Query(b, "cut9999._device."+zone, dns.TypeTLSA))) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	catchUp := time.Since(t0)
	b.Logf("catch-up after a %s cut with 10,000 changes: the last served %s after the link returned", cut, catchUp.Round(time.Millisecond))
	b.ReportMetric(catchUp.Seconds(), "catchup-s")
}
