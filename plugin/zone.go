package deviceid

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// zone serves one zone's records from memory. Queries hold the read lock of mu while
// they read data; a full reload builds new data and swaps it in under the write lock,
// so a query sees either the old data or the new, never a mix, and the old store's
// memory is freed only when no query reads it.
type zone struct {
	origin string // lower case, fully qualified
	cfg    *config

	signer *signer // nil: the zone is not signed

	mu     sync.RWMutex
	data   *zoneData     // nil until the first full load
	loaded chan struct{} // closed at the first full load

	// write serializes the changes to the zone's names: the etcd loop's and the
	// background signer's withdrawal of expired records. Signatures are written
	// beside, under the store's own locks.
	write sync.Mutex

	// rejected remembers the revision of each invalid key already logged, so each
	// bad version is logged and counted once. Only the etcd loop uses it.
	rejected map[string]int64

	kick      chan struct{} // wakes the background signer
	apexRetry time.Time     // after a failed renewal at the apex, when to try again

	now func() time.Time // the plugin's clock
}

// zoneData is the zone at one etcd revision.
type zoneData struct {
	st           *store
	loadRevision int64 // the etcd revision of the full load
	devices      atomic.Int64
	revision     atomic.Int64         // the etcd revision of the last change applied
	apex         atomic.Pointer[apex] // replaced whole, under zone.write
	passDone     atomic.Bool          // every name was signed once
	loadedAt     time.Time
}

func (z *zone) newData(revision int64) *zoneData {
	zd := &zoneData{st: newStore(z.signer.nz()), loadRevision: revision, loadedAt: z.now()}
	zd.revision.Store(revision)
	a, _ := z.newApex(revision, nil, z.now()) // what failed is signed on the query path
	zd.apex.Store(a)
	return zd
}

// rrset renders and packs the RRset of a device for the store; it reports false when
// it would not fit in a DNS message.
func (cfg *config) rrset(pub []record.Published) ([]byte, bool) {
	var b []byte
	for _, p := range pub {
		b = binary.BigEndian.AppendUint64(b, uint64(p.Until))
		rdata := append([]byte{p.Usage, p.Selector, p.MatchingType}, p.Data...)
		b = append(b, atQuestion(dns.TypeTLSA, dns.ClassINET, p.TTL, rdata)...)
	}
	return b, len(b) <= maxRRset
}

// deviceRRset renders and packs a device's RRset.
func (cfg *config) deviceRRset(d *record.Device, now time.Time) ([]byte, bool) {
	return cfg.rrset(d.Render(cfg.ttl, now, cfg.render))
}

// serviceRRset renders and packs the RRset of a service record.
func (cfg *config) serviceRRset(d *record.Device, now time.Time) ([]byte, bool) {
	return cfg.rrset(d.RenderService(cfg.ttl, now, cfg.render))
}

// caRRset renders and packs the RRset of a CA discovery record.
func (cfg *config) caRRset(der []byte) ([]byte, bool) {
	return cfg.rrset([]record.Published{record.CAPublished(cfg.ttl, der)})
}

// put stores a record's RRset at owner, counting a new record in its ancestors. A
// record with nothing to publish is not a name: it is removed. sigs, when not nil,
// are the signatures over the RRset and the NSEC at owner (as signEntry makes them).
// The caller holds z.write.
func (z *zone) put(zd *zoneData, owner string, rr []byte, device bool, sigs *entrySigs) {
	if len(rr) == 0 {
		z.remove(zd, owner)
		return
	}
	st := zd.st
	var below uint32
	var was uint8
	var old entry
	st.view(owner, func(e entry) {
		below, was = e.below(), e.flags()
		if sigs == nil && e.signed() && bytes.Equal(e.rrset(), rr) {
			old = bytes.Clone(e) // the same RRset: its signatures stay good
		}
	})
	if was&flagRecord == 0 {
		z.ancestors(owner, func(a string) { z.addBelow(zd, a, 1) })
	}
	flags := uint8(flagRecord)
	if device {
		flags |= flagDevice
	}
	switch {
	case device && was&flagDevice == 0:
		zd.devices.Add(1)
	case !device && was&flagDevice != 0:
		zd.devices.Add(-1)
	}
	e := newEntry(owner, flags, below, rr, st.nz)
	if old != nil {
		copySigs(e, old, st.nz)
	}
	if sigs != nil {
		sigs.into(e, st.nz)
	}
	st.set(owner, e)
}

// remove deletes the record at owner; names that no longer hold or lead to a record
// go. The caller holds z.write.
func (z *zone) remove(zd *zoneData, owner string) {
	var below uint32
	var was uint8
	if !zd.st.view(owner, func(e entry) { below, was = e.below(), e.flags() }) || was&flagRecord == 0 {
		return
	}
	if was&flagDevice != 0 {
		zd.devices.Add(-1)
	}
	if below == 0 {
		zd.st.delete(owner)
	} else { // an empty non-terminal now, whose NSEC lists other types: signed again
		zd.st.set(owner, newEntry(owner, 0, below, nil, zd.st.nz))
		z.signNew(zd, owner)
	}
	z.ancestors(owner, func(a string) { z.addBelow(zd, a, -1) })
}

// addBelow changes the count of records below the name a, creating or deleting the
// empty non-terminal it may be.
func (z *zone) addBelow(zd *zoneData, a string, delta int32) {
	gone := false
	found := zd.st.modify(a, func(e entry) {
		n := int32(e.below()) + delta
		binary.BigEndian.PutUint32(e[hdrBelow:], uint32(n))
		gone = n <= 0 && e.flags()&flagRecord == 0
	})
	switch {
	case !found && delta > 0:
		zd.st.set(a, newEntry(a, 0, uint32(delta), nil, zd.st.nz))
		z.signNew(zd, a)
	case gone:
		zd.st.delete(a)
	}
}

// signNew signs a name's new entry (an empty non-terminal) at once when the zone is
// being followed; during a full load, and until the first pass is done, the
// background signer does it.
func (z *zone) signNew(zd *zoneData, owner string) {
	if z.signer != nil && zd.passDone.Load() {
		z.signEntry(zd, owner, z.now())
	}
}

// ancestors calls f for each name strictly between owner and the apex.
func (z *zone) ancestors(owner string, f func(string)) {
	for name := owner; ; {
		_, parent, ok := strings.Cut(name, ".")
		if !ok || len(parent) <= len(z.origin) {
			return
		}
		f(parent)
		name = parent
	}
}

// swap installs freshly loaded data, and frees the old data's store once no query
// reads it.
func (z *zone) swap(zd *zoneData) {
	z.mu.Lock()
	old := z.data
	z.data = zd
	z.mu.Unlock()
	if old != nil {
		old.st.free()
	} else {
		close(z.loaded)
	}
	z.wake()
}

// current returns the zone's data for a writer (the etcd loop, the background signer).
func (z *zone) current() *zoneData {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.data
}

// wake tells the background signer there is work.
func (z *zone) wake() {
	select {
	case z.kick <- struct{}{}:
	default:
	}
}

// apex is what the zone publishes at its apex at one revision, with signatures made
// ahead. It is replaced whole: when the serial changes, and when signatures are renewed.
type apex struct {
	soa     *dns.SOA
	soaAuth []byte // the SOA and its RRSIGs packed for the authority section (owner uncompressed)
	soaLen  int    // the SOA's part of soaAuth
	nSOA    uint16 // records in soaAuth
	sets    map[uint16]*apexSet
}

// apexSet is one RRset at the apex and its RRSIGs (nil when not signed yet).
type apexSet struct {
	rrs  []dns.RR
	sigs []dns.RR
	made time.Time
}

// newApex builds the apex at revision; with old, the signatures of the RRsets that did
// not change and are not due for renewal (a quarter of their validity) are kept.
// Signatures are made for the RRsets that need them; when that fails (an HSM away),
// the old ones are kept while they are valid, else the RRset is signed on the query
// path, and the error is returned for a retry.
func (z *zone) newApex(revision int64, old *apex, now time.Time) (*apex, error) {
	cfg := z.cfg
	soa := &dns.SOA{
		Hdr:     dns.RR_Header{Name: z.origin, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: cfg.ttl},
		Ns:      cfg.ns[0],
		Mbox:    "hostmaster." + z.origin,
		Serial:  uint32(revision), // the etcd revision of the last change (mod 2^32)
		Refresh: 7200,
		Retry:   1800,
		Expire:  1209600,
		Minttl:  cfg.ttl, // the negative TTL: a device provisioned after a miss shows up within it
	}
	a := &apex{soa: soa, sets: map[uint16]*apexSet{dns.TypeSOA: {rrs: []dns.RR{soa}}}}
	var ns []dns.RR
	for _, n := range cfg.ns {
		ns = append(ns, &dns.NS{Hdr: dns.RR_Header{Name: z.origin, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: cfg.ttl}, Ns: n})
	}
	a.sets[dns.TypeNS] = &apexSet{rrs: ns}
	var failed error
	if s := z.signer; s != nil {
		a.sets[dns.TypeDNSKEY] = &apexSet{rrs: s.keys.dnskey}
		if s.keys.cds != nil {
			a.sets[dns.TypeCDS] = &apexSet{rrs: s.keys.cds}
			a.sets[dns.TypeCDNSKEY] = &apexSet{rrs: s.keys.cdnskey}
		}
		a.sets[dns.TypeNSEC] = &apexSet{rrs: []dns.RR{&dns.NSEC{
			Hdr:        dns.RR_Header{Name: z.origin, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: cfg.ttl},
			NextDomain: "\\000." + z.origin,
			TypeBitMap: z.apexTypes(),
		}}}
		for t, set := range a.sets {
			o := old.set(t)
			same := o != nil && o.sigs != nil && (t != dns.TypeSOA || o.rrs[0].(*dns.SOA).Serial == soa.Serial)
			if same && now.Sub(o.made) < s.validity/4 {
				set.sigs, set.made = o.sigs, o.made
				continue
			}
			sigs, err := z.signRRs(set.rrs, now)
			switch {
			case err == nil:
				set.sigs, set.made = sigs, now
			case same && now.Sub(o.made) < s.validity-inceptionSkew:
				set.sigs, set.made = o.sigs, o.made
				failed = fmt.Errorf("renewing the signatures of %s %s failed, serving the old ones (valid until %s): %w",
					z.origin, dns.TypeToString[t], o.made.Add(s.validity).UTC().Format(time.RFC3339), err)
			default:
				failed = fmt.Errorf("signing %s %s: %w", z.origin, dns.TypeToString[t], err)
			}
		}
	}
	a.soaAuth = packRR(soa)
	a.soaLen, a.nSOA = len(a.soaAuth), 1
	for _, sig := range a.sets[dns.TypeSOA].sigs {
		a.soaAuth = append(a.soaAuth, packRR(sig)...)
		a.nSOA++
	}
	return a, failed
}

func (a *apex) set(t uint16) *apexSet {
	if a == nil {
		return nil
	}
	return a.sets[t]
}

// apexTypes lists the types at the apex, for its NSEC.
func (z *zone) apexTypes() []uint16 {
	t := []uint16{dns.TypeNS, dns.TypeSOA, dns.TypeRRSIG, dns.TypeNSEC, dns.TypeDNSKEY}
	if z.signer.keys.cds != nil {
		t = append(t, dns.TypeCDS, dns.TypeCDNSKEY)
	}
	return t
}

// signRRs makes the RRSIGs over an apex RRset with the keys for its type.
func (z *zone) signRRs(rrset []dns.RR, now time.Time) ([]dns.RR, error) {
	s := z.signer
	inc, exp := s.times(now)
	var out []dns.RR
	for _, k := range s.keys.signers(rrset[0].Header().Rrtype) {
		sig := &dns.RRSIG{Algorithm: k.dnskey.Algorithm, Inception: inc, Expiration: exp, KeyTag: k.tag, SignerName: s.origin}
		if _, _, err := signRRset(k, sig, rrset); err != nil {
			s.failed.Inc()
			return nil, err
		}
		s.made.Inc()
		out = append(out, sig)
	}
	return out, nil
}

// setSerial moves the SOA serial to revision (the last change applied), with the
// SOA signed again. The caller holds z.write.
func (z *zone) setSerial(zd *zoneData, revision int64, now time.Time) {
	zd.revision.Store(revision)
	a, err := z.newApex(revision, zd.apex.Load(), now)
	if err != nil {
		log.Warningf("zone %s: %v", z.origin, err)
	}
	zd.apex.Store(a)
}
