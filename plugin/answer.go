package deviceid

import (
	"bytes"
	"encoding/binary"
	"errors"
	"time"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// errNameTooLong: a name this long cannot be denied with an NSEC at \000.<qname>.
// Only a client can send one, so it is not logged.
var errNameTooLong = errors.New("query name too long for a compact denial")

// errNotLoaded: the zone has not been loaded from etcd yet.
var errNotLoaded = errors.New("zone not loaded from etcd yet")

// errRefused: over the signing budget for longer than a query may wait.
var errRefused = errors.New("over the signing budget")

// errHandOver: the fast path does not answer this query; the CoreDNS chain does.
var errHandOver = errors.New("handed over to the chain")

// answer adds to p (started with the question) the answer to q for qname (lower case,
// below the apex) in the zone. For a name that exists the answer is copied from the
// store with the signatures made ahead; only when they are missing (the first signing
// pass still running, a record expired a moment ago) is it signed here. A name that
// does not exist gets the compact denial of RFC 9824, its NSEC signed here within the
// budget. fast (the fast path) signs nothing: where a signature would be made it
// returns errHandOver, having changed nothing.
func (z *zone) answer(p *packet, q *query, qname string, do, fast bool, now time.Time) error {
	z.mu.RLock()
	zd := z.data
	if zd == nil {
		z.mu.RUnlock()
		return errNotLoaded
	}
	ap := zd.apex.Load()
	ns := now.UnixNano()
	wire := q.wire
	if wire == nil {
		var err error
		if wire, err = packName(p.ab.name[:], qname); err != nil {
			z.mu.RUnlock()
			return err
		}
	}
	a := nameAnswer{p: p, ap: ap, qtype: q.qtype, do: do, wire: wire, now: ns}
	var stale entry // a copy of the entry, when its answer is signed here
	found := zd.st.view(qname, func(e entry) {
		if inc, exp := e.signed(); allCurrent(e.rrset(), ns) && (!do || inc != 0 && fresh(exp, ns)) {
			a.rr, a.sigs = e.rrset(), e.sigs()
			z.compose(a)
		} else if !fast {
			stale = bytes.Clone(e)
		} else {
			stale = e // not kept: it only says that the fast path hands over
		}
	})
	z.mu.RUnlock()
	if fast && stale != nil {
		return errHandOver
	}
	if found && z.signer != nil {
		z.signer.budget.sawExisting(ns)
	}
	var rr []byte // with stale: the records published now
	if stale != nil {
		rr = currentRecords(stale.rrset(), ns)
	}
	switch {
	case found && stale == nil:
		if do {
			z.signer.hits.Inc()
		}
	case found && (stale.flags()&flagRecord == 0 || len(rr) > 0):
		// A record of the name expired a moment ago and the background signer has not
		// withdrawn it yet, or (with DO) the first signing pass has not reached the
		// name: the answer is made here.
		a.rr = rr
		if !do {
			z.compose(a)
			break
		}
		z.signer.misses.Inc()
		sigs, err := z.makeSigs(ap.keys, stale.owner(), rr, now, true)
		if err != nil {
			return err
		}
		if bytes.Equal(rr, stale.rrset()) {
			z.storeSigs(zd, stale, sigs)
		}
		a.sigs = *sigs
		z.compose(a)
	default: // no such name, or one whose every record has expired
		return z.deny(p, q, ap, do, fast, wire, now)
	}
	return nil
}

// nameAnswer is what compose writes: the answer to a query for a name that exists.
type nameAnswer struct {
	p     *packet
	ap    *apex
	qtype uint16
	do    bool
	wire  []byte    // the query name in wire form
	now   int64     // Unix ns: the records that have expired by then are left out
	rr    []byte    // the name's packed RRset; empty for an empty non-terminal
	sigs  entrySigs // with do: the signatures over rr and over the NSEC at the name
}

// compose adds the answer for a name that exists to a.p: its TLSA records when asked
// for (and published), else NODATA; with do, their RRSIGs and the NSEC at the name.
func (z *zone) compose(a nameAnswer) {
	p := a.p
	labels := wireLabels(a.wire)
	if (a.qtype == dns.TypeTLSA || a.qtype == dns.TypeANY) && len(a.rr) > 0 {
		var ttl uint32
		eachRecord(a.rr, func(until int64, w []byte) {
			if until == 0 || a.now < until {
				p.buf = append(p.buf, w...)
				p.an++
				ttl = binary.BigEndian.Uint32(w[6:])
			}
		})
		if a.do && p.an > 0 {
			p.buf = z.signer.appendRRSIGs(p.buf, a.ap.keys, dns.TypeTLSA, labels, ttl, a.sigs.inc, a.sigs.exp, a.sigs.tlsa())
			p.an += uint16(a.ap.keys.nz())
		}
		if p.an > 0 {
			return
		}
	}
	if !a.do {
		p.buf = append(p.buf, a.ap.soaAuth[:a.ap.soaLen]...)
		p.ns++
		return
	}
	p.buf = append(p.buf, a.ap.soaAuth...)
	p.ns += a.ap.nSOA
	p.buf = appendNSECAtQuestion(p.buf, z.cfg.ttl, a.wire, len(a.rr) > 0)
	p.buf = z.signer.appendRRSIGs(p.buf, a.ap.keys, dns.TypeNSEC, labels, z.cfg.ttl, a.sigs.inc, a.sigs.exp, a.sigs.nsec())
	p.ns += 1 + uint16(a.ap.keys.nz())
}

// appendNSECAtQuestion appends the NSEC at the question name.
func appendNSECAtQuestion(b []byte, ttl uint32, wire []byte, tlsa bool) []byte {
	b = append(b, ownerPointer...)
	b = binary.BigEndian.AppendUint16(b, dns.TypeNSEC)
	b = binary.BigEndian.AppendUint16(b, dns.ClassINET)
	b = binary.BigEndian.AppendUint32(b, ttl)
	at := len(b)
	b = append(b, 0, 0)
	b = appendNSEC(b, wire, tlsa)
	binary.BigEndian.PutUint16(b[at:], uint16(len(b)-at-2))
	return b
}

// deny adds the denial of a name that does not exist: NXDOMAIN and the SOA; with DO
// the compact denial of RFC 9824: NOERROR (NXDOMAIN when the query sets CO), the SOA
// and an NSEC from the name to \000.name with the types RRSIG NSEC NXNAME, signed.
func (z *zone) deny(p *packet, q *query, ap *apex, do, fast bool, wire []byte, now time.Time) error {
	p.rcode = dns.RcodeNameError
	if !do {
		p.buf = append(p.buf, ap.soaAuth[:ap.soaLen]...)
		p.ns++
		return nil
	}
	if len(wire)+2 > 255 { // "\000." makes the next name longer than a name can be
		return errNameTooLong
	}
	if !q.co() {
		p.rcode = dns.RcodeSuccess
	}
	s, ks := z.signer, ap.keys
	nz := ks.nz()
	var sigs []byte
	if nz <= 4 {
		sigs = p.ab.sigs[:nz*sigSize]
	} else {
		sigs = make([]byte, nz*sigSize)
	}
	ns := now.UnixNano()
	inc, exp, ok := s.nx.get(ks, wire, sigs, ns)
	if ok {
		s.hits.Inc()
	} else if fast { // UDP: a signature is the chain's to make; over the budget, TC
		if s.budget.wouldSign(ns) {
			return errHandOver
		}
		s.overBudget(ns, "truncated")
		p.truncate()
		return nil
	} else {
		switch verdict, wait := s.budget.take(ns, q.tcp); verdict {
		case budgetTruncate:
			s.overBudget(ns, "truncated")
			p.truncate()
			return nil
		case budgetRefuse:
			s.overBudget(ns, "refused")
			return errRefused
		case budgetWait:
			s.overBudget(ns, "delayed")
			time.Sleep(wait)
		}
		s.misses.Inc()
		inc, exp = s.times(now)
		nsec := append(append(append(p.ab.rdata[:0], 1, 0), wire...), bitmapNXNAME...)
		one := [1][]byte{nsec}
		if err := s.signNow(ks, sigs, wire, dns.TypeNSEC, z.cfg.ttl, inc, exp, one[:]); err != nil {
			return err
		}
		s.nx.put(ks, wire, sigs, inc, exp)
	}
	p.buf = append(p.buf, ap.soaAuth...)
	p.ns += ap.nSOA
	p.buf = append(p.buf, ownerPointer...)
	p.buf = binary.BigEndian.AppendUint16(p.buf, dns.TypeNSEC)
	p.buf = binary.BigEndian.AppendUint16(p.buf, dns.ClassINET)
	p.buf = binary.BigEndian.AppendUint32(p.buf, z.cfg.ttl)
	p.buf = binary.BigEndian.AppendUint16(p.buf, uint16(2+len(wire)+len(bitmapNXNAME)))
	p.buf = append(append(append(p.buf, 1, 0), wire...), bitmapNXNAME...)
	p.buf = s.appendRRSIGs(p.buf, ks, dns.TypeNSEC, wireLabels(wire), z.cfg.ttl, inc, exp, sigs)
	p.ns += 1 + uint16(nz)
	return nil
}

// packName packs name into buf (256 octets) in wire form.
func packName(buf []byte, name string) ([]byte, error) {
	n, err := dns.PackDomainName(name, buf, 0, nil, false)
	return buf[:n], err
}

// serveApex answers a query for the apex, or errNotLoaded.
func (z *zone) serveApex(w dns.ResponseWriter, state request.Request, do bool, now time.Time) error {
	zd := z.current()
	if zd == nil {
		return errNotLoaded
	}
	return z.writeApex(w, state, zd.apex.Load(), state.QType(), do, now)
}

// writeApex answers for the apex with a message: SOA, NS, DNSKEY, CDS, CDNSKEY, or
// NODATA, with the signatures made ahead (made here when the HSM that should have
// made them was away).
func (z *zone) writeApex(w dns.ResponseWriter, state request.Request, ap *apex, qtype uint16, do bool, now time.Time) error {
	m := new(dns.Msg)
	m.SetReply(state.Req)
	m.Authoritative = true
	t := qtype
	if t == dns.TypeANY { // RFC 8482: one RRset is enough
		t = dns.TypeSOA
	}
	set := ap.sets[t]
	if t == dns.TypeNSEC || (set != nil && t != dns.TypeNS && t != dns.TypeSOA && !do && z.signer == nil) {
		set = nil
	}
	rrs := func(set *apexSet) ([]dns.RR, error) {
		out := set.rrs
		if do {
			sigs := set.sigs
			if sigs == nil {
				var err error
				if sigs, err = z.signRRs(ap.keys, set.rrs, now); err != nil {
					return nil, err
				}
			}
			out = append(out[:len(out):len(out)], sigs...)
		}
		return withOwner(out, state.QName()), nil
	}
	var err error
	if set != nil {
		m.Answer, err = rrs(set)
		return errors.Join(err, z.writeMsg(w, state, m))
	}
	if m.Ns, err = rrs(ap.sets[dns.TypeSOA]); err != nil {
		return err
	}
	if do {
		nsec, err := rrs(ap.sets[dns.TypeNSEC])
		if err != nil {
			return err
		}
		m.Ns = append(m.Ns, nsec...)
	}
	return z.writeMsg(w, state, m)
}

// writeMsg writes m, or, when it is larger than the client's buffer (over UDP at most
// max_udp_size), the same answer with TC and no records, as finish does.
func (z *zone) writeMsg(w dns.ResponseWriter, state request.Request, m *dns.Msg) error {
	m.Compress = true
	optLen := 0
	if state.Req.IsEdns0() != nil {
		optLen = 11
	}
	if m.Len()+optLen > state.Size() {
		m.Answer, m.Ns, m.Truncated = nil, nil, true
		udpTruncated.WithLabelValues(z.origin).Inc()
	}
	return w.WriteMsg(m)
}

// withOwner returns copies of rrs with owner name qname.
func withOwner(rrs []dns.RR, qname string) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		rr = dns.Copy(rr)
		rr.Header().Name = qname
		out[i] = rr
	}
	return out
}
