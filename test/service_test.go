package test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// TestServiceRecords: a service record written to etcd is served as TLSA at
// _<port>._<proto>.<host>.<zone>: 3 1 1 per active key, 255 1 1 per revoked one, no
// certificate discovery, whatever the record's state; the names above it are empty
// non-terminals; invalid service keys are skipped and counted.
func TestServiceRecords(t *testing.T) {
	etcd, cli, ca := testbed(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	c := testenv.StartCoreDNS(t, corefile(etcd.URL(), metrics))
	waitLoaded(t, c)
	old := newDevice(t, ca, "broker-old", time.Now().AddDate(1, 0, 0))
	cur := newDevice(t, ca, "broker", time.Now().AddDate(1, 0, 0))
	owner := "_8883._tcp.mqtt.acme.iot.example."
	key := "/deviceid/iot.example/service/_8883._tcp.mqtt.acme"
	testenv.Put(t, cli, key, fmt.Sprintf(`{"version": 1, "tenant": "acme", "state": "suspended", "credentials": [%s]}`, credentialJSON(cur, "active")))
	testenv.Eventually(t, "service in DNS", func() error { return answerIs(t, c, owner, dns.RcodeSuccess, []string{cur.ee()}) })
	// Rotation: the new key beside the old, then the old retired.
	testenv.Put(t, cli, key, deviceJSON(credentialJSON(cur, "active"), credentialJSON(old, "active")))
	testenv.Eventually(t, "both keys", func() error { return answerIs(t, c, owner, dns.RcodeSuccess, []string{cur.ee(), old.ee()}) })
	testenv.Put(t, cli, key, deviceJSON(credentialJSON(cur, "active"), credentialJSON(old, "revoked")))
	testenv.Eventually(t, "old key retired", func() error { return answerIs(t, c, owner, dns.RcodeSuccess, []string{cur.ee(), old.revoked()}) })
	for _, ent := range []string{"_tcp.mqtt.acme.iot.example.", "mqtt.acme.iot.example.", "acme.iot.example."} {
		if err := answerIs(t, c, ent, dns.RcodeSuccess, nil); err != nil {
			t.Errorf("empty non-terminal: %v", err)
		}
	}
	if err := answerIs(t, c, "_443._tcp.mqtt.acme.iot.example.", dns.RcodeNameError, nil); err != nil {
		t.Error(err)
	}
	// Keys that name no service are skipped and counted, the rest served.
	before, _ := strconv.Atoi(testenv.Metric(metrics, "coredns_deviceid_records_rejected_total", zone))
	for _, bad := range []string{"_99999._tcp.x", "_8883._sctp.x", "8883._tcp.x", "_8883._tcp.Upper", "_8883._tcp._device", "_08883._tcp.x"} {
		testenv.Put(t, cli, "/deviceid/iot.example/service/"+bad, deviceJSON(credentialJSON(cur, "active")))
	}
	testenv.Eventually(t, "invalid service keys counted", func() error {
		n, _ := strconv.Atoi(testenv.Metric(metrics, "coredns_deviceid_records_rejected_total", zone))
		if n-before != 6 {
			return fmt.Errorf("%d rejected, want 6", n-before)
		}
		return nil
	})
	if err := answerIs(t, c, owner, dns.RcodeSuccess, []string{cur.ee(), old.revoked()}); err != nil {
		t.Error(err)
	}
	if _, err := cli.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "service deleted", func() error { return answerIs(t, c, owner, dns.RcodeNameError, nil) })
}
