package test

import (
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/ca"
	"github.com/deviceid/deviceid/signer/registry"
	"github.com/deviceid/deviceid/verify"

	"github.com/miekg/dns"
)

// advVerifyRelay is a DNS relay over UDP and TCP in front of upstream: what an on-path
// attacker runs. With stretch it writes 2^31-1 (RFC 2181's maximum) into the TTL of
// every record it passes, the one field DNSSEC does not sign; while down it answers
// nothing, as an unreachable server. queries counts what it forwarded.
type advVerifyRelay struct {
	addr    string
	stretch atomic.Bool
	down    atomic.Bool
	queries atomic.Int64
}

func startAdvVerifyRelay(t testing.TB, upstream string) *advVerifyRelay {
	t.Helper()
	r := &advVerifyRelay{}
	r.addr = testenv.RelayDNS(t, upstream, func(m *dns.Msg) bool {
		if r.down.Load() {
			return false
		}
		r.queries.Add(1)
		if r.stretch.Load() {
			testenv.StretchTTLs(m)
		}
		return true
	})
	return r
}

// TestAdversaryVerifyStretchedTTL: a relay that rewrites every TTL to 2^31-1 does not
// keep a revoked key accepted. Real etcd, CoreDNS signing the zone (TTL 2 s,
// signatures valid 2 h), and unbound; the relay sits between the verifier and
// CoreDNS (local validation) and between the verifier and unbound (the AD bit). On the
// verifier's clock, advanced past the revocation + TTL + 1 s, both modes refuse the
// device (ErrRevoked); and for a device whose record has a TTL of 10 days, past the
// RRSIG's expiration the cached answer is not used: asked again, local validation
// refuses the expired signature.
func TestAdversaryVerifyStretchedTTL(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	const ttl = 2
	c := testenv.StartCoreDNS(t, fmt.Sprintf(`iot.example:%d {
    bind 127.0.0.1
    deviceid {
        endpoint %s
        ns ns1.iot.example.
        ttl %d
        signature_validity 2h
        key file %s
    }
}`, port, etcd.URL(), ttl, ksk.base))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)
	toServer := startAdvVerifyRelay(t, c.UDP)
	toResolver := startAdvVerifyRelay(t, unbound)
	toServer.stretch.Store(true)
	toResolver.stretch.Store(true)

	authority, err := ca.InitCA(t.TempDir(), "device CA", zone, elliptic.P256(), "")
	if err != nil {
		t.Fatal(err)
	}
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	lamp, _ := authority.Issue("lamp", mustKey().Public(), time.Now())
	testenv.Put(t, reg.Client, deviceKey("lamp"), deviceJSON(credentialJSON(&device{cert: lamp.Raw}, "active")))
	long, _ := authority.Issue("long", mustKey().Public(), time.Now())
	testenv.Put(t, reg.Client, deviceKey("long"), fmt.Sprintf(`{"version": 1, "ttl": 864000, "credentials": [%s]}`,
		credentialJSON(&device{cert: long.Raw}, "active")))
	testenv.Eventually(t, "devices in DNS", func() error {
		if err := answerIs(t, c, "long._device.iot.example.", dns.RcodeSuccess, []string{eeOf(long), discoveryOf(long)}); err != nil {
			return err
		}
		return answerIs(t, c, "lamp._device.iot.example.", dns.RcodeSuccess, []string{eeOf(lamp), discoveryOf(lamp)})
	})

	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	advance := func(d time.Duration) { now.Add(int64(d)) }
	modes := map[string]struct {
		v     *verify.Verifier
		relay *advVerifyRelay
	}{
		"local validation": {&verify.Verifier{Zones: []string{zone}, TrustAnchor: []dns.RR{ksk.ds}, Server: toServer.addr, Now: clock,
			MaxTTL: 1000 * time.Hour}, toServer},
		"resolver AD": {&verify.Verifier{Zones: []string{zone}, Resolver: toResolver.addr, Now: clock, MaxTTL: 1000 * time.Hour}, toResolver},
	}
	for mode, m := range modes {
		testenv.Eventually(t, mode+": accepted", func() error {
			_, err := m.v.Verify(t.Context(), []*x509.Certificate{lamp})
			return err
		})
	}

	// The revocation, seen once the TTL and a second have passed on the verifier's clock.
	if _, err := reg.Revoke(t.Context(), registry.OperatorActor("test"), "lamp", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "revocation in DNS", func() error {
		return answerIs(t, c, "lamp._device.iot.example.", dns.RcodeSuccess, []string{revokedOf(lamp)})
	})
	for mode, m := range modes {
		// unbound may hold the old answer for its own cache-max-ttl (1 s, real time):
		// each try moves the verifier's clock past the TTL and a second again.
		testenv.Eventually(t, mode+": the revocation seen after TTL + 1 s", func() error {
			advance((ttl + 1) * time.Second)
			if _, err := m.v.Verify(t.Context(), []*x509.Certificate{lamp}); !errors.Is(err, verify.ErrRevoked) {
				return fmt.Errorf("got %v, want %v", err, verify.ErrRevoked)
			}
			return nil
		})
	}

	// Past the RRSIG's expiration (2 h, well within the record's 10-day TTL) the cached
	// answer is not used.
	for mode, m := range modes {
		if _, err := m.v.Verify(t.Context(), []*x509.Certificate{long}); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
	}
	asked := map[string]int64{}
	for mode, m := range modes {
		asked[mode] = m.relay.queries.Load()
	}
	advance(2*time.Hour + time.Minute)
	for mode, m := range modes {
		_, err := m.v.Verify(t.Context(), []*x509.Certificate{long})
		if m.relay.queries.Load() == asked[mode] {
			t.Errorf("%s: past the RRSIG's expiration the cached answer was used (%v)", mode, err)
		}
		if mode == "local validation" && !errors.Is(err, verify.ErrNotValidated) {
			t.Errorf("%s: an answer whose signature expired on the verifier's clock: %v, want %v", mode, err, verify.ErrNotValidated)
		}
	}
}
