package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// lookup returns the validated TLSA RRset at name (empty when the name has none) and
// when that answer stops being used, from the cache while it is fresh; concurrent
// lookups of one name share one query.
func (v *Verifier) lookup(ctx context.Context, name string) ([]*dns.TLSA, time.Time, error) {
	v.init()
	if rrs, expires, ok := v.cache.get(name, v.now()); ok {
		return rrs, expires, nil
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
		e := entry{tlsa: rrs, expires: v.now().Add(a.ttl)}
		if a.ttl > 0 {
			v.cache.put(name, rrs, e.expires)
		}
		return e, nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	e := res.(entry)
	return e.tlsa, e.expires, nil
}

// usable keeps the records a match looks at: the four usages of RFC 6698 (client
// authentication uses only DANE-TA and DANE-EE) and the revoked usage.
func (v *Verifier) usable(rrs []*dns.TLSA) []*dns.TLSA {
	out := make([]*dns.TLSA, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Usage <= record.UsageDANEEE || rr.Usage == v.revokedUsage() {
			out = append(out, rr)
		}
	}
	return out
}

// answer is a validated lookup: the TLSA RRset (empty: proven absent) and how long
// it may be cached.
type answer struct {
	tlsa []*dns.TLSA
	ttl  time.Duration
}

// maxTTL is MaxTTL, or DefaultMaxTTL when unset.
func (v *Verifier) maxTTL() time.Duration {
	if v.MaxTTL <= 0 {
		return DefaultMaxTTL
	}
	return v.MaxTTL
}

// ttlCap is the least of the durations given, the header TTL ttl (seconds) and the
// verifier's MaxTTL; never negative.
func (v *Verifier) ttlCap(ttl uint32, caps ...time.Duration) time.Duration {
	d := min(time.Duration(ttl)*time.Second, v.maxTTL())
	for _, c := range caps {
		d = min(d, c)
	}
	return max(d, 0)
}

// sigLifetime is how long sig vouches for its RRset from now: the least of its
// original TTL and the time left to its expiration (RFC 4034 §3.1.5 serial
// arithmetic, as ValidityPeriod reads it); 0 once expired.
func sigLifetime(sig *dns.RRSIG, now time.Time) time.Duration {
	left := time.Duration(int32(sig.Expiration-uint32(now.Unix()))) * time.Second
	return max(min(time.Duration(sig.OrigTtl)*time.Second, left), 0)
}

// sigsLifetime is the least sigLifetime of the RRSIGs in section that cover one of
// types (at name, unless name is ""); with none, longer than any other cap. A
// resolver's RRSIGs are not verified here, so the least is taken.
func sigsLifetime(section []dns.RR, name string, now time.Time, types ...uint16) time.Duration {
	d := time.Duration(1 << 62)
	for _, rr := range section {
		sig, ok := rr.(*dns.RRSIG)
		if !ok || !slices.Contains(types, sig.TypeCovered) || name != "" && !strings.EqualFold(sig.Hdr.Name, name) {
			continue
		}
		d = min(d, sigLifetime(sig, now))
	}
	return d
}

// negativeTTL is how long a proven absence may be cached: the SOA's negative TTL
// (the lesser of its TTL and MINIMUM, RFC 2308 §5), at most MaxNegativeTTL and the
// caps given.
func (v *Verifier) negativeTTL(authority []dns.RR, caps ...time.Duration) time.Duration {
	ttl := MaxNegativeTTL
	for _, rr := range authority {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl = min(ttl, time.Duration(min(soa.Hdr.Ttl, soa.Minttl))*time.Second)
		}
	}
	return v.ttlCap(uint32(ttl/time.Second), caps...)
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
	if err := v.checkResolver(); err != nil {
		return answer{}, err
	}
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
	return v.answerAD(r, name, v.now())
}

// answerAD turns a validating resolver's reply into an answer: it must carry the AD
// bit, and it is cached no longer than the RRSIGs it carries allow (answerAD does
// not verify them: the resolver did; it only reads their signed lifetimes, which a
// relay that rewrites TTLs leaves alone).
func (v *Verifier) answerAD(r *dns.Msg, name string, now time.Time) (answer, error) {
	if !r.AuthenticatedData {
		return answer{}, fmt.Errorf("%w: no AD bit for %s", ErrNotValidated, name)
	}
	rrs, ttl := tlsaOf(r.Answer, name)
	if len(rrs) == 0 {
		return answer{ttl: v.negativeTTL(r.Ns, sigsLifetime(r.Ns, "", now, dns.TypeSOA, dns.TypeNSEC, dns.TypeNSEC3))}, nil
	}
	return answer{tlsa: rrs, ttl: v.ttlCap(ttl, sigsLifetime(r.Answer, name, now, dns.TypeTLSA))}, nil
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
	r, err := exchange(ctx, v.Server, zone, dns.TypeDNSKEY, true)
	if err != nil {
		return answer{}, err
	}
	keys, err := anchoredKeys(r, zone, v.TrustAnchor, v.now())
	if err != nil {
		return answer{}, err
	}
	if r, err = exchange(ctx, v.Server, name, dns.TypeTLSA, true); err != nil {
		return answer{}, err
	}
	return v.answerLocal(r, name, keys, v.now())
}

// answerLocal validates an authoritative reply with the zone's keys: a TLSA RRset
// with a valid RRSIG, or a signed NSEC proving there is none. The answer is cached no
// longer than the RRSIG that verified allows (its original TTL and expiration).
func (v *Verifier) answerLocal(r *dns.Msg, name string, keys map[uint16]*dns.DNSKEY, now time.Time) (answer, error) {
	rrs, ttl := tlsaOf(r.Answer, name)
	if len(rrs) == 0 {
		nsec, sig := deniedTLSA(r.Ns, name, keys, now)
		if sig == nil {
			return answer{}, fmt.Errorf("%w: no valid proof that %s has no TLSA records", ErrNotValidated, name)
		}
		return answer{ttl: v.negativeTTL(r.Ns, time.Duration(nsec.Hdr.Ttl)*time.Second, sigLifetime(sig, now))}, nil
	}
	set := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		set[i] = rr
	}
	sig := validSig(r.Answer, set, keys, now)
	if sig == nil {
		return answer{}, fmt.Errorf("%w: no valid RRSIG over the TLSA RRset of %s", ErrNotValidated, name)
	}
	return answer{tlsa: rrs, ttl: v.ttlCap(ttl, sigLifetime(sig, now))}, nil
}

// deniedTLSA returns a validly signed NSEC at name whose type bitmap has neither TLSA
// nor CNAME, and its RRSIG; nil if there is none.
func deniedTLSA(authority []dns.RR, name string, keys map[uint16]*dns.DNSKEY, now time.Time) (*dns.NSEC, *dns.RRSIG) {
	for _, rr := range authority {
		nsec, ok := rr.(*dns.NSEC)
		if !ok || !strings.EqualFold(nsec.Hdr.Name, name) || slices.Contains(nsec.TypeBitMap, dns.TypeTLSA) || slices.Contains(nsec.TypeBitMap, dns.TypeCNAME) {
			continue
		}
		if sig := validSig(authority, []dns.RR{nsec}, keys, now); sig != nil {
			return nsec, sig
		}
	}
	return nil, nil
}

// anchoredKeys keeps the zone's DNSKEY RRset from a reply if a key matching the trust
// anchor signs it.
func anchoredKeys(r *dns.Msg, zone string, anchors []dns.RR, now time.Time) (map[uint16]*dns.DNSKEY, error) {
	keys := map[uint16]*dns.DNSKEY{}
	var set []dns.RR
	anchored := map[uint16]*dns.DNSKEY{}
	for _, rr := range r.Answer {
		k, ok := rr.(*dns.DNSKEY)
		if !ok || !strings.EqualFold(k.Hdr.Name, zone) {
			continue
		}
		set = append(set, k)
		keys[k.KeyTag()] = k
		for _, ta := range anchors {
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
	if len(anchored) == 0 || validSig(r.Answer, set, anchored, now) == nil {
		return nil, fmt.Errorf("%w: the DNSKEY RRset of %s is not signed by a trust anchor", ErrNotValidated, zone)
	}
	return keys, nil
}

// validSig returns an RRSIG in section over set that verifies with one of keys and is
// within its validity period at now, or nil.
func validSig(section []dns.RR, set []dns.RR, keys map[uint16]*dns.DNSKEY, now time.Time) *dns.RRSIG {
	for _, rr := range section {
		sig, ok := rr.(*dns.RRSIG)
		if !ok || sig.TypeCovered != set[0].Header().Rrtype || !strings.EqualFold(sig.Hdr.Name, set[0].Header().Name) {
			continue
		}
		if k := keys[sig.KeyTag]; k != nil && sig.ValidityPeriod(now) && sig.Verify(k, set) == nil {
			return sig
		}
	}
	return nil
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
