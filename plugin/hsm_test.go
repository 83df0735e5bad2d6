package deviceid

import (
	"crypto"
	"crypto/elliptic"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// hsmKey makes an ECDSA P-256 key in the test's SoftHSM token and returns its URI.
func hsmKey(t *testing.T, h *testenv.HSM, object string) string {
	t.Helper()
	k, err := pkcs11key.Generate(h.URI(object), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	return h.URI(object)
}

// flakySigner fails while down is set: a token that went away.
type flakySigner struct {
	crypto.Signer
	down atomic.Bool
}

func (f *flakySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if f.down.Load() {
		return nil, errors.New("CKR_DEVICE_REMOVED")
	}
	return f.Signer.Sign(r, digest, opts)
}

// TestHSMGoesAway: while the KSK's token is away, DNSKEY answers keep their cached
// signatures, the failed renewals are counted, and once the token is back the
// signatures are renewed. Driven by a fake clock.
func TestHSMGoesAway(t *testing.T) {
	h := testenv.SoftHSM(t)
	c := caddyConfig(t)
	c.validity, c.cds, c.cacheSize = 24*time.Hour, true, 1000
	c.keyURIs = []string{hsmKey(t, h, "ksk")}
	zsk, _, err := dnskey.Generate(t.TempDir(), "iot.example.", dns.ECDSAP256SHA256, false)
	if err != nil {
		t.Fatal(err)
	}
	c.keyFiles = []string{zsk}
	if err := c.loadKeys(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.closeKeys)
	d, _, _, _ := testDeviceidWith(t, c)
	ksk := c.keys["iot.example."].ksk[0]
	flaky := &flakySigner{Signer: ksk.signer}
	ksk.signer = flaky
	clock := time.Now()
	d.now = func() time.Time { return clock }

	first, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, true, false)
	verifyAll(t, d, first)
	sigOf := func(m *dns.Msg) *dns.RRSIG {
		for _, rr := range m.Answer {
			if s, ok := rr.(*dns.RRSIG); ok && s.KeyTag == ksk.tag {
				return s
			}
		}
		t.Fatalf("no RRSIG by the HSM key in %v", m.Answer)
		return nil
	}
	original := sigOf(first)

	failed := testutil.ToFloat64(signFailures.WithLabelValues("iot.example."))
	flaky.down.Store(true)
	clock = clock.Add(7 * time.Hour) // past the renewal point, a quarter of the validity
	z := d.zones["iot.example."]
	z.maintain(clock)
	during, rcode := ask(t, d, "iot.example.", dns.TypeDNSKEY, true, false)
	if rcode != dns.RcodeSuccess || sigOf(during).Signature != original.Signature {
		t.Fatalf("while the token is away: rcode %d, %v", rcode, during.Answer)
	}
	if testutil.ToFloat64(signFailures.WithLabelValues("iot.example.")) == failed {
		t.Error("the failed renewal was not counted")
	}
	flaky.down.Store(false)
	clock = clock.Add(renewRetry / 2)
	z.maintain(clock) // too early for another try
	if again, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, true, false); sigOf(again).Signature != original.Signature {
		t.Error("renewed again before renewRetry")
	}
	clock = clock.Add(renewRetry)
	z.maintain(clock)
	m, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, true, false)
	if s := sigOf(m); s.Inception <= original.Inception {
		t.Error("not renewed once the token is back")
	} else if err := s.Verify(ksk.dnskey, dnskeys(m)); err != nil {
		t.Error(err)
	}
}

func dnskeys(m *dns.Msg) []dns.RR {
	var out []dns.RR
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == dns.TypeDNSKEY {
			out = append(out, rr)
		}
	}
	return out
}
