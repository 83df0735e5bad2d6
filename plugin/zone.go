package deviceid

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	// keys are the zone's keys from its key lines; nil when they come from etcd
	// (keys etcd: each load finds them, and the apex holds those in use).
	keys *keySet
	// keyring follows the zone's key records (keys etcd; nil otherwise); only the etcd
	// loop uses it. rekeyNow asks the loop to look at the timeline now.
	keyring  *zoneKeys
	rekeyNow chan struct{}

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

	// lag is how far the zone is behind etcd; only the etcd loop uses it.
	lag lag
	// clusterID is the etcd cluster's, from its last answer (0: none yet).
	clusterID atomic.Uint64

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
	clusterID    uint64 // of a snapshot: the etcd cluster it came from (0: not known)
}

// newData makes empty data whose signatures are made with ks (nil: not signed).
func (z *zone) newData(revision int64, ks *keySet) *zoneData {
	zd := &zoneData{st: newStore(ks.nz()), loadRevision: revision, loadedAt: z.now()}
	zd.revision.Store(revision)
	a, _ := z.newApex(revision, nil, ks, z.now()) // what failed is signed on the query path
	z.storeApex(zd, a)
	return zd
}

// storeApex makes a the apex of zd, and says when its first signature expires.
func (z *zone) storeApex(zd *zoneData, a *apex) {
	zd.apex.Store(a)
	if a.keys == nil {
		return // not signed
	}
	var first uint32
	for _, set := range a.sets {
		if set.sigs == nil {
			first = 0 // signing failed: said as expired
			break
		}
		for _, rr := range set.sigs {
			if exp := rr.(*dns.RRSIG).Expiration; first == 0 || exp < first {
				first = exp
			}
		}
	}
	signaturesExpire.WithLabelValues(z.origin).Set(float64(first))
}

// signAt signs a changed record's RRset and the NSEC at its name as the change is
// applied, so that it is served signed from the first answer. It returns nil when
// the zone is not signed, the record is invalid, or signing failed (then the answer
// is signed on the query path, or by the background signer).
func (z *zone) signAt(zd *zoneData, p parsed, now time.Time) *entrySigs {
	if z.signer == nil || p.err != nil || len(p.rr) == 0 {
		return nil
	}
	sigs, err := z.makeSigs(zd.apex.Load().keys, []byte(p.owner), p.rr, now, false)
	if err != nil {
		log.Warningf("zone %s: signing %s: %v", z.origin, p.owner, err)
		return nil
	}
	return sigs
}

// makeSigs signs with ks the TLSA RRset rr (when not empty) at owner and the NSEC at
// owner. On the query path the signatures are made by the signing goroutines.
func (z *zone) makeSigs(ks *keySet, owner, rr []byte, now time.Time, query bool) (*entrySigs, error) {
	s := z.signer
	inc, exp := s.times(now)
	es := newEntrySigs(inc, exp, ks.nz())
	sign := func(out, owner []byte, t uint16, ttl, inc, exp uint32, rdatas [][]byte) error {
		if query {
			return s.signNow(ks, out, owner, t, ttl, inc, exp, rdatas)
		}
		return s.signSet(ks, out, owner, t, ttl, inc, exp, rdatas)
	}
	var name [256]byte
	n, err := dns.PackDomainName(string(owner), name[:], 0, nil, false)
	if err != nil {
		return nil, err
	}
	wire := name[:n]
	if len(rr) > 0 {
		var rdatas [][]byte
		var ttl uint32
		eachRecord(rr, func(_ int64, w []byte) {
			ttl = binary.BigEndian.Uint32(w[6:])
			rdatas = append(rdatas, w[12:])
		})
		slices.SortFunc(rdatas, bytes.Compare)
		rdatas = slices.CompactFunc(rdatas, bytes.Equal)
		if err := sign(es.tlsa(), wire, dns.TypeTLSA, ttl, inc, exp, rdatas); err != nil {
			return nil, err
		}
	}
	nsec := appendNSEC(nil, wire, len(rr) > 0)
	if err := sign(es.nsec(), wire, dns.TypeNSEC, z.cfg.ttl, inc, exp, [][]byte{nsec}); err != nil {
		return nil, err
	}
	return es, nil
}

// apply puts a parsed key into the index, with the signatures signAt made for it (nil
// during a full load). A record that does not parse is skipped, logged once per
// revision and counted; the older version of it stops being served too, since a
// failed attempt to revoke must not leave a device active.
func (z *zone) apply(x *zoneData, p parsed, sigs *entrySigs) {
	key := string(p.kv.Key)
	if p.err == nil {
		z.put(x, p.owner, p.rr, p.device, sigs)
		delete(z.rejected, key)
		return
	}
	if p.owner != "" {
		z.remove(x, p.owner)
	}
	if z.rejected[key] != p.kv.ModRevision {
		z.rejected[key] = p.kv.ModRevision
		log.Warningf("zone %s: skipping invalid record %s (revision %d): %v", z.origin, key, p.kv.ModRevision, p.err)
		rejected.WithLabelValues(z.origin).Inc()
	}
}

// put stores a record's RRset at owner, counting a new record in its ancestors. A
// record with nothing to publish is not a name: it is removed. sigs, when not nil,
// are the signatures over the RRset and the NSEC at owner (as makeSigs makes them);
// without them, the signatures of the same RRset stored before are kept. The caller
// holds z.write.
func (z *zone) put(zd *zoneData, owner string, rr []byte, device bool, sigs *entrySigs) {
	if len(rr) == 0 {
		z.remove(zd, owner)
		return
	}
	st := zd.st
	var below uint32
	var was uint8
	st.view(owner, func(e entry) {
		below, was = e.below(), e.flags()
		if inc, _ := e.signed(); sigs == nil && inc != 0 && bytes.Equal(e.rrset(), rr) {
			sigs = e.sigs().clone() // the same RRset: its signatures stay good
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
	if sigs != nil {
		e.setSigs(*sigs)
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
		e.setBelow(uint32(n))
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

// signEntry signs the entry of owner now and stores the signatures.
func (z *zone) signEntry(zd *zoneData, owner string, now time.Time) error {
	var e entry
	zd.st.view(owner, func(cur entry) { e = bytes.Clone(cur) })
	if e == nil {
		return nil
	}
	sigs, err := z.makeSigs(zd.apex.Load().keys, e.owner(), e.rrset(), now, false)
	if err != nil {
		return err
	}
	z.storeSigs(zd, e, sigs)
	return nil
}

// storeSigs writes sigs into the entry of its owner if it still holds the RRset they
// were made over.
func (z *zone) storeSigs(zd *zoneData, signed entry, sigs *entrySigs) {
	z.mu.RLock()
	defer z.mu.RUnlock()
	if z.data != zd {
		return
	}
	zd.st.modify(string(signed.owner()), func(e entry) {
		if e.flags() == signed.flags() && bytes.Equal(e.rrset(), signed.rrset()) {
			e.setSigs(*sigs)
		}
	})
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
	firstPass.WithLabelValues(z.origin).Set(0) // until the new data's first pass
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
	// keys are what the zone publishes and signs with (nil: not signed): the store's
	// signatures were made with keys.zsk, which the answers name.
	keys *keySet
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
func (z *zone) newApex(revision int64, old *apex, ks *keySet, now time.Time) (*apex, error) {
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
	a := &apex{soa: soa, keys: ks, sets: map[uint16]*apexSet{dns.TypeSOA: {rrs: []dns.RR{soa}}}}
	var ns []dns.RR
	for _, n := range cfg.ns {
		ns = append(ns, &dns.NS{Hdr: dns.RR_Header{Name: z.origin, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: cfg.ttl}, Ns: n})
	}
	a.sets[dns.TypeNS] = &apexSet{rrs: ns}
	var failed error
	if s := z.signer; s != nil && ks != nil {
		a.sets[dns.TypeDNSKEY] = &apexSet{rrs: ks.dnskey}
		if ks.cds != nil {
			a.sets[dns.TypeCDS] = &apexSet{rrs: ks.cds}
			a.sets[dns.TypeCDNSKEY] = &apexSet{rrs: ks.cdnskey}
		}
		a.sets[dns.TypeNSEC] = &apexSet{rrs: []dns.RR{&dns.NSEC{
			Hdr:        dns.RR_Header{Name: z.origin, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: cfg.ttl},
			NextDomain: "\\000." + z.origin,
			TypeBitMap: apexTypes(ks),
		}}}
		for t, set := range a.sets {
			o := old.set(t)
			// Signatures are kept for an RRset that did not change, signed by the same keys.
			same := o != nil && o.sigs != nil && old.keys.sameSigners(ks, t) && (t != dns.TypeSOA || o.rrs[0].(*dns.SOA).Serial == soa.Serial) &&
				(t == dns.TypeSOA || rrsEqual(o.rrs, set.rrs))
			if same && now.Sub(o.made) < s.validity/4 {
				set.sigs, set.made = o.sigs, o.made
				continue
			}
			sigs, err := z.signRRs(ks, set.rrs, now)
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
func apexTypes(ks *keySet) []uint16 {
	t := []uint16{dns.TypeNS, dns.TypeSOA, dns.TypeRRSIG, dns.TypeNSEC, dns.TypeDNSKEY}
	if ks.cds != nil {
		t = append(t, dns.TypeCDS, dns.TypeCDNSKEY)
	}
	return t
}

// signRRs makes the RRSIGs over an apex RRset with the keys for its type.
func (z *zone) signRRs(ks *keySet, rrset []dns.RR, now time.Time) ([]dns.RR, error) {
	s := z.signer
	inc, exp := s.times(now)
	var out []dns.RR
	for _, k := range ks.signers(rrset[0].Header().Rrtype) {
		sig := &dns.RRSIG{Algorithm: k.dnskey.Algorithm, Inception: inc, Expiration: exp, KeyTag: k.tag, SignerName: s.origin}
		if err := signRRset(k, sig, rrset); err != nil {
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
	old := zd.apex.Load()
	a, err := z.newApex(revision, old, old.keys, now)
	if err != nil {
		log.Warningf("zone %s: %v", z.origin, err)
	}
	z.storeApex(zd, a)
}
