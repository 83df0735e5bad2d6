package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// TestBackupRestore: a snapshot of the registry, restored into a fresh 3-member
// cluster as docs/operations.md says, serves the same zone: the same SOA serial and
// the same answer for every device.
func TestBackupRestore(t *testing.T) {
	etcd, cli, ca := testbed(t)
	var names []string
	for i := range 20 {
		name := fmt.Sprintf("dev%d", i)
		status := map[bool]string{false: "active", true: "revoked"}[i%4 == 0]
		testenv.Put(t, cli, deviceKey(name), deviceJSON(credentialJSON(newDevice(t, ca, name, time.Now().AddDate(1, 0, 0)), status)))
		names = append(names, name)
	}
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	before := testenv.StartCoreDNS(t, signedCorefile(dnsPort(t), etcd.URL(), ksk))
	waitLoaded(t, before)

	restored := testenv.RestoreCluster(t, 3, testenv.Snapshot(t, cli))
	after := testenv.StartCoreDNS(t, signedCorefile(dnsPort(t), strings.Join(restored.Endpoints(), " "), ksk))
	waitLoaded(t, after)
	serial := func(c *testenv.CoreDNS) uint32 {
		m := c.Query(t, zone, dns.TypeSOA)
		if len(m.Answer) != 1 {
			t.Fatalf("SOA: %v", m)
		}
		return m.Answer[0].(*dns.SOA).Serial
	}
	if a, b := serial(before), serial(after); a != b {
		t.Errorf("SOA serial %d before, %d after the restore", a, b)
	}
	for _, name := range names {
		owner := name + "._device.iot.example."
		if a, b := tlsaSet(before.Query(t, owner, dns.TypeTLSA)), tlsaSet(after.Query(t, owner, dns.TypeTLSA)); len(a) == 0 || !sameSet(a, b) {
			t.Errorf("%s: %v before, %v after the restore", name, a, b)
		}
	}
}
