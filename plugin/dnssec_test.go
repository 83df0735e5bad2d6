package deviceid

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// signedDeviceid returns the test zone signed with a CSK, or with a KSK and a ZSK.
func signedDeviceid(t testing.TB, split bool, alg uint8) *Deviceid {
	t.Helper()
	dir := t.TempDir()
	c := caddyConfig(t)
	c.validity, c.cds, c.cacheSize = 24*time.Hour, true, 1000
	for _, sep := range []bool{true, false} {
		if !sep && !split {
			continue
		}
		c.keyFiles = append(c.keyFiles, genKey(t, dir, "iot.example.", alg, sep))
	}
	if err := c.loadKeys(); err != nil {
		t.Fatal(err)
	}
	d, _, _, _ := testDeviceidWith(t, c)
	return d
}

// ask sends a query through ServeDNS as the server would, and returns the reply.
func ask(t testing.TB, d *Deviceid, qname string, qtype uint16, do, co bool) (*dns.Msg, int) {
	t.Helper()
	return askVia(t, d, &test.ResponseWriter{}, qname, qtype, do, co)
}

// askVia is ask over w (its transport and the client's address); nil: nothing written.
func askVia(t testing.TB, d *Deviceid, w *test.ResponseWriter, qname string, qtype uint16, do, co bool) (*dns.Msg, int) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(qname, qtype)
	q.SetEdns0(4096, do)
	q.IsEdns0().SetCo(co)
	raw := &rawWriter{ResponseWriter: w}
	rcode, err := d.ServeDNS(context.Background(), request.NewScrubWriter(q, raw), q)
	if err != nil {
		t.Fatalf("%s %s: %v", qname, dns.TypeToString[qtype], err)
	}
	if raw.buf == nil && raw.msg == nil {
		return nil, rcode
	}
	m := raw.msg
	if m == nil {
		m = new(dns.Msg)
		if err := m.Unpack(raw.buf); err != nil {
			t.Fatal(err)
		}
	}
	return m, rcode
}

// verifyAll checks that every RRset in the answer and authority sections is signed by
// a key of the zone's DNSKEY RRset whose role fits the type, and that each RRSIG verifies.
func verifyAll(t *testing.T, d *Deviceid, m *dns.Msg) {
	t.Helper()
	dk, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, false, false)
	keys := map[uint16]*dns.DNSKEY{}
	for _, rr := range dk.Answer {
		k := rr.(*dns.DNSKEY)
		keys[k.KeyTag()] = k
	}
	for _, section := range [][]dns.RR{m.Answer, m.Ns} {
		sets := map[string][]dns.RR{}
		var sigs []*dns.RRSIG
		for _, rr := range section {
			if s, ok := rr.(*dns.RRSIG); ok {
				sigs = append(sigs, s)
				continue
			}
			k := strings.ToLower(rr.Header().Name) + "/" + dns.TypeToString[rr.Header().Rrtype]
			sets[k] = append(sets[k], rr)
		}
		for k, set := range sets {
			var n int
			for _, s := range sigs {
				if strings.ToLower(s.Hdr.Name)+"/"+dns.TypeToString[s.TypeCovered] != k {
					continue
				}
				n++
				key := keys[s.KeyTag]
				if key == nil {
					t.Errorf("%s signed by key %d, not in the DNSKEY RRset", k, s.KeyTag)
					continue
				}
				ksk := key.Flags&dns.SEP != 0
				apexKeys := s.TypeCovered == dns.TypeDNSKEY || s.TypeCovered == dns.TypeCDS || s.TypeCovered == dns.TypeCDNSKEY
				if len(keys) > 1 && ksk != apexKeys {
					t.Errorf("%s signed by key %d (SEP %v)", k, s.KeyTag, ksk)
				}
				if err := s.Verify(key, set); err != nil {
					t.Errorf("%s: RRSIG by %d does not verify: %v", k, s.KeyTag, err)
				}
				if !s.ValidityPeriod(time.Now()) || s.OrigTtl != set[0].Header().Ttl ||
					time.Unix(int64(s.Inception), 0).After(time.Now().Add(-59*time.Minute)) {
					t.Errorf("%s: RRSIG times or TTL wrong: %v", k, s)
				}
			}
			if n == 0 {
				t.Errorf("%s has no RRSIG", k)
			}
		}
	}
}

func TestSigned(t *testing.T) {
	for _, variant := range []struct {
		name  string
		split bool
		alg   uint8
	}{
		{"csk ecdsa", false, dns.ECDSAP256SHA256},
		{"ksk+zsk ecdsa", true, dns.ECDSAP256SHA256},
		{"csk ed25519", false, dns.ED25519},
	} {
		t.Run(variant.name, func(t *testing.T) {
			d := signedDeviceid(t, variant.split, variant.alg)
			tests := []struct {
				qname  string
				qtype  uint16
				co     bool
				rcode  int
				answer []uint16 // types in the answer section besides RRSIG
				nsec   []uint16 // the NSEC bitmap in the authority section; nil: no NSEC
			}{
				{"sensor7._device.iot.example.", dns.TypeTLSA, false, dns.RcodeSuccess, []uint16{dns.TypeTLSA}, nil},
				{"SeNsOr7._device.iot.example.", dns.TypeTLSA, false, dns.RcodeSuccess, []uint16{dns.TypeTLSA}, nil},
				{"c90a.airquality._device.iot.example.", dns.TypeTLSA, false, dns.RcodeSuccess, []uint16{dns.TypeTLSA}, nil},
				{"sensor7._device.iot.example.", dns.TypeA, false, dns.RcodeSuccess, nil, []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeTLSA}},
				{"airquality._device.iot.example.", dns.TypeTLSA, false, dns.RcodeSuccess, nil, []uint16{dns.TypeRRSIG, dns.TypeNSEC}},
				{"nosuch._device.iot.example.", dns.TypeTLSA, false, dns.RcodeSuccess, nil, []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNXNAME}},
				{"NoSuch._device.iot.example.", dns.TypeTLSA, true, dns.RcodeNameError, nil, []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNXNAME}},
				{"iot.example.", dns.TypeTXT, false, dns.RcodeSuccess, nil,
					[]uint16{dns.TypeNS, dns.TypeSOA, dns.TypeRRSIG, dns.TypeNSEC, dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY}},
				{"iot.example.", dns.TypeSOA, false, dns.RcodeSuccess, []uint16{dns.TypeSOA}, nil},
				{"iot.example.", dns.TypeNS, false, dns.RcodeSuccess, []uint16{dns.TypeNS}, nil},
				{"iot.example.", dns.TypeDNSKEY, false, dns.RcodeSuccess, []uint16{dns.TypeDNSKEY}, nil},
				{"iot.example.", dns.TypeCDS, false, dns.RcodeSuccess, []uint16{dns.TypeCDS}, nil},
				{"iot.example.", dns.TypeCDNSKEY, false, dns.RcodeSuccess, []uint16{dns.TypeCDNSKEY}, nil},
			}
			for _, tc := range tests {
				t.Run(fmt.Sprintf("%s/%s/co=%v", tc.qname, dns.TypeToString[tc.qtype], tc.co), func(t *testing.T) {
					m, _ := ask(t, d, tc.qname, tc.qtype, true, tc.co)
					if m.Rcode != tc.rcode {
						t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
					}
					var types []uint16
					for _, rr := range m.Answer {
						if t := rr.Header().Rrtype; t != dns.TypeRRSIG && !slices.Contains(types, t) {
							types = append(types, t)
						}
						if rr.Header().Name != tc.qname {
							t.Errorf("owner %q, want the query's %q", rr.Header().Name, tc.qname)
						}
					}
					if !slices.Equal(types, tc.answer) {
						t.Errorf("answer types %v, want %v", types, tc.answer)
					}
					var nsec *dns.NSEC
					for _, rr := range m.Ns {
						if n, ok := rr.(*dns.NSEC); ok {
							nsec = n
						}
						if rr.Header().Rrtype == dns.TypeNS {
							t.Error("NS RRset in the authority section")
						}
					}
					switch {
					case tc.nsec == nil && nsec != nil:
						t.Errorf("unexpected NSEC %v", nsec)
					case tc.nsec != nil && nsec == nil:
						t.Fatalf("no NSEC in %v", m.Ns)
					case nsec != nil:
						if !slices.Equal(nsec.TypeBitMap, tc.nsec) || nsec.NextDomain != "\\000."+strings.ToLower(tc.qname) ||
							!strings.EqualFold(nsec.Hdr.Name, tc.qname) {
							t.Errorf("NSEC %v, want bitmap %v", nsec, tc.nsec)
						}
					}
					if o := m.IsEdns0(); o == nil || !o.Do() || o.Co() != tc.co {
						t.Errorf("OPT %v", o)
					}
					verifyAll(t, d, m)
				})
			}
		})
	}
}

func TestSignedWithoutDO(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"sensor7._device.iot.example.", dns.TypeTLSA, dns.RcodeSuccess},
		{"nosuch._device.iot.example.", dns.TypeTLSA, dns.RcodeNameError},
		{"iot.example.", dns.TypeSOA, dns.RcodeSuccess},
		{"iot.example.", dns.TypeDNSKEY, dns.RcodeSuccess},
	} {
		m, _ := ask(t, d, q.name, q.qtype, false, false)
		if m.Rcode != q.rcode {
			t.Errorf("%s: rcode %s", q.name, dns.RcodeToString[m.Rcode])
		}
		for _, rr := range append(m.Answer, m.Ns...) {
			if rr.Header().Rrtype == dns.TypeRRSIG || rr.Header().Rrtype == dns.TypeNSEC {
				t.Errorf("%s without DO has %v", q.name, rr)
			}
		}
	}
}

func TestLongNameDenial(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	long := strings.Repeat(strings.Repeat("a", 60)+".", 3) + strings.Repeat("b", 49) + "._device.iot.example." // 253 characters
	if _, rcode := ask(t, d, long, dns.TypeTLSA, true, false); rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %d for a name too long to deny compactly, want SERVFAIL", rcode)
	}
	if m, _ := ask(t, d, long, dns.TypeTLSA, false, false); m == nil || m.Rcode != dns.RcodeNameError {
		t.Errorf("without DO: %v", m)
	}
	ok := long[:183] + long[184:] // one character less: the NSEC's next name still fits
	if m, _ := ask(t, d, ok, dns.TypeTLSA, true, false); m == nil || len(m.Ns) != 4 {
		t.Errorf("a 252-character name: %v", m)
	}
}

func TestNXNAMEQuery(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	if _, rcode := ask(t, d, "sensor7._device.iot.example.", dns.TypeNXNAME, true, false); rcode != dns.RcodeFormatError {
		t.Errorf("rcode %d for a query of type NXNAME, want FORMERR", rcode)
	}
}

// TestSignatureCache checks that a repeated query is answered from the cache, and that
// a changed RRset is signed anew rather than served with the old signature.
func TestSignatureCache(t *testing.T) {
	d := signedDeviceid(t, false, dns.ECDSAP256SHA256)
	z := d.zones["iot.example."]
	counter := func(c *prometheus.CounterVec) float64 { return testutil.ToFloat64(c.WithLabelValues("iot.example.")) }
	made, hits, misses := counter(signatures), counter(cacheHits), counter(cacheMisses)
	first, _ := ask(t, d, "sensor7._device.iot.example.", dns.TypeTLSA, true, false)
	again, _ := ask(t, d, "sensor7._device.iot.example.", dns.TypeTLSA, true, false)
	// The first answer signs the TLSA RRset and the NSEC at the name (the background
	// signer is not running here); the second comes from the store.
	if counter(signatures) != made+2 || counter(cacheMisses) != misses+1 || counter(cacheHits) != hits+1 {
		t.Errorf("metrics: signatures +%v, misses +%v, hits +%v; want 2, 1, 1",
			counter(signatures)-made, counter(cacheMisses)-misses, counter(cacheHits)-hits)
	}
	sig := func(m *dns.Msg) string {
		for _, rr := range m.Answer {
			if s, ok := rr.(*dns.RRSIG); ok {
				return s.Signature
			}
		}
		return ""
	}
	if sig(first) == "" || sig(first) != sig(again) {
		t.Error("the second answer was signed again")
	}
	// Revoke: the new RRset gets its own signature, made as the change is applied.
	owner := "sensor7._device.iot.example."
	zd := z.current()
	var one []byte // the first record of the RRset
	zd.st.view(owner, func(e entry) {
		eachRecord(e.rrset(), func(until int64, wire []byte) {
			if one == nil {
				one = appendRecord(nil, until, wire)
			}
		})
	})
	z.write.Lock()
	z.apply(zd, parsed{kv: &mvccpb.KeyValue{Key: []byte("k")}, owner: owner, rr: one, device: true},
		z.signAt(zd, parsed{owner: owner, rr: one}, time.Now()))
	z.write.Unlock()
	misses = counter(cacheMisses)
	changed, _ := ask(t, d, owner, dns.TypeTLSA, true, false)
	if len(changed.Answer) != 2 || sig(changed) == sig(first) || counter(cacheMisses) != misses {
		t.Errorf("changed RRset: %v (signed on the query path: %v)", changed.Answer, counter(cacheMisses) != misses)
	}
	verifyAll(t, d, changed)
}

func TestNXCacheBounded(t *testing.T) {
	c := newNXCache(3, 24*time.Hour)
	ks := &keySet{zsk: []*key{{}}}
	s := &signer{validity: 24 * time.Hour}
	now := time.Now()
	inc, exp := s.times(now)
	sig := make([]byte, sigSize)
	for i := range 10 {
		c.put(ks, []byte{byte(i)}, sig, inc, exp)
	}
	if c.len() != 3 || len(c.slots) != 3 {
		t.Errorf("cache holds %d entries in %d slots, bound 3", c.len(), len(c.slots))
	}
	if _, _, ok := c.get(ks, []byte{9}, sig, now.UnixNano()); !ok {
		t.Error("the last name put is not found")
	}
	if _, _, ok := c.get(ks, []byte{0}, sig, now.UnixNano()); ok {
		t.Error("the first name put is still there")
	}
	if _, _, ok := c.get(ks, []byte{9}, sig, now.Add(6*time.Hour).UnixNano()); ok {
		t.Error("a proof a quarter of its validity old is still served")
	}
}

// BenchmarkServeDNSSigned measures DO queries: a device whose signature is cached, and
// names that do not exist, each needing a fresh NSEC signature.
func BenchmarkServeDNSSigned(b *testing.B) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		d := signedDeviceid(b, false, alg)
		for _, bc := range []struct {
			name  string
			qname func(i int) string
		}{
			{"device", func(int) string { return "sensor7._device.iot.example." }},
			{"nonexistent", func(i int) string { return fmt.Sprintf("nx%d._device.iot.example.", i) }},
		} {
			b.Run(dns.AlgorithmToString[alg]+"/"+bc.name, func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					m := new(dns.Msg)
					m.SetQuestion(bc.qname(i), dns.TypeTLSA)
					m.SetEdns0(1232, true)
					d.ServeDNS(context.Background(), request.NewScrubWriter(m, discardWriter{&test.ResponseWriter{}}), m)
					i++
				}
			})
		}
	}
}

// TestSignDeterministic: ECDSA keys sign with RFC 6979 nonces, so one RRset signed twice
// at one time gets one signature, which validates; Ed25519 is deterministic by design.
func TestSignDeterministic(t *testing.T) {
	for _, alg := range []uint8{dns.ECDSAP256SHA256, dns.ED25519} {
		k, dk := testKey(t, alg)
		ks, err := newKeySet("iot.example.", []*key{k}, 60, false)
		if err != nil {
			t.Fatal(err)
		}
		s := newSigner("iot.example.", time.Hour, 10)
		nsec := []dns.RR{&dns.NSEC{
			Hdr:        dns.RR_Header{Name: "nx._device.iot.example.", Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: 60},
			NextDomain: "\\000.nx._device.iot.example.",
			TypeBitMap: []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNXNAME},
		}}
		wire, _ := packName(make([]byte, 256), "nx._device.iot.example.")
		rdata := append(append([]byte{1, 0}, wire...), bitmapNXNAME...)
		if !bytes.Equal(rdata, rdataOf(t, nsec[0])) {
			t.Fatalf("NSEC RDATA %x, miekg/dns packs %x", rdata, rdataOf(t, nsec[0]))
		}
		inc, exp := s.times(time.Now())
		first, second := make([]byte, sigSize), make([]byte, sigSize)
		for _, out := range [][]byte{first, second} {
			if err := s.signSet(ks, out, wire, dns.TypeNSEC, 60, inc, exp, [][]byte{rdata}); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(first, second) {
			t.Errorf("%s: two signatures of one RRset at one time differ", dns.AlgorithmToString[alg])
		}
		sig := &dns.RRSIG{Hdr: dns.RR_Header{Name: "nx._device.iot.example.", Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: 60},
			TypeCovered: dns.TypeNSEC, Algorithm: alg, Labels: 4, OrigTtl: 60, Inception: inc, Expiration: exp,
			KeyTag: k.tag, SignerName: "iot.example.", Signature: base64.StdEncoding.EncodeToString(first)}
		if err := sig.Verify(dk, nsec); err != nil {
			t.Errorf("%s: %v", dns.AlgorithmToString[alg], err)
		}
	}
}

// TestSignConcurrent: many queries signing at once share the signing goroutines and
// each gets the signatures over its own RRset.
func TestSignConcurrent(t *testing.T) {
	d := signedDeviceid(t, true, dns.ECDSAP256SHA256)
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			qname := fmt.Sprintf("nx%d._device.iot.example.", i)
			m, _ := ask(t, d, qname, dns.TypeTLSA, true, false)
			for _, rr := range m.Ns {
				if rr.Header().Rrtype == dns.TypeNSEC && rr.Header().Name != qname {
					t.Errorf("NSEC for %s at %s", qname, rr.Header().Name)
				}
			}
			verifyAll(t, d, m)
		})
	}
	wg.Wait()
}

// TestSignPanicIsError: a panic while signing (here, a signer without keys) comes back
// to the query as an error; it must not take down the signing goroutines or the server.
func TestSignPanicIsError(t *testing.T) {
	broken := &signer{origin: "iot.example."}
	if err := broken.signNow(&keySet{zsk: []*key{nil}}, make([]byte, sigSize), []byte{0}, dns.TypeNSEC, 60, 1, 2, [][]byte{{0}}); err == nil {
		t.Fatal("no error from a signer without keys")
	}
	d := signedDeviceid(t, false, dns.ED25519)
	m, _ := ask(t, d, "nx._device.iot.example.", dns.TypeTLSA, true, false)
	verifyAll(t, d, m) // the signing goroutines still work
}

// BenchmarkFastPathAnswer: the fast path's work for one query, from its bytes to the
// answer's, without the sockets (BenchmarkServeDNSSigned is the chain's share of it).
func BenchmarkFastPathAnswer(b *testing.B) {
	d := signedDeviceid(b, false, dns.ECDSAP256SHA256)
	fp := &fastPath{d: d}
	ask(b, d, "sensor7._device.iot.example.", dns.TypeTLSA, true, false) // signs it, as the background signer would
	m := new(dns.Msg)
	m.SetQuestion("sensor7._device.iot.example.", dns.TypeTLSA)
	m.SetEdns0(1232, true)
	q, _ := m.Pack()
	addr := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5353}
	resp := make([]byte, 0, 4096)
	var name [256]byte
	now := d.now()
	b.ReportAllocs()
	for b.Loop() {
		if _, v := fp.answer(q, addr, addr, resp[:0], &name, now); v != fastAnswer {
			b.Fatal("not answered by the fast path")
		}
	}
}
