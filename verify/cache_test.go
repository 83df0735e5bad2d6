package verify

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// fakeResolver is a validating resolver on loopback for the unit tests: it answers
// TLSA queries with AD set from answer, which a test may change while it runs.
type fakeResolver struct {
	addr    string
	queries atomic.Int32
	mu      sync.Mutex
	answer  func(q dns.Question, cd bool) *dns.Msg // nil reply: SERVFAIL
}

func startFakeResolver(t *testing.T) *fakeResolver {
	t.Helper()
	f := &fakeResolver{}
	f.addr = testenv.ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		f.queries.Add(1)
		f.mu.Lock()
		answer := f.answer
		f.mu.Unlock()
		reply := answer(r.Question[0], r.CheckingDisabled)
		if reply == nil {
			reply = new(dns.Msg)
			reply.Rcode = dns.RcodeServerFailure
		}
		rcode := reply.Rcode
		reply.SetReply(r)
		reply.Rcode = rcode
		w.WriteMsg(reply)
	}))
	return f
}

func (f *fakeResolver) set(answer func(q dns.Question, cd bool) *dns.Msg) {
	f.mu.Lock()
	f.answer = answer
	f.mu.Unlock()
}

// validated is an AD answer with records rrs (none: NODATA with an SOA whose
// negative TTL is negTTL).
func validated(q dns.Question, negTTL uint32, rrs ...dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.AuthenticatedData = true
	for _, rr := range rrs {
		rr.Header().Name = q.Name
		m.Answer = append(m.Answer, rr)
	}
	if len(rrs) == 0 {
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
			Ns: "ns1.iot.example.", Mbox: "h.iot.example.", Minttl: negTTL}}
	}
	return m
}

// fakeClock is the verifier's clock in these tests.
type fakeClock struct{ t atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.t.Add(int64(d)) }

func deviceCert(t *testing.T, name string) (*x509.Certificate, *dns.TLSA) {
	t.Helper()
	cert, _ := deviceChain(t, name)
	rr := tlsa(3, 1, 1, digest(cert, 1, 1))
	rr.Hdr = dns.RR_Header{Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 10}
	return cert, rr
}

// TestCacheBounded: 100,000 clients with certificates for random names leave the
// cache at its size.
func TestCacheBounded(t *testing.T) {
	f := startFakeResolver(t)
	f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, 60) })
	v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr, CacheSize: 1000}
	const clients = 100_000
	var wg sync.WaitGroup
	next := atomic.Int32{}
	for range 8 {
		wg.Go(func() {
			for i := next.Add(1); i <= clients; i = next.Add(1) {
				cert := &x509.Certificate{DNSNames: []string{fmt.Sprintf("r%d._device.iot.example", i)}}
				if _, err := v.Verify(context.Background(), []*x509.Certificate{cert}); !errors.Is(err, ErrNoMatch) {
					t.Errorf("a random name: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := v.CacheLen(); n != 1000 {
		t.Errorf("after %d random names the cache holds %d, want its size 1000", clients, n)
	}
	if q := f.queries.Load(); q != clients {
		t.Errorf("%d queries for %d distinct names", q, clients)
	}
}

// TestNegativeTTL: a device enrolled right after a refused attempt is accepted once
// the negative answer's TTL has passed, and that TTL is capped at a minute.
func TestNegativeTTL(t *testing.T) {
	for _, tc := range []struct {
		soaMin uint32
		wait   time.Duration
	}{{30, 30 * time.Second}, {3600, MaxNegativeTTL}} {
		t.Run(fmt.Sprint(tc.soaMin), func(t *testing.T) {
			f := startFakeResolver(t)
			cert, rr := deviceCert(t, "lamp")
			f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, tc.soaMin) })
			clock := &fakeClock{}
			v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr, Now: clock.now}
			chain := []*x509.Certificate{cert}
			if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("before enrollment: %v", err)
			}
			f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, tc.soaMin, dns.Copy(rr)) }) // enrolled
			clock.advance(tc.wait - time.Second)
			if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrNoMatch) {
				t.Errorf("within the negative TTL: %v, want the cached refusal", err)
			}
			clock.advance(time.Second)
			if _, err := v.Verify(t.Context(), chain); err != nil {
				t.Errorf("after the negative TTL (%s): %v", tc.wait, err)
			}
		})
	}
}

// TestPositiveTTL: a revocation is seen once the cached answer's TTL has passed.
func TestPositiveTTL(t *testing.T) {
	f := startFakeResolver(t)
	cert, rr := deviceCert(t, "lamp")
	f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, 60, dns.Copy(rr)) })
	clock := &fakeClock{}
	v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr, Now: clock.now}
	chain := []*x509.Certificate{cert}
	if _, err := v.Verify(t.Context(), chain); err != nil {
		t.Fatal(err)
	}
	f.set(func(q dns.Question, _ bool) *dns.Msg { return validated(q, 60, revokedOf(rr)) })
	clock.advance(9 * time.Second)
	if _, err := v.Verify(t.Context(), chain); err != nil {
		t.Errorf("within the TTL: %v", err)
	}
	clock.advance(time.Second)
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrRevoked) {
		t.Errorf("after the TTL: %v, want %v", err, ErrRevoked)
	}
}

// TestOneLookupInFlight: concurrent handshakes for one name wait for one lookup.
func TestOneLookupInFlight(t *testing.T) {
	f := startFakeResolver(t)
	cert, rr := deviceCert(t, "lamp")
	release := make(chan struct{})
	f.set(func(q dns.Question, _ bool) *dns.Msg {
		<-release
		return validated(q, 60, dns.Copy(rr))
	})
	v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr}
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range 20 {
		started.Add(1)
		wg.Go(func() {
			started.Done()
			if _, err := v.Verify(context.Background(), []*x509.Certificate{cert}); err != nil {
				t.Error(err)
			}
		})
	}
	started.Wait()
	for f.queries.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let the others reach the lookup
	close(release)
	wg.Wait()
	if q := f.queries.Load(); q != 1 {
		t.Errorf("%d queries for 20 concurrent handshakes", q)
	}
}

// TestBogusFromResolver: a resolver's SERVFAIL for an answer it found bogus is
// reported as not validated, told apart from a failed lookup by asking with CD.
func TestBogusFromResolver(t *testing.T) {
	f := startFakeResolver(t)
	cert, rr := deviceCert(t, "lamp")
	v := &Verifier{Zones: []string{"iot.example."}, Resolver: f.addr}
	chain := []*x509.Certificate{cert}
	f.set(func(q dns.Question, cd bool) *dns.Msg {
		if cd {
			m := validated(q, 60, dns.Copy(rr))
			m.AuthenticatedData = false
			return m
		}
		return nil
	})
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrNotValidated) {
		t.Errorf("bogus: %v, want %v", err, ErrNotValidated)
	}
	f.set(func(dns.Question, bool) *dns.Msg { return nil }) // SERVFAIL with or without CD
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrLookupFailed) {
		t.Errorf("unreachable: %v, want %v", err, ErrLookupFailed)
	}
	f.set(func(q dns.Question, cd bool) *dns.Msg {
		m := new(dns.Msg)
		m.Rcode = dns.RcodeServerFailure
		m.SetEdns0(1232, true)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeDNSBogus})
		return m
	})
	if _, err := v.Verify(t.Context(), chain); !errors.Is(err, ErrNotValidated) {
		t.Errorf("SERVFAIL with EDE DNSSEC Bogus: %v, want %v", err, ErrNotValidated)
	}
}
