package record

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/miekg/dns"
)

// TLSA parameters (RFC 6698, RFC 7218) and the PKIX-CD usage (draft-wilson-dane-pkix-cd).
const (
	UsageDANETA  = 2
	UsageDANEEE  = 3
	UsagePKIXCD  = 4
	UsageRevoked = 255 // PrivCert; deviceid's default revoked-status usage

	SelectorCert = 0
	SelectorSPKI = 1

	MatchingFull   = 0
	MatchingSHA256 = 1
)

// RenderOptions are the zone settings that shape a device's RRset.
type RenderOptions struct {
	RevokedUsage uint8 // usage of revoked-status records
	Discovery    bool  // publish 4 0 0 certificate discovery records
}

// TLSA renders the device's RRset at owner as of now: 3 1 1 for each active unexpired
// credential, 4 0 0 for each of those with a certificate (when opt.Discovery), and
// RevokedUsage 1 1 for each revoked credential. A key that is revoked in any credential
// is never published as active: a verifier that does not know the revoked usage must
// find no usable record for it. ttl is the zone's TTL; the device's own TTL wins.
func (d *Device) TLSA(owner string, ttl uint32, now time.Time, opt RenderOptions) []dns.RR {
	if d.TTL != nil {
		ttl = *d.TTL
	}
	revoked := make(map[string]bool)
	for _, c := range d.Credentials {
		if c.Status == StatusRevoked {
			revoked[string(c.SPKI)] = true
		}
	}
	var rrs []dns.RR
	seen := make(map[dns.TLSA]bool) // an RRset holds no duplicates
	add := func(usage, selector, matching uint8, data []byte) {
		rr := dns.TLSA{
			Hdr:          dns.RR_Header{Name: owner, Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: ttl},
			Usage:        usage,
			Selector:     selector,
			MatchingType: matching,
			Certificate:  hex.EncodeToString(data),
		}
		if !seen[rr] {
			seen[rr] = true
			rrs = append(rrs, &rr)
		}
	}
	for _, c := range d.Credentials {
		switch {
		case c.Status == StatusRevoked:
			sum := sha256.Sum256(c.SPKI)
			add(opt.RevokedUsage, SelectorSPKI, MatchingSHA256, sum[:])
		case revoked[string(c.SPKI)] || c.Expired(now):
		default:
			sum := sha256.Sum256(c.SPKI)
			add(UsageDANEEE, SelectorSPKI, MatchingSHA256, sum[:])
			if opt.Discovery && c.Cert != nil {
				add(UsagePKIXCD, SelectorCert, MatchingFull, c.Cert)
			}
		}
	}
	return rrs
}

// NextChange returns the earliest time after now at which the rendered RRset changes
// because an active credential expires, or the zero time if it never does by itself.
func (d *Device) NextChange(now time.Time) time.Time {
	var next time.Time
	for _, c := range d.Credentials {
		if c.Status != StatusActive || c.NotAfter == nil || !c.NotAfter.After(now) {
			continue
		}
		if next.IsZero() || c.NotAfter.Before(next) {
			next = *c.NotAfter
		}
	}
	return next
}

// CATLSA renders the 2 0 0 discovery record of a CA certificate (DER) at owner.
func CATLSA(owner string, ttl uint32, der []byte) dns.RR {
	return &dns.TLSA{
		Hdr:          dns.RR_Header{Name: owner, Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: ttl},
		Usage:        UsageDANETA,
		Selector:     SelectorCert,
		MatchingType: MatchingFull,
		Certificate:  hex.EncodeToString(der),
	}
}
