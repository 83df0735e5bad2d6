package test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// corefile returns a Corefile for the test zone over etcd at endpoint, with the
// Prometheus metrics on metricsAddr.
func corefile(endpoint, metricsAddr string) string {
	return fmt.Sprintf(`iot.example:0 {
    bind 127.0.0.1
    prometheus %s
    deviceid {
        endpoint %s
        ns ns1.iot.example. ns2.iot.example.
        ttl 60
    }
}`, metricsAddr, endpoint)
}

// waitLoaded waits until the server answers the zone's SOA, i.e. has loaded from etcd.
func waitLoaded(t testing.TB, c *testenv.CoreDNS) { waitLoadedWithin(t, c, testenv.PollTimeout) }

// waitLoadedWithin waits up to d for c to serve the zone (ten million devices take
// a minute).
func waitLoadedWithin(t testing.TB, c *testenv.CoreDNS, d time.Duration) {
	t.Helper()
	testenv.Within(t, d, "zone loaded", func() error {
		if r := c.Query(t, zone, dns.TypeSOA); r.Rcode != dns.RcodeSuccess {
			return fmt.Errorf("SOA rcode %s", dns.RcodeToString[r.Rcode])
		}
		return nil
	})
}

func TestServe(t *testing.T) {
	etcd, cli, ca := testbed(t)
	year := time.Now().AddDate(1, 0, 0)
	active := newDevice(t, ca, "sensor7", year)
	revoked := newDevice(t, ca, "sensor8", year)
	oldKey := newDevice(t, ca, "sensor9", year)
	newKey := newDevice(t, ca, "sensor9", year)
	expired := newDevice(t, ca, "old1", time.Now().Add(-time.Minute))
	multi := newDevice(t, ca, "c90a.airquality", year)
	aki := record.KeyID(ca.Cert.SubjectKeyId)

	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(active, "active")))
	testenv.Put(t, cli, deviceKey("sensor8"), deviceJSON(credentialJSON(revoked, "revoked")))
	testenv.Put(t, cli, deviceKey("sensor9"), deviceJSON(credentialJSON(oldKey, "revoked"), credentialJSON(newKey, "active")))
	testenv.Put(t, cli, deviceKey("old1"), deviceJSON(credentialJSON(expired, "active")))
	testenv.Put(t, cli, deviceKey("old2"), deviceJSON(fmt.Sprintf(`{"spki": %q, "status": "active", "not_after": "2020-01-01T00:00:00Z"}`,
		base64.StdEncoding.EncodeToString(active.spki()))))
	testenv.Put(t, cli, deviceKey("c90a.airquality"), deviceJSON(credentialJSON(multi, "active")))
	testenv.Put(t, cli, "/deviceid/iot.example/ca/"+aki, string(ca.PEM()))
	// Invalid records next to the valid ones: each skipped, none stops the zone.
	invalid := map[string]string{
		deviceKey("bad1"):     `this is not json`,
		deviceKey("bad2"):     `{"version": "one", "credentials": []}`,
		deviceKey("bad3"):     `{"version": 1, "credentials": [{"cert": "!!not base64!!", "status": "active"}]}`,
		deviceKey("bad4"):     `{"version": 1, "credentials": [{"cert": "AAECAw==", "status": "active"}]}`,
		deviceKey("Bad_Name"): deviceJSON(credentialJSON(active, "active")),
	}
	for k, v := range invalid {
		testenv.Put(t, cli, k, v)
	}

	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), metrics))
	waitLoaded(t, c)

	const (
		noerror  = dns.RcodeSuccess
		nxdomain = dns.RcodeNameError
	)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string // TLSA rdata, in any order; nil for a negative answer
	}{
		{"active device", "sensor7._device.iot.example.", dns.TypeTLSA, noerror, []string{active.ee(), active.discovery()}},
		{"revoked device", "sensor8._device.iot.example.", dns.TypeTLSA, noerror, []string{revoked.revoked()}},
		{"one revoked, one active", "sensor9._device.iot.example.", dns.TypeTLSA, noerror,
			[]string{oldKey.revoked(), newKey.ee(), newKey.discovery()}},
		// Only published names exist: a device whose every credential expired is denied.
		{"expired certificate", "old1._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
		{"expired spki", "old2._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
		{"multi-label device", "c90a.airquality._device.iot.example.", dns.TypeTLSA, noerror, []string{multi.ee(), multi.discovery()}},
		{"empty non-terminal", "airquality._device.iot.example.", dns.TypeTLSA, noerror, nil},
		{"_device", "_device.iot.example.", dns.TypeTLSA, noerror, nil},
		{"CA discovery", aki + "._ca._device.iot.example.", dns.TypeTLSA, noerror, []string{"2 0 0 " + fmt.Sprintf("%x", ca.Cert.Raw)}},
		{"nonexistent device", "nosuch._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
		{"below a device", "x.sensor7._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
		{"outside _device", "www.iot.example.", dns.TypeA, nxdomain, nil},
		{"NODATA at a device", "sensor7._device.iot.example.", dns.TypeA, noerror, nil},
		{"NODATA at the apex", "iot.example.", dns.TypeTXT, noerror, nil},
		{"invalid record not served", "bad1._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
		{"invalid name not served", "bad_name._device.iot.example.", dns.TypeTLSA, nxdomain, nil},
	}
	for _, tc := range tests {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tc.name+"/"+network, func(t *testing.T) {
				r := c.Exchange(t, network, tc.qname, tc.qtype)
				if r.Rcode != tc.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if !r.Authoritative {
					t.Error("AA not set")
				}
				got := tlsaSet(r)
				if !sameSet(got, tc.answer) {
					t.Errorf("answer\n%v\nwant\n%v", got, tc.answer)
				}
				if tc.answer == nil {
					checkNegative(t, r)
				} else if len(r.Ns) != 0 {
					t.Errorf("positive answer has an authority section: %v", r.Ns)
				}
			})
		}
	}

	t.Run("apex", func(t *testing.T) {
		r := c.Query(t, zone, dns.TypeSOA)
		if len(r.Answer) != 1 {
			t.Fatalf("SOA answer %v", r.Answer)
		}
		soa := r.Answer[0].(*dns.SOA)
		if soa.Ns != "ns1.iot.example." || soa.Minttl != 60 || soa.Serial == 0 {
			t.Errorf("SOA %v", soa)
		}
		r = c.Query(t, zone, dns.TypeNS)
		var ns []string
		for _, rr := range r.Answer {
			ns = append(ns, rr.(*dns.NS).Ns)
		}
		if !sameSet(ns, []string{"ns1.iot.example.", "ns2.iot.example."}) {
			t.Errorf("NS %v", ns)
		}
	})

	t.Run("mixed case", func(t *testing.T) {
		qname := "SeNsOr7._DeViCe.IoT.ExAmPlE."
		r := c.Query(t, qname, dns.TypeTLSA)
		if r.Question[0].Name != qname {
			t.Errorf("question %q", r.Question[0].Name)
		}
		if !sameSet(tlsaSet(r), []string{active.ee(), active.discovery()}) {
			t.Fatalf("answer %v", r.Answer)
		}
		for _, rr := range r.Answer {
			if rr.Header().Name != qname {
				t.Errorf("owner %q, want the query's %q", rr.Header().Name, qname)
			}
		}
	})

	t.Run("AXFR refused", func(t *testing.T) {
		r := c.Exchange(t, "tcp", zone, dns.TypeAXFR)
		if r.Rcode != dns.RcodeRefused {
			t.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
		}
	})

	t.Run("invalid records counted", func(t *testing.T) {
		if v := testenv.Metric(metrics, "coredns_deviceid_records_rejected_total", zone); v != fmt.Sprint(len(invalid)) {
			t.Errorf("rejected = %q, want %d", v, len(invalid))
		}
		// The gauge is per zone, and earlier tests in this process served the same zone.
		// Six device records are valid; the two whose credentials expired publish nothing.
		testenv.Eventually(t, "devices gauge", func() error {
			if v := testenv.Metric(metrics, "coredns_deviceid_devices", zone); v != "4" {
				return fmt.Errorf("devices = %q, want 4", v)
			}
			return nil
		})
	})
}

// checkNegative checks a negative answer: no answer records, the zone's SOA in the
// authority section with the zone TTL.
func checkNegative(t testing.TB, r *dns.Msg) {
	t.Helper()
	if len(r.Answer) != 0 {
		t.Errorf("negative answer has answers: %v", r.Answer)
	}
	if len(r.Ns) != 1 {
		t.Fatalf("authority %v, want the SOA", r.Ns)
	}
	soa, ok := r.Ns[0].(*dns.SOA)
	if !ok || soa.Hdr.Name != zone || soa.Hdr.Ttl != 60 {
		t.Errorf("authority %v, want the SOA of %s with TTL 60", r.Ns[0], zone)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// answerIs returns nil when the TLSA answer for name is want.
func answerIs(t testing.TB, c *testenv.CoreDNS, name string, rcode int, want []string) error {
	r := c.Query(t, name, dns.TypeTLSA)
	if r.Rcode != rcode || !sameSet(tlsaSet(r), want) {
		return fmt.Errorf("%s: rcode %s answer %v", name, dns.RcodeToString[r.Rcode], tlsaSet(r))
	}
	return nil
}

func TestUpdateAndDelete(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "sensor1", time.Now().AddDate(1, 0, 0))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	name := "sensor1._device.iot.example."
	if err := answerIs(t, c, name, dns.RcodeNameError, nil); err != nil {
		t.Fatal(err)
	}
	serial := c.Query(t, zone, dns.TypeSOA).Answer[0].(*dns.SOA).Serial

	testenv.Put(t, cli, deviceKey("sensor1"), deviceJSON(credentialJSON(d, "active")))
	testenv.Eventually(t, "device added", func() error { return answerIs(t, c, name, dns.RcodeSuccess, []string{d.ee(), d.discovery()}) })
	if s := c.Query(t, zone, dns.TypeSOA).Answer[0].(*dns.SOA).Serial; s <= serial {
		t.Errorf("SOA serial %d did not grow past %d after a change", s, serial)
	}

	testenv.Put(t, cli, deviceKey("sensor1"), deviceJSON(credentialJSON(d, "revoked")))
	testenv.Eventually(t, "device revoked", func() error { return answerIs(t, c, name, dns.RcodeSuccess, []string{d.revoked()}) })

	// A bad write over a good record: the device stops being served rather than
	// keep a version its owner tried to replace.
	testenv.Put(t, cli, deviceKey("sensor1"), `{"version": 1, "credentials": [{"status": "active"}]}`)
	testenv.Eventually(t, "invalid update", func() error { return answerIs(t, c, name, dns.RcodeNameError, nil) })

	testenv.Put(t, cli, deviceKey("sensor1"), deviceJSON(credentialJSON(d, "active")))
	testenv.Eventually(t, "device fixed", func() error { return answerIs(t, c, name, dns.RcodeSuccess, []string{d.ee(), d.discovery()}) })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, deviceKey("sensor1")); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "device deleted", func() error { return answerIs(t, c, name, dns.RcodeNameError, nil) })
	// With no device left, _device itself no longer exists.
	if err := answerIs(t, c, "_device.iot.example.", dns.RcodeNameError, nil); err != nil {
		t.Error(err)
	}
}

func TestCredentialExpiresWhileServed(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "brief", time.Now().AddDate(1, 0, 0))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)
	notAfter := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339Nano)
	testenv.Put(t, cli, deviceKey("brief"), deviceJSON(fmt.Sprintf(`{"cert": %q, "status": "active", "not_after": %q}`,
		base64.StdEncoding.EncodeToString(d.cert), notAfter)))
	name := "brief._device.iot.example."
	testenv.Eventually(t, "device served", func() error { return answerIs(t, c, name, dns.RcodeSuccess, []string{d.ee(), d.discovery()}) })
	// Nothing left to publish: denied as a name that does not exist.
	testenv.Eventually(t, "credential expired", func() error { return answerIs(t, c, name, dns.RcodeNameError, nil) })
}

func TestEtcdStopAndRestart(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d1 := newDevice(t, ca, "before", time.Now().AddDate(1, 0, 0))
	d2 := newDevice(t, ca, "after", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("before"), deviceJSON(credentialJSON(d1, "active")))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))))
	waitLoaded(t, c)

	etcd.Stop()
	// The last data keeps being served while etcd is down.
	for range 20 {
		if err := answerIs(t, c, "before._device.iot.example.", dns.RcodeSuccess, []string{d1.ee(), d1.discovery()}); err != nil {
			t.Fatalf("with etcd stopped: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	etcd.Start()
	testenv.Put(t, etcd.Client(), deviceKey("after"), deviceJSON(credentialJSON(d2, "active")))
	testenv.Eventually(t, "write after restart", func() error {
		return answerIs(t, c, "after._device.iot.example.", dns.RcodeSuccess, []string{d2.ee(), d2.discovery()})
	})
}

func TestReloadAfterCompaction(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "gone", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("gone"), deviceJSON(credentialJSON(d, "active")))
	p := startProxy(t, strings.TrimPrefix(etcd.URL(), "http://"))
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c := testenv.StartCoreDNS(t, corefile("http://"+p.addr(), metrics))
	waitLoaded(t, c)
	const restarts = "coredns_deviceid_watch_restarts_total"
	before := testenv.Metric(metrics, restarts, zone) // absent until the first restart

	// While the server cannot reach etcd, the device is deleted, another added, and
	// the history compacted: the watch cannot resume and the zone must be reloaded.
	p.cut()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, deviceKey("gone")); err != nil {
		t.Fatal(err)
	}
	testenv.Put(t, cli, deviceKey("new"), deviceJSON(credentialJSON(d, "revoked")))
	resp, err := cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if err := answerIs(t, c, "gone._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()}); err != nil {
		t.Fatalf("while cut off: %v", err)
	}
	p.restore()

	testenv.Eventually(t, "reloaded", func() error {
		if err := answerIs(t, c, "gone._device.iot.example.", dns.RcodeNameError, nil); err != nil {
			return err
		}
		return answerIs(t, c, "new._device.iot.example.", dns.RcodeSuccess, []string{d.revoked()})
	})
	if after := testenv.Metric(metrics, restarts, zone); after == "" || after == before {
		t.Errorf("watch restarts %q -> %q: the change was not seen through a reload", before, after)
	}
}
