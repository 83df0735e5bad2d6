package deviceid

import (
	"errors"
	"hash/maphash"
	"time"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// reply is an answer assembled from packed records.
type reply struct {
	rcode      int
	answer     []packedRR // published records are copied; the rest skipped
	answerSigs *sigs      // RRSIGs of the answer, with DO
	authority  []byte     // packed records of the authority section
	nAuthority uint16
}

// reply assembles the answer for a name under the apex, or a negative answer: with DO
// and a signed zone, with RRSIGs, and for negative answers an NSEC at the query name
// as RFC 9824 (compact denial of existence) describes.
func (z *zone) reply(state request.Request, a answer, do bool, now time.Time) (reply, error) {
	qname := state.Name()
	if published(a.tlsa, now.UnixNano()) {
		rep := reply{rcode: dns.RcodeSuccess, answer: a.tlsa}
		if do {
			e, err := z.signer.signed(z.signer.exist, a.key(qname, now.UnixNano()), forAnswer, now, func() []dns.RR {
				var rrs []dns.RR
				for _, p := range a.tlsa {
					if p.current(now.UnixNano()) {
						rrs = append(rrs, p.tlsa(qname))
					}
				}
				return rrs
			})
			if err != nil {
				return rep, err
			}
			rep.answerSigs = e
		}
		return rep, nil
	}

	rep := reply{rcode: dns.RcodeSuccess, authority: a.soa, nAuthority: 1}
	if !a.exists {
		rep.rcode = dns.RcodeNameError
	}
	if !do {
		return rep, nil
	}
	// Compact denial: a name that does not exist gets NOERROR and an NSEC with the
	// NXNAME type, unless the query sets CO (then NXDOMAIN as well).
	if o := state.Req.IsEdns0(); !a.exists && (o == nil || !o.Co()) {
		rep.rcode = dns.RcodeSuccess
	}
	s := z.signer
	soa, err := s.signed(s.exist, rrsetKey(z.origin, dns.TypeSOA, a.soa), forAuthority, now, func() []dns.RR {
		return []dns.RR{a.soaRR}
	})
	if err != nil {
		return rep, err
	}
	types := a.types(z, now.UnixNano())
	if len(qname)+3 > 255 { // "\000." (2 octets) makes the next name longer than a name can be
		return rep, errNameTooLong
	}
	cache := s.exist
	if !a.exists {
		cache = s.nonexist
	}
	bitmap := make([]byte, 0, 2*len(types))
	for _, t := range types {
		bitmap = append(bitmap, byte(t>>8), byte(t))
	}
	nsec, err := s.signed(cache, rrsetKey(qname, dns.TypeNSEC, bitmap), forNSEC, now, func() []dns.RR {
		return []dns.RR{&dns.NSEC{
			Hdr:        dns.RR_Header{Name: qname, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: z.cfg.ttl},
			NextDomain: "\\000." + qname,
			TypeBitMap: types,
		}}
	})
	if err != nil {
		return rep, err
	}
	auth := make([]byte, 0, len(a.soa)+len(soa.wire)+len(nsec.set)+len(nsec.wire))
	auth = append(append(append(append(auth, a.soa...), soa.wire...), nsec.set...), nsec.wire...)
	rep.authority = auth
	rep.nAuthority = 1 + soa.n + 1 + nsec.n
	return rep, nil
}

// errNameTooLong: a name this long cannot be denied with an NSEC at \000.<qname>.
// Only a client can send one, so it is not logged.
var errNameTooLong = errors.New("query name too long for a compact denial")

// types lists the types that exist at the answer's name, for its NSEC (ascending).
func (a answer) types(z *zone, now int64) []uint16 {
	switch {
	case a.isApex:
		t := []uint16{dns.TypeNS, dns.TypeSOA, dns.TypeRRSIG, dns.TypeNSEC, dns.TypeDNSKEY}
		if z.signer.keys.cds != nil {
			t = append(t, dns.TypeCDS, dns.TypeCDNSKEY)
		}
		return t
	case !a.exists:
		return []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNXNAME}
	case published(a.stored, now):
		return []uint16{dns.TypeRRSIG, dns.TypeNSEC, dns.TypeTLSA}
	}
	return []uint16{dns.TypeRRSIG, dns.TypeNSEC} // an empty non-terminal, or no current record
}

// writeApex answers for an RRset at the apex (SOA, NS, DNSKEY, CDS, CDNSKEY) with a message.
func (z *zone) writeApex(w dns.ResponseWriter, state request.Request, a answer, do bool, now time.Time) error {
	m := new(dns.Msg)
	m.SetReply(state.Req)
	m.Authoritative = true
	if !do {
		m.Answer = withSigs(a.apex, &sigs{}, state.QName())
		return w.WriteMsg(m)
	}
	var packed [][]byte
	for _, rr := range a.apex {
		packed = append(packed, packRR(rr))
	}
	t := a.apex[0].Header().Rrtype
	e, err := z.signer.signed(z.signer.exist, rrsetKey(z.origin, t, packed...), forMessage, now, func() []dns.RR { return a.apex })
	if err != nil {
		return err
	}
	m.Answer = withSigs(a.apex, e, state.QName())
	return w.WriteMsg(m)
}

// key identifies the published part of the answer's TLSA RRset at now: the sum made
// when it was stored while every record is current, a fresh one after some expired.
func (a answer) key(qname string, now int64) uint64 {
	for i := range a.tlsa {
		if !a.tlsa[i].current(now) {
			return tlsaKey(qname, a.tlsa, now)
		}
	}
	return a.sum
}

// tlsaKey identifies the records of rrs published at now, at qname.
func tlsaKey(qname string, rrs []packedRR, now int64) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	h.WriteString(qname)
	for i := range rrs {
		if rrs[i].current(now) {
			h.Write(rrs[i].wire)
		}
	}
	return h.Sum64()
}
