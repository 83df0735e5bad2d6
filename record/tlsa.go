package record

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"math"
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

// Published is one TLSA record of a device without its owner name, and when it stops
// being published: Until in Unix nanoseconds, 0 for as long as the record is stored.
// Keeping the expiry with the record lets a server withdraw an expired credential at
// the instant it expires without keeping the device record. It is kept small: a
// server holds one or more for each of a million devices.
type Published struct {
	Data         []byte // certificate association data; hex only in RR, at half the memory
	Until        int64
	TTL          uint32
	Usage        uint8
	Selector     uint8
	MatchingType uint8
}

// Current reports whether p is still published at now (Unix nanoseconds).
func (p *Published) Current(now int64) bool { return p.Until == 0 || now < p.Until }

// RR returns p as a TLSA record at owner.
func (p *Published) RR(owner string) *dns.TLSA {
	return &dns.TLSA{
		Hdr:          dns.RR_Header{Name: owner, Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: p.TTL},
		Usage:        p.Usage,
		Selector:     p.Selector,
		MatchingType: p.MatchingType,
		Certificate:  hex.EncodeToString(p.Data),
	}
}

// Render renders the device's RRset: 3 1 1 for each active credential that has not
// expired by now, 4 0 0 for each of those with a certificate (when opt.Discovery), and
// RevokedUsage 1 1 for each revoked credential; a suspended device publishes only the last. A key that is revoked in any
// credential is never published as active: a verifier that does not know the revoked
// usage must find no usable record for it. ttl is the zone's TTL; the device's own
// TTL wins.
func (d *Device) Render(ttl uint32, now time.Time, opt RenderOptions) []Published {
	if d.TTL != nil {
		ttl = *d.TTL
	}
	var revoked map[string]bool // made only when needed: most devices have no revoked key
	for _, c := range d.Credentials {
		if c.Status == StatusRevoked {
			if revoked == nil {
				revoked = make(map[string]bool)
			}
			revoked[string(c.SPKI)] = true
		}
	}
	pub := make([]Published, 0, len(d.Credentials))
	add := func(usage, selector, matching uint8, data []byte, until int64) {
		p := Published{Data: data, Until: until, TTL: ttl, Usage: usage, Selector: selector, MatchingType: matching}
		for i, q := range pub { // an RRset holds no duplicates; the longest-lived one stays
			if bytes.Equal(q.Data, p.Data) && q.Usage == p.Usage && q.Selector == p.Selector && q.MatchingType == p.MatchingType {
				if q.Until != 0 && (until == 0 || until > q.Until) {
					pub[i].Until = until
				}
				return
			}
		}
		pub = append(pub, p)
	}
	for _, c := range d.Credentials {
		switch {
		case c.Status == StatusRevoked:
			add(opt.RevokedUsage, SelectorSPKI, MatchingSHA256, sha256Of(c.SPKI), 0)
		case revoked[string(c.SPKI)] || c.Expired(now) || d.Suspended():
		default:
			var until int64
			if c.NotAfter != nil {
				until = unixNano(*c.NotAfter)
			}
			add(UsageDANEEE, SelectorSPKI, MatchingSHA256, sha256Of(c.SPKI), until)
			if opt.Discovery && c.Cert != nil {
				add(UsagePKIXCD, SelectorCert, MatchingFull, c.Cert, until)
			}
		}
	}
	return pub
}

// maxUnixNano is the last instant UnixNano can represent (in the year 2262).
var maxUnixNano = time.Unix(0, math.MaxInt64)

// unixNano is t.UnixNano, held at its largest value for later times: IEEE 802.1AR
// device certificates that never expire say 99991231235959Z, whose UnixNano would
// overflow and make the credential look expired.
func unixNano(t time.Time) int64 {
	if t.After(maxUnixNano) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

func sha256Of(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

// TLSA returns the device's RRset at owner as published at now.
func (d *Device) TLSA(owner string, ttl uint32, now time.Time, opt RenderOptions) []dns.RR {
	var rrs []dns.RR
	for _, p := range d.Render(ttl, now, opt) {
		if p.Current(now.UnixNano()) {
			rrs = append(rrs, p.RR(owner))
		}
	}
	return rrs
}

// CAPublished returns the 2 0 0 discovery record of a CA certificate (DER).
func CAPublished(ttl uint32, der []byte) Published {
	return Published{Data: der, TTL: ttl, Usage: UsageDANETA, Selector: SelectorCert, MatchingType: MatchingFull}
}

// RenderService renders a service record's RRset (DANE server authentication): 3 1 1
// for each active, unexpired key and the revoked usage for each revoked one. Only the
// keys and their status matter: no certificate discovery, no device state.
func (d *Device) RenderService(ttl uint32, now time.Time, opt RenderOptions) []Published {
	s := *d
	s.State = ""
	opt.Discovery = false
	return s.Render(ttl, now, opt)
}
