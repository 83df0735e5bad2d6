package deviceid

import (
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// zone serves one zone's records from memory. The etcd loop of the zone is its only
// writer; queries read it under the read lock. A full reload builds a new index and
// swaps it in, so a query sees either the old data or the new, never a mix.
type zone struct {
	origin string // lower case, fully qualified
	cfg    *config

	signer *signer // nil: the zone is not signed

	mu     sync.RWMutex
	idx    *index        // nil until the first full load
	loaded chan struct{} // closed at the first full load

	// rejected remembers the revision of each invalid key already logged, so each
	// bad version is logged and counted once. Only the etcd loop uses it.
	rejected map[string]int64
}

// index is the in-memory form of one zone at one etcd revision.
type index struct {
	origin string
	cfg    *config
	names  map[string]*node // lower-case owner name → node
	// loadRevision is the etcd revision of the full load; revision that of the last
	// change applied since, which the SOA serial follows.
	loadRevision int64
	revision     int64
	soa          *dns.SOA
	soaWire      []byte // the SOA packed, for the authority section of negative answers
	ns           []dns.RR
	devices      int
}

// node is one owner name that exists: a record (device or CA) or an empty non-terminal.
type node struct {
	tlsa   []packedRR // the RRset with its expiries; replaced, never mutated
	sum    uint64     // tlsaKey of the whole RRset, to find its signatures
	device bool       // a device record is stored here
	record bool       // a device or CA record is stored here
	below  int32      // records stored under this name
}

// newIndex returns an empty index at revision, with room for size names.
func newIndex(origin string, cfg *config, revision int64, size int) *index {
	ns := make([]dns.RR, len(cfg.ns))
	for i, n := range cfg.ns {
		ns[i] = &dns.NS{Hdr: dns.RR_Header{Name: origin, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: cfg.ttl}, Ns: n}
	}
	idx := &index{origin: origin, cfg: cfg, names: make(map[string]*node, size), ns: ns, loadRevision: revision}
	idx.setSerial(revision)
	return idx
}

// setSerial sets the SOA serial to the etcd revision of the last change (mod 2^32).
func (x *index) setSerial(revision int64) {
	x.revision = revision
	x.soa = &dns.SOA{
		Hdr:     dns.RR_Header{Name: x.origin, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: x.cfg.ttl},
		Ns:      x.cfg.ns[0],
		Mbox:    "hostmaster." + x.origin,
		Serial:  uint32(revision),
		Refresh: 7200,
		Retry:   1800,
		Expire:  1209600,
		Minttl:  x.cfg.ttl, // the negative TTL: a device provisioned after a miss shows up within it
	}
	x.soaWire = packRR(x.soa)
}

// deviceTLSA renders and packs a device's RRset.
func (cfg *config) deviceTLSA(d *record.Device, now time.Time) []packedRR {
	return packAll(d.Render(cfg.ttl, now, cfg.render))
}

// caTLSA renders and packs the RRset of a CA discovery record.
func (cfg *config) caTLSA(der []byte) []packedRR {
	return []packedRR{packTLSA(record.CAPublished(cfg.ttl, der))}
}

// put stores a record's RRset at owner, counting a new record in its ancestors.
func (x *index) put(owner string, tlsa []packedRR, device bool) {
	n := x.names[owner]
	if n == nil {
		n = &node{}
		x.names[owner] = n
	}
	if !n.record {
		x.ancestors(owner, func(a string) {
			p := x.names[a]
			if p == nil {
				p = &node{}
				x.names[a] = p
			}
			p.below++
		})
	}
	if device && !n.device {
		x.devices++
	}
	n.record, n.device, n.tlsa = true, device, tlsa
	n.sum = tlsaKey(owner, tlsa, 0)
}

// remove deletes the record at owner; names that no longer hold or lead to a record go.
func (x *index) remove(owner string) {
	n := x.names[owner]
	if n == nil || !n.record {
		return
	}
	if n.device {
		x.devices--
	}
	n.record, n.device, n.tlsa = false, false, nil
	if n.below == 0 {
		delete(x.names, owner)
	}
	x.ancestors(owner, func(a string) {
		p := x.names[a]
		if p.below--; p.below == 0 && !p.record {
			delete(x.names, a)
		}
	})
}

// ancestors calls f for each name strictly between owner and the apex.
func (x *index) ancestors(owner string, f func(string)) {
	for name := owner; ; {
		_, parent, ok := strings.Cut(name, ".")
		if !ok || len(parent) <= len(x.origin) {
			return
		}
		f(parent)
		name = parent
	}
}

// answer is what a query finds in the zone, read under the lock and used after it.
type answer struct {
	exists bool       // the name exists (record, empty non-terminal, or apex)
	isApex bool       // the name is the zone apex
	soaRR  *dns.SOA   // the SOA, to sign
	apex   []dns.RR   // apex RRs of the queried type
	tlsa   []packedRR // TLSA RRs, when the query asks for them
	stored []packedRR // TLSA RRs at the name, for the NSEC type bitmap
	sum    uint64     // tlsaKey of the whole TLSA RRset
	soa    []byte     // packed SOA for the authority section of negative answers
}

// lookup finds qname (lower case) and qtype in the zone. ok is false before the first load.
func (z *zone) lookup(qname string, qtype uint16) (a answer, ok bool) {
	z.mu.RLock()
	defer z.mu.RUnlock()
	x := z.idx
	if x == nil {
		return a, false
	}
	a.soa, a.soaRR = x.soaWire, x.soa
	if qname == x.origin {
		a.exists, a.isApex = true, true
		switch qtype {
		case dns.TypeSOA, dns.TypeANY: // RFC 8482: one RRset is enough for ANY
			a.apex = []dns.RR{x.soa}
		case dns.TypeNS:
			a.apex = x.ns
		}
		if z.signer != nil {
			switch qtype {
			case dns.TypeDNSKEY:
				a.apex = z.signer.keys.dnskey
			case dns.TypeCDS:
				a.apex = z.signer.keys.cds
			case dns.TypeCDNSKEY:
				a.apex = z.signer.keys.cdnskey
			}
		}
		return a, true
	}
	n := x.names[qname]
	if n == nil {
		return a, true
	}
	a.exists, a.stored, a.sum = true, n.tlsa, n.sum
	if qtype == dns.TypeTLSA || qtype == dns.TypeANY {
		a.tlsa = n.tlsa
	}
	return a, true
}

// swap installs a freshly loaded index.
func (z *zone) swap(x *index) {
	z.mu.Lock()
	first := z.idx == nil
	z.idx = x
	z.mu.Unlock()
	if first {
		close(z.loaded)
	}
}

// update applies f to the current index under the write lock.
func (z *zone) update(f func(x *index)) {
	z.mu.Lock()
	f(z.idx)
	z.mu.Unlock()
}
