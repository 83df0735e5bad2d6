package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/miekg/dns"
)

// exampleCorefile reads a Corefile from corefile/ and moves its fixed ports to free
// ones, so that the test starts the file as shipped, on ports nothing else uses.
func exampleCorefile(t testing.TB, name string, ports ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "corefile", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, p := range ports {
		if !strings.Contains(s, p) {
			t.Fatalf("%s has no %q", name, p)
		}
		s = strings.ReplaceAll(s, p, fmt.Sprintf(":%d", testenv.FreePort(t)))
	}
	return s
}

func TestDevCorefile(t *testing.T) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "sensor7", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(d, "active")))

	cf := exampleCorefile(t, "dev.Corefile", ":8181", ":8080", ":9153")
	cf = strings.Replace(cf, ":1053", ":0", 1)
	cf = strings.Replace(cf, "http://127.0.0.1:2379", etcd.URL(), 1)
	key := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	if !strings.Contains(cf, ".deviceid-dev/Kiot.example") {
		t.Fatal("dev.Corefile does not name the dev key")
	}
	cf = strings.Replace(cf, ".deviceid-dev/Kiot.example", key.base, 1)
	c := testenv.StartCoreDNS(t, cf)
	testenv.Eventually(t, "dev Corefile serves", func() error {
		return answerIs(t, c, "sensor7._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()})
	})
	r, err := resolve(c.UDP, "udp", "sensor7._device.iot.example.", dns.TypeTLSA)
	if err != nil {
		t.Fatal(err)
	}
	verifySection(t, r.Answer, trustedKeys(t, c, key.ds))
}

// TestProductionCorefile runs corefile/production.Corefile as shipped, configured
// only through the environment as the file documents: against an etcd over plain
// http, and against one that requires mutual TLS.
func TestProductionCorefile(t *testing.T) {
	t.Run("plain http", func(t *testing.T) {
		etcd := testenv.StartEtcd(t)
		t.Setenv("DEVICEID_ETCD", etcd.URL())
		productionCorefile(t, etcd.Client())
	})
	t.Run("mutual TLS", func(t *testing.T) {
		etcd, files := testenv.StartEtcdTLS(t)
		t.Setenv("DEVICEID_ETCD", etcd.URL())
		t.Setenv("DEVICEID_ETCD_CERT", files.ClientCert)
		t.Setenv("DEVICEID_ETCD_KEY", files.ClientKey)
		t.Setenv("DEVICEID_ETCD_CA", files.CA)
		productionCorefile(t, testenv.ClientTLS(t, files, etcd.URL()))
	})
}

func productionCorefile(t *testing.T, cli *clientv3.Client) {
	dir := t.TempDir()
	devCA := testenv.NewTestCA(t, "device CA")
	d := newDevice(t, devCA, "sensor7", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(d, "active")))
	t.Setenv("DEVICEID_ZONE", "iot.example")
	t.Setenv("DEVICEID_NS", "ns1.example.net. ns2.example.net.")
	ksk := genZoneKey(t, dir, dns.ECDSAP256SHA256, true)
	zsk := genZoneKey(t, dir, dns.ED25519, false)
	t.Setenv("DEVICEID_KEYS", ksk.base+" "+zsk.base)
	t.Setenv("DEVICEID_DNS_PORT", "0")
	for _, v := range []string{"DEVICEID_READY", "DEVICEID_HEALTH", "DEVICEID_METRICS"} {
		t.Setenv(v, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	}
	b, err := os.ReadFile(filepath.Join("..", "corefile", "production.Corefile"))
	if err != nil {
		t.Fatal(err)
	}
	c := testenv.StartCoreDNS(t, string(b))
	testenv.Eventually(t, "production Corefile serves", func() error {
		return answerIs(t, c, "sensor7._device.iot.example.", dns.RcodeSuccess, []string{d.ee(), d.discovery()})
	})
	if ns := c.Query(t, zone, dns.TypeNS); len(ns.Answer) != 2 {
		t.Errorf("NS from the environment: %v", ns.Answer)
	}
	r, err := resolve(c.UDP, "udp", "sensor7._device.iot.example.", dns.TypeTLSA)
	if err != nil {
		t.Fatal(err)
	}
	verifySection(t, r.Answer, trustedKeys(t, c, ksk.ds))
}
