package verify

import (
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// stretched is the TTL an on-path relay writes into every header: the most RFC 2181
// allows.
const stretched = 1<<31 - 1

// signedZone is an authoritative server for iot.example. in this process that signs
// its answers with one key (a CSK), with signatures made on the test's clock: the
// TLSA RRset of each name in tlsa, and compact denial (an NSEC at the name) for the
// others.
type signedZone struct {
	key    *dns.DNSKEY
	priv   crypto.Signer
	clock  func() time.Time
	mu     sync.Mutex
	ttl    uint32        // the zone's TTL, of every record
	sigTTL uint32        // the original TTL in the RRSIGs (ttl when 0)
	valid  time.Duration // how long a signature is valid from the clock's now (a day when 0)
	tlsa   map[string][]dns.RR
	addr   string
}

func startSignedZone(t *testing.T, clock func() time.Time) *signedZone {
	t.Helper()
	z := newSignedZone(clock)
	z.addr = testenv.ServeDNS(t, dns.HandlerFunc(z.serve))
	return z
}

// newSignedZone is the zone with a new key, not served.
func newSignedZone(clock func() time.Time) *signedZone {
	k := &dns.DNSKEY{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags: 257, Protocol: 3, Algorithm: dns.ECDSAP256SHA256}
	priv, err := k.Generate(256)
	if err != nil {
		panic(err)
	}
	return &signedZone{key: k, priv: priv.(crypto.Signer), clock: clock, ttl: 10, tlsa: map[string][]dns.RR{}}
}

func (z *signedZone) ds() *dns.DS { return z.key.ToDS(dns.SHA256) }

// configure sets the zone's TTL and how long its signatures are valid.
func (z *signedZone) configure(ttl uint32, valid time.Duration) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.ttl, z.valid = ttl, valid
}

// set replaces the TLSA RRset of name (none: the name does not exist).
func (z *signedZone) set(name string, rrs ...*dns.TLSA) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.tlsa, name)
	for _, rr := range rrs {
		rr := dns.Copy(rr).(*dns.TLSA)
		rr.Hdr = dns.RR_Header{Name: name, Rrtype: dns.TypeTLSA, Class: dns.ClassINET}
		z.tlsa[name] = append(z.tlsa[name], rr)
	}
}

// sign returns set with the zone's TTL and its RRSIG.
func (z *signedZone) sign(set []dns.RR) []dns.RR {
	now := z.clock()
	valid := z.valid
	if valid == 0 {
		valid = 24 * time.Hour
	}
	sigTTL := z.sigTTL
	if sigTTL == 0 {
		sigTTL = z.ttl
	}
	for _, rr := range set {
		rr.Header().Ttl = sigTTL // Sign takes the original TTL from the RRset
	}
	sig := &dns.RRSIG{Hdr: dns.RR_Header{Ttl: z.ttl}, KeyTag: z.key.KeyTag(), SignerName: z.key.Hdr.Name, Algorithm: z.key.Algorithm,
		Inception: uint32(now.Add(-time.Hour).Unix()), Expiration: uint32(now.Add(valid).Unix())}
	if err := sig.Sign(z.priv, set); err != nil {
		panic(err)
	}
	for _, rr := range set {
		rr.Header().Ttl = z.ttl
	}
	return append(set, sig)
}

func (z *signedZone) serve(w dns.ResponseWriter, r *dns.Msg) {
	w.WriteMsg(z.reply(r))
}

// reply is the zone's answer to r.
func (z *signedZone) reply(r *dns.Msg) *dns.Msg {
	z.mu.Lock()
	defer z.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	switch {
	case q.Qtype == dns.TypeDNSKEY && q.Name == "iot.example.":
		m.Answer = z.sign([]dns.RR{dns.Copy(z.key)})
	case q.Qtype == dns.TypeTLSA && len(z.tlsa[q.Name]) > 0:
		var set []dns.RR
		for _, rr := range z.tlsa[q.Name] {
			set = append(set, dns.Copy(rr))
		}
		m.Answer = z.sign(set)
	default: // RFC 9824 compact denial
		soa := &dns.SOA{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET},
			Ns: "ns1.iot.example.", Mbox: "h.iot.example.", Serial: 1, Minttl: 60}
		nsec := &dns.NSEC{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeNSEC, Class: dns.ClassINET},
			NextDomain: "\\000." + q.Name, TypeBitMap: []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNXNAME}}
		m.Ns = append(z.sign([]dns.RR{soa}), z.sign([]dns.RR{nsec})...)
	}
	return m
}

// ttlRelay forwards queries to upstream and writes stretched into the TTL of every
// record of the reply, the unsigned field an on-path attacker can change; queries
// counts what it forwarded.
type ttlRelay struct {
	addr    string
	queries atomic.Int32
}

func startTTLRelay(t *testing.T, upstream string) *ttlRelay {
	t.Helper()
	relay := &ttlRelay{}
	relay.addr = testenv.RelayDNS(t, upstream, func(m *dns.Msg) bool {
		relay.queries.Add(1)
		testenv.StretchTTLs(m)
		return true
	})
	return relay
}

// adResolver is a validating resolver for the AD mode: it answers from the signed
// zone with AD set, RRSIGs included, as unbound does.
func adResolver(t *testing.T, z *signedZone) string {
	t.Helper()
	return testenv.RelayDNS(t, z.addr, func(m *dns.Msg) bool {
		m.Authoritative, m.AuthenticatedData, m.RecursionAvailable = false, true, true
		return true
	})
}

// modes are verifiers of both trust modes behind a TTL-stretching relay: local
// validation from the zone's DS, and a validating resolver's AD bit.
func modes(t *testing.T, z *signedZone, clock *fakeClock) map[string]struct {
	v     *Verifier
	relay *ttlRelay
} {
	local := startTTLRelay(t, z.addr)
	ad := startTTLRelay(t, adResolver(t, z))
	return map[string]struct {
		v     *Verifier
		relay *ttlRelay
	}{
		"local validation": {&Verifier{Zones: []string{"iot.example."}, TrustAnchor: []dns.RR{z.ds()}, Server: local.addr, Now: clock.now}, local},
		"resolver AD":      {&Verifier{Zones: []string{"iot.example."}, Resolver: ad.addr, Now: clock.now}, ad},
	}
}

func startClock() *fakeClock {
	c := &fakeClock{}
	c.t.Store(time.Now().UnixNano())
	return c
}

func revokedOf(rr *dns.TLSA) *dns.TLSA {
	r := dns.Copy(rr).(*dns.TLSA)
	r.Usage = 255
	return r
}

// TestStretchedTTL: a relay that rewrites every TTL to 2^31-1 does not keep a revoked
// key accepted: the answer is cached for the RRSIG's original TTL (10 s), so one
// second past it the revocation is seen, in both modes.
func TestStretchedTTL(t *testing.T) {
	clock := startClock()
	z := startSignedZone(t, clock.now)
	cert, rr := deviceCert(t, "lamp")
	for mode, m := range modes(t, z, clock) {
		t.Run(mode, func(t *testing.T) {
			z.set("lamp._device.iot.example.", rr)
			start := clock.now()
			res, err := m.v.Verify(t.Context(), []*x509.Certificate{cert})
			if err != nil {
				t.Fatal(err)
			}
			if want := start.Add(10 * time.Second); !res.Expires.Equal(want) {
				t.Errorf("the answer expires at %v, want %v (the RRSIG's original TTL)", res.Expires.Sub(start), want.Sub(start))
			}
			z.set("lamp._device.iot.example.", revokedOf(rr))
			clock.advance(11 * time.Second)
			if _, err := m.v.Verify(t.Context(), []*x509.Certificate{cert}); !errors.Is(err, ErrRevoked) {
				t.Errorf("revoked, TTL + 1 s later: %v, want %v", err, ErrRevoked)
			}
		})
	}
}

// TestSignatureExpiryBoundsCache: an answer whose RRSIG expires before its TTL ends is
// not used past the expiration; validating locally, the same signature then fails.
func TestSignatureExpiryBoundsCache(t *testing.T) {
	for _, mode := range []string{"local validation", "resolver AD"} {
		t.Run(mode, func(t *testing.T) {
			clock := startClock()
			signedAt := clock.now()
			// The server's signatures stay those made now, valid for 30 s.
			z := startSignedZone(t, func() time.Time { return signedAt })
			z.configure(3600, 30*time.Second)
			cert, rr := deviceCert(t, "lamp")
			z.set("lamp._device.iot.example.", rr)
			m := modes(t, z, clock)[mode]
			if _, err := m.v.Verify(t.Context(), []*x509.Certificate{cert}); err != nil {
				t.Fatal(err)
			}
			before := m.relay.queries.Load()
			clock.advance(31 * time.Second)
			_, err := m.v.Verify(t.Context(), []*x509.Certificate{cert})
			if m.relay.queries.Load() == before {
				t.Errorf("past the RRSIG's expiration the cached answer was used (%v)", err)
			}
			if mode == "local validation" && !errors.Is(err, ErrNotValidated) {
				t.Errorf("an expired signature: %v, want %v", err, ErrNotValidated)
			}
		})
	}
}

// TestValidityOnVerifierClock: local validation judges a signature's validity period
// on the verifier's clock, not the machine's.
func TestValidityOnVerifierClock(t *testing.T) {
	clock := startClock()
	signedAt := clock.now()
	z := startSignedZone(t, func() time.Time { return signedAt })
	cert, rr := deviceCert(t, "lamp")
	z.set("lamp._device.iot.example.", rr)
	v := &Verifier{Zones: []string{"iot.example."}, TrustAnchor: []dns.RR{z.ds()}, Server: z.addr, Now: clock.now}
	clock.advance(48 * time.Hour) // the signatures, valid for a day, have expired on this clock
	if _, err := v.Verify(t.Context(), []*x509.Certificate{cert}); !errors.Is(err, ErrNotValidated) {
		t.Errorf("signatures expired on the verifier's clock: %v, want %v", err, ErrNotValidated)
	}
}

// TestMaxTTLWithoutSignatures: a resolver that returns no RRSIGs leaves MaxTTL as the
// bound on a stretched TTL.
func TestMaxTTLWithoutSignatures(t *testing.T) {
	for _, max := range []time.Duration{0, 5 * time.Minute} {
		t.Run(max.String(), func(t *testing.T) {
			f := startFakeResolver(t)
			cert, rr := deviceCert(t, "lamp")
			rr.Hdr.Ttl = stretched
			f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, 60, dns.Copy(rr)) })
			clock := startClock()
			v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr, Now: clock.now, MaxTTL: max}
			chain := []*x509.Certificate{cert}
			if _, err := v.Verify(t.Context(), chain); err != nil {
				t.Fatal(err)
			}
			f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, 60, revokedOf(rr)) })
			bound := max
			if bound == 0 {
				bound = DefaultMaxTTL
			}
			clock.advance(bound - time.Second)
			if _, err := v.Verify(t.Context(), chain); err != nil {
				t.Errorf("within MaxTTL: %v, want the cached answer", err)
			}
			clock.advance(2 * time.Second)
			if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrRevoked) {
				t.Errorf("past MaxTTL %v: %v, want %v", bound, err, ErrRevoked)
			}
		})
	}
}

// TestNegativeTTLFromSignature: a proven absence is cached no longer than the RRSIG
// over its NSEC allows (5 s here), though the relay stretches every TTL and the SOA
// says a minute; a device enrolled meanwhile is accepted after it, in both modes.
func TestNegativeTTLFromSignature(t *testing.T) {
	clock := startClock()
	z := startSignedZone(t, clock.now)
	z.configure(5, 0)
	for mode, m := range modes(t, z, clock) {
		t.Run(mode, func(t *testing.T) {
			name := strings.ToLower(strings.ReplaceAll(mode, " ", "-"))
			cert, rr := deviceCert(t, name)
			chain := []*x509.Certificate{cert}
			if _, err := m.v.Verify(t.Context(), chain); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("before enrollment: %v", err)
			}
			z.set(name+"._device.iot.example.", rr)
			clock.advance(6 * time.Second)
			if _, err := m.v.Verify(t.Context(), chain); err != nil {
				t.Errorf("enrolled, 6 s after the denial: %v", err)
			}
		})
	}
}

// TestResolverOffLoopback: a resolver's AD bit is trusted on loopback, or elsewhere only
// when the path is declared trusted; otherwise nothing is asked.
func TestResolverOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		trusted bool
		ok      bool
	}{
		{"127.0.0.1:53", false, true},
		{"127.0.0.53:53", false, true},
		{"[::1]:53", false, true},
		{"localhost:5353", false, true},
		{"192.0.2.1:53", false, false},
		{"[2001:db8::1]:53", false, false},
		{"resolver.example:53", false, false},
		{"192.0.2.1:53", true, true},
		{"192.0.2.1", true, true}, // trusted: the address is the operator's business
	} {
		v := &Verifier{Zones: []string{"iot.example."}, Resolver: tc.addr, ResolverTrusted: tc.trusted}
		if err := v.Check(); (err == nil) != tc.ok {
			t.Errorf("%s trusted=%v: %v, want ok=%v", tc.addr, tc.trusted, err, tc.ok)
		}
		if !tc.ok {
			cert, _ := deviceCert(t, "lamp")
			if _, err := v.Verify(t.Context(), []*x509.Certificate{cert}); !errors.Is(err, ErrNotValidated) {
				t.Errorf("%s: Verify %v, want %v", tc.addr, err, ErrNotValidated)
			}
		}
	}
	if err := (&Verifier{}).Check(); err == nil {
		t.Error("a verifier with no trust mode passed Check")
	}
	if err := (&Verifier{TrustAnchor: []dns.RR{&dns.DS{}}}).Check(); err == nil {
		t.Error("a trust anchor without a server passed Check")
	}
}
