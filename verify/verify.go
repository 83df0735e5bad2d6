// Package verify authenticates both ends of a TLS connection by DANE. A Go TLS server
// plugs a Verifier into tls.Config.VerifyPeerCertificate, and a client certificate is
// accepted only if a DNSSEC-validated TLSA record at the client's identity name (the
// _device dNSName in its SAN) matches it (draft-ietf-dance-client-auth). A Go TLS
// client (a device) uses ClientConfig, and the server's certificate is accepted only if
// the TLSA RRset at _<port>._tcp.<host> vouches for it (RFC 6698/7671; server.go).
//
// It lives in its own package, apart from the signer and the plugin, because it is
// what third parties import into their servers: it depends on neither.
package verify

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Reasons a client is refused, for errors.Is; every refusal wraps one of them.
var (
	ErrNoIdentity     = errors.New("the certificate names no device identity under an accepted zone")
	ErrNotValidated   = errors.New("the TLSA answer is not DNSSEC-validated")
	ErrRevoked        = errors.New("the client's key is revoked")
	ErrNoMatch        = errors.New("no usable TLSA record matches the certificate")
	ErrLookupFailed   = errors.New("the TLSA lookup failed")
	ErrNoCertificates = errors.New("the client sent no certificate")
)

// Verifier checks client certificates against DANE TLSA records.
type Verifier struct {
	// Zones are the zones whose _device names may be looked up (an allow-list, so a
	// client cannot make the server query arbitrary names), e.g. "iot.example.".
	Zones []string
	// Resolver is the address (host:port) of a validating resolver reached over a
	// trusted path: its AD bit is trusted. Used when TrustAnchor is empty.
	Resolver string
	// TrustAnchor, with Server, makes the verifier validate locally: the DS (or
	// DNSKEY) records of the zone, and the authoritative server to ask.
	TrustAnchor []dns.RR
	Server      string
	// RevokedUsage is deviceid's revoked-status usage (255 when 0).
	RevokedUsage uint8
	// Timeout bounds one lookup (5 s when 0).
	Timeout time.Duration
	// CacheSize bounds how many names' answers are cached (DefaultCacheSize when 0):
	// clients presenting certificates with ever new names cannot grow the server.
	CacheSize int
	// Now is the clock of the cache (time.Now when nil); tests set it.
	Now func() time.Time
	// Roots are the PKIX trust anchors of server authentication's usages 0 and 1
	// (PKIX-TA, PKIX-EE), which require PKIX validation too; nil: the system's.
	Roots *x509.CertPool

	once     sync.Once
	cache    *lru
	inflight singleflight.Group
}

// DefaultCacheSize holds every device of a broker with 100,000 devices. An entry
// keeps only the records a verifier uses, a few hundred bytes.
const DefaultCacheSize = 100_000

// MaxNegativeTTL caps how long a name without TLSA records stays refused from the
// cache, so a device enrolled right after a refused attempt is accepted soon.
const MaxNegativeTTL = time.Minute

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// CacheLen is how many names the cache holds.
func (v *Verifier) CacheLen() int {
	v.init()
	return v.cache.len()
}

func (v *Verifier) init() {
	v.once.Do(func() {
		size := v.CacheSize
		if size <= 0 {
			size = DefaultCacheSize
		}
		v.cache = newLRU(size)
	})
}

// VerifyPeerCertificate is for tls.Config.VerifyPeerCertificate (with ClientAuth
// tls.RequireAnyClientCert): the chain the client sent, leaf first.
func (v *Verifier) VerifyPeerCertificate(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return ErrNoCertificates
	}
	chain, err := parseChain(rawCerts...)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoMatch, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.timeout())
	defer cancel()
	_, err = v.Verify(ctx, chain)
	return err
}

func parseChain(raw ...[]byte) ([]*x509.Certificate, error) {
	chain := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		chain[i] = c
	}
	return chain, nil
}

func (v *Verifier) timeout() time.Duration {
	if v.Timeout == 0 {
		return 5 * time.Second
	}
	return v.Timeout
}

// Result says who a client is and which record vouched for it.
type Result struct {
	Name    string    // the identity name, fully qualified
	Matched *dns.TLSA // the record that matched (the revoked-status one on ErrRevoked)
}

// Verify checks a client's chain (leaf first).
func (v *Verifier) Verify(ctx context.Context, chain []*x509.Certificate) (Result, error) {
	if len(chain) == 0 {
		return Result{}, ErrNoCertificates
	}
	name, err := v.identity(chain[0])
	if err != nil {
		return Result{}, err
	}
	rrs, err := v.lookup(ctx, name)
	if err != nil {
		return Result{Name: name}, err
	}
	rr, err := v.match(name, chain, rrs)
	return Result{Name: name, Matched: rr}, err
}

// identity returns the client's _device name in an accepted zone, from its SAN.
func (v *Verifier) identity(cert *x509.Certificate) (string, error) {
	for _, n := range cert.DNSNames {
		name := dns.Fqdn(strings.ToLower(n))
		if !strings.Contains(name, "._device.") {
			continue
		}
		for _, z := range v.Zones {
			if dns.IsSubDomain(dns.Fqdn(strings.ToLower(z)), name) {
				return name, nil
			}
		}
	}
	return "", ErrNoIdentity
}

// match applies RFC 6698/7671 matching: a revoked-status record for the key refuses
// it outright; otherwise one usable DANE-EE (3) or DANE-TA (2) record must match.
func (v *Verifier) match(name string, chain []*x509.Certificate, rrs []*dns.TLSA) (*dns.TLSA, error) {
	revoked := v.revokedUsage()
	leaf := chain[0]
	for _, rr := range rrs {
		if rr.Usage == revoked && matches(rr, leaf) {
			return rr, fmt.Errorf("%w: %s %d %d %d", ErrRevoked, name, rr.Usage, rr.Selector, rr.MatchingType)
		}
	}
	for _, rr := range rrs {
		switch rr.Usage {
		case 3: // DANE-EE: the key or certificate itself; dates and names are not checked (RFC 7671 §5.1)
			if matches(rr, leaf) {
				return rr, nil
			}
		case 2: // DANE-TA: a CA in the chain, and the name in the leaf's SAN
			for _, ta := range chain[1:] {
				if matches(rr, ta) && chainsTo(leaf, chain[1:], ta) && leaf.VerifyHostname(strings.TrimSuffix(name, ".")) == nil {
					return rr, nil
				}
			}
			if ta := fullCert(rr); ta != nil && chainsTo(leaf, chain[1:], ta) && leaf.VerifyHostname(strings.TrimSuffix(name, ".")) == nil {
				return rr, nil // a 2 0 0 record carries the CA itself
			}
		}
	}
	return nil, fmt.Errorf("%w at %s", ErrNoMatch, name)
}

// matches reports whether a TLSA record's selector and matching type fit cert.
func matches(rr *dns.TLSA, cert *x509.Certificate) bool {
	var data []byte
	switch rr.Selector {
	case 0:
		data = cert.Raw
	case 1:
		data = cert.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch rr.MatchingType {
	case 0:
	case 1:
		sum := sha256.Sum256(data)
		data = sum[:]
	case 2:
		sum := sha512.Sum512(data)
		data = sum[:]
	default:
		return false
	}
	want, err := hex.DecodeString(rr.Certificate)
	return err == nil && string(want) == string(data)
}

// fullCert returns the certificate a "x 0 0" record carries, or nil.
func fullCert(rr *dns.TLSA) *x509.Certificate {
	if rr.Selector != 0 || rr.MatchingType != 0 {
		return nil
	}
	der, err := hex.DecodeString(rr.Certificate)
	if err != nil {
		return nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil || !c.IsCA {
		return nil
	}
	return c
}

// chainsTo reports whether leaf chains to the trust anchor ta (through the
// intermediates sent), for client authentication. The anchor's own dates are not
// checked: DNSSEC vouches for it (RFC 7671 §5.2).
func chainsTo(leaf *x509.Certificate, intermediates []*x509.Certificate, ta *x509.Certificate) bool {
	return chainsFor(leaf, intermediates, ta, x509.ExtKeyUsageClientAuth)
}

// chainsFor is chainsTo for a purpose.
func chainsFor(leaf *x509.Certificate, intermediates []*x509.Certificate, ta *x509.Certificate, usage x509.ExtKeyUsage) bool {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(ta)
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err == nil
}

// lookup returns the validated TLSA RRset at name (empty when the name has none),
// from the cache while it is fresh; concurrent lookups of one name share one query.
func (v *Verifier) lookup(ctx context.Context, name string) ([]*dns.TLSA, error) {
	v.init()
	if rrs, ok := v.cache.get(name, v.now()); ok {
		return rrs, nil
	}
	res, err, _ := v.inflight.Do(name, func() (any, error) {
		var a answer
		var err error
		if len(v.TrustAnchor) > 0 {
			a, err = v.lookupLocal(ctx, name)
		} else {
			a, err = v.lookupAD(ctx, name)
		}
		if err != nil {
			return nil, err
		}
		rrs := v.usable(a.tlsa)
		if a.ttl > 0 {
			v.cache.put(name, rrs, v.now().Add(a.ttl))
		}
		return rrs, nil
	})
	if err != nil {
		return nil, err
	}
	return res.([]*dns.TLSA), nil
}

// usable keeps the records a match looks at: the four usages of RFC 6698 (client
// authentication uses only DANE-TA and DANE-EE) and the revoked usage.
func (v *Verifier) usable(rrs []*dns.TLSA) []*dns.TLSA {
	out := make([]*dns.TLSA, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Usage <= 3 || rr.Usage == v.revokedUsage() {
			out = append(out, rr)
		}
	}
	return out
}

func (v *Verifier) revokedUsage() uint8 {
	if v.RevokedUsage == 0 {
		return 255
	}
	return v.RevokedUsage
}

// answer is a validated lookup: the TLSA RRset (empty: proven absent) and how long
// it may be cached.
type answer struct {
	tlsa []*dns.TLSA
	ttl  time.Duration
}

// negativeTTL is how long a proven absence may be cached: the SOA's negative TTL
// (the lesser of its TTL and MINIMUM, RFC 2308 §5), at most MaxNegativeTTL.
func negativeTTL(authority []dns.RR) time.Duration {
	ttl := MaxNegativeTTL
	for _, rr := range authority {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl = min(ttl, time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second)
		}
	}
	return ttl
}

// exchange asks addr with DO set, over TCP when the answer is truncated.
func exchange(ctx context.Context, addr, name string, qtype uint16, cd bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, true)
	m.CheckingDisabled = cd
	r, _, err := (&dns.Client{}).ExchangeContext(ctx, m, addr)
	if err == nil && r.Truncated {
		r, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrLookupFailed, err)
	}
	if r.Rcode == dns.RcodeServerFailure {
		return r, fmt.Errorf("%w: %w for %s", ErrLookupFailed, errServFail, name)
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%w: %s for %s", ErrLookupFailed, dns.RcodeToString[r.Rcode], name)
	}
	return r, nil
}

var errServFail = errors.New("SERVFAIL")

// lookupAD trusts the validating resolver's AD bit. A resolver answers a bogus
// answer with SERVFAIL; asked again with CD (checking disabled) it then returns the
// data, which tells a bogus answer (not validated) from a failed lookup.
func (v *Verifier) lookupAD(ctx context.Context, name string) (answer, error) {
	r, err := exchange(ctx, v.Resolver, name, dns.TypeTLSA, false)
	if errors.Is(err, errServFail) {
		if bogus(r) {
			return answer{}, fmt.Errorf("%w: the resolver found the answer for %s bogus", ErrNotValidated, name)
		}
		if r2, err2 := exchange(ctx, v.Resolver, name, dns.TypeTLSA, true); err2 == nil && r2 != nil {
			return answer{}, fmt.Errorf("%w: the resolver could not validate the answer for %s", ErrNotValidated, name)
		}
	}
	if err != nil {
		return answer{}, err
	}
	if !r.AuthenticatedData {
		return answer{}, fmt.Errorf("%w: no AD bit for %s", ErrNotValidated, name)
	}
	rrs, ttl := tlsaOf(r.Answer, name)
	if len(rrs) == 0 {
		return answer{ttl: negativeTTL(r.Ns)}, nil
	}
	return answer{tlsa: rrs, ttl: time.Duration(ttl) * time.Second}, nil
}

// bogus reports whether a SERVFAIL carries an Extended DNS Error (RFC 8914) that
// says DNSSEC validation failed (codes 1 to 12).
func bogus(r *dns.Msg) bool {
	if r == nil || r.IsEdns0() == nil {
		return false
	}
	for _, o := range r.IsEdns0().Option {
		if ede, ok := o.(*dns.EDNS0_EDE); ok && ede.InfoCode >= dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm && ede.InfoCode <= dns.ExtendedErrorCodeNSECMissing {
			return true
		}
	}
	return false
}

// lookupLocal validates the answer itself: the zone's DNSKEY RRset against the trust
// anchor, then the TLSA RRset's signature with those keys, or, for a name without
// TLSA records, the proof of that: a signed NSEC at the name whose bitmap lacks TLSA
// (RFC 4035 §5.4 NODATA, and RFC 9824 compact denial, which deviceid serves).
func (v *Verifier) lookupLocal(ctx context.Context, name string) (answer, error) {
	zone := v.TrustAnchor[0].Header().Name
	keys, err := v.trustedKeys(ctx, zone)
	if err != nil {
		return answer{}, err
	}
	r, err := exchange(ctx, v.Server, name, dns.TypeTLSA, true)
	if err != nil {
		return answer{}, err
	}
	rrs, ttl := tlsaOf(r.Answer, name)
	if len(rrs) == 0 {
		if !deniedTLSA(r.Ns, name, keys) {
			return answer{}, fmt.Errorf("%w: no valid proof that %s has no TLSA records", ErrNotValidated, name)
		}
		return answer{ttl: negativeTTL(r.Ns)}, nil
	}
	set := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		set[i] = rr
	}
	if !verified(r.Answer, set, keys) {
		return answer{}, fmt.Errorf("%w: no valid RRSIG over the TLSA RRset of %s", ErrNotValidated, name)
	}
	return answer{tlsa: rrs, ttl: time.Duration(ttl) * time.Second}, nil
}

// deniedTLSA reports whether authority holds a validly signed NSEC at name whose type
// bitmap has neither TLSA nor CNAME.
func deniedTLSA(authority []dns.RR, name string, keys map[uint16]*dns.DNSKEY) bool {
	for _, rr := range authority {
		nsec, ok := rr.(*dns.NSEC)
		if !ok || !strings.EqualFold(nsec.Hdr.Name, name) || slices.Contains(nsec.TypeBitMap, dns.TypeTLSA) || slices.Contains(nsec.TypeBitMap, dns.TypeCNAME) {
			continue
		}
		if verified(authority, []dns.RR{nsec}, keys) {
			return true
		}
	}
	return false
}

// trustedKeys fetches the zone's DNSKEY RRset and keeps it if a key matching the
// trust anchor signs it.
func (v *Verifier) trustedKeys(ctx context.Context, zone string) (map[uint16]*dns.DNSKEY, error) {
	r, err := exchange(ctx, v.Server, zone, dns.TypeDNSKEY, true)
	if err != nil {
		return nil, err
	}
	keys := map[uint16]*dns.DNSKEY{}
	var set []dns.RR
	anchored := map[uint16]*dns.DNSKEY{}
	for _, rr := range r.Answer {
		k, ok := rr.(*dns.DNSKEY)
		if !ok {
			continue
		}
		set = append(set, k)
		keys[k.KeyTag()] = k
		for _, ta := range v.TrustAnchor {
			switch a := ta.(type) {
			case *dns.DS:
				if d := k.ToDS(a.DigestType); d != nil && strings.EqualFold(d.Digest, a.Digest) && d.KeyTag == a.KeyTag {
					anchored[k.KeyTag()] = k
				}
			case *dns.DNSKEY:
				if a.PublicKey == k.PublicKey && a.Algorithm == k.Algorithm {
					anchored[k.KeyTag()] = k
				}
			}
		}
	}
	if len(anchored) == 0 || !verified(r.Answer, set, anchored) {
		return nil, fmt.Errorf("%w: the DNSKEY RRset of %s is not signed by a trust anchor", ErrNotValidated, zone)
	}
	return keys, nil
}

// verified reports whether an RRSIG in section over set verifies with one of keys and
// is within its validity period.
func verified(section []dns.RR, set []dns.RR, keys map[uint16]*dns.DNSKEY) bool {
	for _, rr := range section {
		sig, ok := rr.(*dns.RRSIG)
		if !ok || sig.TypeCovered != set[0].Header().Rrtype || !strings.EqualFold(sig.Hdr.Name, set[0].Header().Name) {
			continue
		}
		if k := keys[sig.KeyTag]; k != nil && sig.ValidityPeriod(time.Now()) && sig.Verify(k, set) == nil {
			return true
		}
	}
	return false
}

// tlsaOf returns the TLSA records at name in an answer section, and their TTL.
func tlsaOf(section []dns.RR, name string) ([]*dns.TLSA, uint32) {
	var rrs []*dns.TLSA
	var ttl uint32
	for _, rr := range section {
		if t, ok := rr.(*dns.TLSA); ok && strings.EqualFold(t.Hdr.Name, name) {
			rrs = append(rrs, t)
			if ttl == 0 || t.Hdr.Ttl < ttl {
				ttl = t.Hdr.Ttl
			}
		}
	}
	return rrs, ttl
}

// ParseTrustAnchor reads a trust anchor for local validation (Verifier.TrustAnchor): a
// DS or DNSKEY record in presentation form, or the name of a file holding one (as
// deviceid-signer dev writes ds.txt).
func ParseTrustAnchor(s string) ([]dns.RR, error) {
	if b, err := os.ReadFile(s); err == nil {
		s = string(b)
	}
	rr, err := dns.NewRR(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("trust anchor: %w", err)
	}
	switch rr.(type) {
	case *dns.DS, *dns.DNSKEY:
		return []dns.RR{rr}, nil
	case nil:
		return nil, errors.New("trust anchor: no record")
	}
	return nil, fmt.Errorf("trust anchor: %s is neither a DS nor a DNSKEY record", dns.TypeToString[rr.Header().Rrtype])
}
