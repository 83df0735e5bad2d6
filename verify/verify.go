// Package verify authenticates both ends of a TLS connection by DANE. A Go TLS server
// plugs a Verifier into tls.Config.VerifyPeerCertificate, and a client certificate is
// accepted only if a DNSSEC-validated TLSA record at the client's identity name (the
// _device dNSName in its SAN) matches it (draft-ietf-dance-client-auth). A Go TLS
// client (a device) uses ClientConfig, and the server's certificate is accepted only if
// the TLSA RRset at _<port>._tcp.<host> vouches for it (RFC 6698/7671; server.go).
//
// How long an answer is trusted: the TTL in a record's header is not signed, so an
// on-path relay can rewrite it. A cached answer therefore never outlives the least of
// its TTL, the original TTL its RRSIG carries (signed), the RRSIG's expiration, and
// MaxTTL (DefaultMaxTTL when 0); a proven absence also at most MaxNegativeTTL. In local
// validation the RRSIG is the one that verified; trusting a resolver's AD bit, the
// RRSIGs it returns (the query sets DO) are used when present, and MaxTTL alone bounds
// an answer without them. A verifier trusts a resolver's AD bit only on loopback
// unless ResolverTrusted says the path to it is trusted (Check).
//
// The files: verify.go, the Verifier, client identity and matching (RFC 6698/7671);
// resolve.go, the validating lookup (a resolver's AD bit, or local validation from a
// trust anchor) and how long an answer is cached; server.go, server authentication;
// cache.go, the answer cache.
//
// It lives in its own package, apart from the signer and the plugin, because it is
// what third parties import into their servers: it depends on neither, only on record
// for deviceid's names and TLSA constants (record imports no CoreDNS or etcd code).
package verify

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

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
	// trusted path: its AD bit is trusted. Used when TrustAnchor is empty. It must be
	// on loopback unless ResolverTrusted is set.
	Resolver string
	// ResolverTrusted says the path to a Resolver not on loopback is trusted (a
	// private link, or DNS over TLS terminated on this host): anyone on the path can
	// set the AD bit of a forged answer.
	ResolverTrusted bool
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
	// MaxTTL caps how long an answer is cached, whatever its TTL and signatures say
	// (DefaultMaxTTL when 0): the bound of last resort when a resolver returns no
	// RRSIGs.
	MaxTTL time.Duration
	// Now is the clock of the cache and of signature validity (time.Now when nil);
	// tests set it.
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

// DefaultMaxTTL is MaxTTL when unset: an hour, far above the zone's TTL (60 s by
// default), which with the RRSIG's original TTL is the usual bound.
const DefaultMaxTTL = time.Hour

// MaxNegativeTTL caps how long a name without TLSA records stays refused from the
// cache, so a device enrolled right after a refused attempt is accepted soon.
const MaxNegativeTTL = time.Minute

// Check reports a configuration that cannot work or must not be trusted: neither
// trust mode given, or a resolver whose AD bit would be trusted over a path that is
// not loopback without ResolverTrusted. Lookups refuse such a resolver too; commands
// call Check at start to say so at once.
func (v *Verifier) Check() error {
	if len(v.TrustAnchor) > 0 {
		if v.Server == "" {
			return errors.New("verify: local validation (a trust anchor) needs the zone's server")
		}
		return nil
	}
	if v.Resolver == "" {
		return errors.New("verify: give a validating resolver, or a trust anchor and a server")
	}
	return v.checkResolver()
}

// checkResolver refuses a resolver off loopback unless its path is declared trusted.
func (v *Verifier) checkResolver() error {
	if v.ResolverTrusted {
		return nil
	}
	host, _, err := net.SplitHostPort(v.Resolver)
	if err != nil {
		return fmt.Errorf("verify: resolver %q: %v", v.Resolver, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%w: the resolver %s is not on loopback, and its AD bit is trusted only over a trusted path (ResolverTrusted)",
		ErrNotValidated, v.Resolver)
}

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
	// Expires is when the answer the verdict came from stops being used (its cache
	// lifetime): a caller that keeps a verdict, like a broker for a session, must
	// verify again by then.
	Expires time.Time
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
	rrs, expires, err := v.lookup(ctx, name)
	if err != nil {
		return Result{Name: name}, err
	}
	rr, err := v.match(name, chain, rrs)
	return Result{Name: name, Matched: rr, Expires: expires}, err
}

// identity returns the client's _device name in an accepted zone, from its SAN.
func (v *Verifier) identity(cert *x509.Certificate) (string, error) {
	for _, n := range cert.DNSNames {
		name := dns.Fqdn(strings.ToLower(n))
		if !strings.Contains(name, "."+record.DeviceLabel+".") {
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
		case record.UsageDANEEE: // DANE-EE: the key or certificate itself; dates and names are not checked (RFC 7671 §5.1)
			if matches(rr, leaf) {
				return rr, nil
			}
		case record.UsageDANETA: // DANE-TA: a CA in the chain, and the name in the leaf's SAN
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

func (v *Verifier) revokedUsage() uint8 {
	if v.RevokedUsage == 0 {
		return record.UsageRevoked
	}
	return v.RevokedUsage
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
