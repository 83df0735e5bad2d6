package deviceid

// keys etcd: the zone's DNSSEC keys and their timeline come from P/<zone>/dnssec/key/,
// read by the same load and watch as the records, so that every replica publishes
// and signs with the same keys from the same etcd revision. Which keys the zone
// publishes, which sign and which have a CDS is a function of the records and the
// clock (record.ZoneKey); the etcd loop alone keeps the records and re-reads the
// key set when one changes or when the timeline of one reaches its next step.

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/miekg/dns"
)

// zoneKeys are a zone's key records and the private keys opened from them. Only the
// zone's etcd loop uses them.
type zoneKeys struct {
	records  map[string]*record.ZoneKey // by id
	opened   map[string]*key            // by id, for the record's DNSKEY and private key
	openedAs map[string]string          // by id: what opened holds was opened from
	failed   map[string]string          // by id: why the key could not be opened, logged once
	// closing are keys in an HSM whose record went away or changed: each is closed
	// once no installed key set signs with it.
	closing []*key
	// inUse is the key set installed last; servedSince, by id, when this replica
	// started to publish each of its DNSKEYs (zero: before its first key set).
	inUse       *keySet
	servedSince map[string]time.Time
	// maxTTL is the smallest max_ttl of the published records, checked against the
	// replica's ttl (said when it changes).
	maxTTL uint32
}

func newZoneKeys() *zoneKeys {
	return &zoneKeys{records: map[string]*record.ZoneKey{}, opened: map[string]*key{}, openedAs: map[string]string{}, failed: map[string]string{},
		servedSince: map[string]time.Time{}, maxTTL: math.MaxUint32}
}

// errKeysChanged ends the watch when the keys that sign the zone's names change: the
// zone is loaded again, and signed ahead with the new keys.
var errKeysChanged = errors.New("the keys that sign the zone's names changed")

// update takes a key record from the load or the watch (value nil: deleted); it
// reports an invalid one.
func (zk *zoneKeys) update(origin, id string, value []byte) error {
	if value == nil {
		delete(zk.records, id)
		delete(zk.servedSince, id)
		zk.drop(id)
		delete(zk.openedAs, id)
		if _, was := zk.failed[id]; was {
			delete(zk.failed, id)
			keyUnavailable.DeleteLabelValues(origin, id)
		}
		return nil
	}
	k, err := record.ParseZoneKey(origin, value)
	if err != nil {
		delete(zk.records, id) // an invalid record stops the older version from being used
		delete(zk.servedSince, id)
		return err
	}
	if old := zk.records[id]; old != nil && old.DNSKEY != k.DNSKEY {
		delete(zk.servedSince, id) // another key under the same id
	}
	zk.records[id] = k
	return nil
}

// setRecords makes records the key records of a full load: what a record no longer
// there had (its opened key, its failure, when it was published here) goes.
func (zk *zoneKeys) setRecords(origin string, records map[string]*record.ZoneKey) {
	for id := range zk.records {
		if _, ok := records[id]; !ok {
			zk.update(origin, id, nil)
		}
	}
	for id, rec := range records {
		if old := zk.records[id]; old != nil && old.DNSKEY != rec.DNSKEY {
			delete(zk.servedSince, id)
		}
	}
	zk.records = records
}

// drop forgets the private key opened for id; one in an HSM is closed later.
func (zk *zoneKeys) drop(id string) {
	if k := zk.opened[id]; k != nil {
		if _, inHSM := k.signer.(*pkcs11key.Key); inHSM {
			zk.closing = append(zk.closing, k)
		}
	}
	delete(zk.opened, id)
	delete(zk.openedAs, id)
}

// closeUnused closes the dropped HSM keys in no key set of inUse.
func (zk *zoneKeys) closeUnused(inUse ...*keySet) {
	zk.closing = slices.DeleteFunc(zk.closing, func(k *key) bool {
		for _, ks := range inUse {
			if ks != nil && (slices.Contains(ks.ksk, k) || slices.Contains(ks.zsk, k)) {
				return false
			}
		}
		k.signer.(*pkcs11key.Key).Close()
		return true
	})
}

// close closes every HSM key of zk: the zone stopped.
func (zk *zoneKeys) close() {
	for id := range zk.opened {
		zk.drop(id)
	}
	zk.closeUnused()
}

// maxPublishedKeys bounds the DNSKEY RRset: a rollover has a few keys; a write to etcd
// of many more would only make the answer too large.
const maxPublishedKeys = 8

// keySetAt is the key set the records make at now: the DNSKEYs published, the keys
// that sign, and the CDS and CDNSKEY of the keys being synced to the parent. A key
// counts only once its private half opens here and matches its DNSKEY: a record
// written into etcd by someone without the KEK publishes nothing (logged and counted
// once, coredns_deviceid_key_unavailable). Without a ZSK that signs, the KSKs sign
// everything (a CSK), which validators accept as well.
//
// A key this replica starts to publish while it runs signs the names only once the
// replica itself has published its DNSKEY for the TTL, whatever the timeline says: a
// replica cut off from etcd during a pre-publication learns of the key late, and
// validators that asked it meanwhile hold a DNSKEY RRset without the key. Until then
// the keys that signed the names before sign on while still published, or else the
// KSKs. (A KSK signs the DNSKEY RRset it comes with: it is never held back.)
func (z *zone) keySetAt(zk *zoneKeys, now time.Time) (*keySet, error) {
	minPublished := time.Duration(z.cfg.ttl) * time.Second
	ks := &keySet{}
	var held []*key
	var maxTTL uint32
	// Counted before any key is opened: records written into etcd cannot make a
	// replica open many keys (each key in an HSM is a session).
	published := 0
	for _, rec := range zk.records {
		if rec.Published(now) {
			published++
		}
	}
	if published > maxPublishedKeys {
		return nil, fmt.Errorf("%d keys would be published at %s, more than %d", published, now.UTC().Format(time.RFC3339), maxPublishedKeys)
	}
	for _, id := range slices.Sorted(maps.Keys(zk.records)) {
		rec := zk.records[id]
		if !rec.Published(now) && !rec.Syncs(now) {
			continue
		}
		dk, err := rec.PublicKey(z.origin)
		if err != nil {
			continue // Validate read it already
		}
		dk.Hdr.Ttl = z.cfg.ttl
		k, err := z.openZoneKey(zk, id, rec, dk)
		if err != nil {
			if zk.failed[id] != err.Error() {
				zk.failed[id] = err.Error()
				log.Errorf("zone %s: key %s (tag %d) is not used on this replica (not published, no CDS, no signature): %v", z.origin, id, dk.KeyTag(), err)
				keyUnavailable.WithLabelValues(z.origin, id).Set(1)
			}
			continue
		}
		if _, was := zk.failed[id]; was {
			delete(zk.failed, id)
			keyUnavailable.WithLabelValues(z.origin, id).Set(0)
		}
		if rec.Syncs(now) && z.cfg.cds {
			ds := dk.ToDS(dns.SHA256)
			ks.ds = append(ks.ds, ds)
			ks.cds = append(ks.cds, ds.ToCDS())
			ks.cdnskey = append(ks.cdnskey, dk.ToCDNSKEY())
		}
		if !rec.Published(now) {
			continue
		}
		ks.dnskey = append(ks.dnskey, dk)
		ks.published = append(ks.published, id)
		if rec.MaxTTL > 0 && (maxTTL == 0 || rec.MaxTTL < maxTTL) {
			maxTTL = rec.MaxTTL
		}
		if !rec.Signs(now, minPublished) {
			continue
		}
		if rec.SEP() {
			ks.ksk = append(ks.ksk, k)
		}
		if rec.Role == record.RoleKSK {
			continue
		}
		if since, served := zk.servedSince[id]; zk.inUse != nil && (!served || now.Sub(since) < minPublished) {
			held = append(held, k)
		} else {
			ks.zsk = append(ks.zsk, k)
		}
	}
	z.checkTTL(zk, maxTTL)
	if len(ks.zsk) == 0 && len(held) > 0 {
		ks.zsk = zk.stillSigning(ks)
	}
	if len(ks.ksk) == 0 {
		return nil, fmt.Errorf("no KSK or CSK signs at %s (of %d key records)", now.UTC().Format(time.RFC3339), len(zk.records))
	}
	if len(ks.zsk) == 0 {
		ks.zsk = ks.ksk
	}
	return ks, nil
}

// checkTTL says, once each time it changes, whether this replica's ttl is above the
// TTLs the key timeline waits for (maxTTL; 0: not said).
func (z *zone) checkTTL(zk *zoneKeys, maxTTL uint32) {
	if maxTTL == zk.maxTTL {
		return
	}
	zk.maxTTL = maxTTL
	above := maxTTL > 0 && z.cfg.ttl > maxTTL
	if above {
		log.Errorf("zone %s: ttl %d is above the %d s the key timeline waits for: validators may cache answers past a rollover's waits; lower ttl or raise the policy's TTLs (deviceid-signer keys enable -dnskey-ttl, -zone-max-ttl)", z.origin, z.cfg.ttl, maxTTL)
	}
	keyTTLAbovePolicy.WithLabelValues(z.origin).Set(map[bool]float64{true: 1}[above])
}

// stillSigning returns the keys that signed the names in the key set in use and that
// ks still publishes: they sign on while the new ones are held back (none: the KSKs
// sign the names).
func (zk *zoneKeys) stillSigning(ks *keySet) []*key {
	var signs []*key
	for _, k := range zk.inUse.zsk {
		if slices.ContainsFunc(ks.dnskey, func(rr dns.RR) bool { return rr.(*dns.DNSKEY).PublicKey == k.dnskey.PublicKey }) {
			signs = append(signs, k)
		}
	}
	return signs
}

// openZoneKey returns the private key of record id, opened once for what the record
// says.
func (z *zone) openZoneKey(zk *zoneKeys, id string, rec *record.ZoneKey, dk *dns.DNSKEY) (*key, error) {
	as := rec.DNSKEY + "|" + rec.Private.PKCS11 + "|" + string(rec.Private.Wrapped)
	if k := zk.opened[id]; k != nil && zk.openedAs[id] == as {
		return k, nil
	}
	zk.drop(id)
	var signer crypto.Signer
	switch {
	case rec.Private.PKCS11 != "":
		if z.cfg.hsm == "" {
			return nil, fmt.Errorf("its private key is in an HSM (%s), and this replica has no hsm line naming the token", rec.Private.PKCS11)
		}
		// The record names the token and the object; the module and the PIN are the
		// hsm line's, so that a record cannot name a module to load or a PIN file.
		uri, err := pkcs11key.InToken(z.cfg.hsm, rec.Private.PKCS11)
		if err != nil {
			return nil, err
		}
		if label := record.WrapBinding(z.origin, id); pkcs11key.Label(uri) != label {
			return nil, fmt.Errorf("%s names a key labelled other than %q: a key in the HSM serves the one record it was made for", rec.Private.PKCS11, label)
		}
		hk, err := pkcs11key.Open(uri, elliptic.P256())
		if err != nil {
			return nil, err
		}
		signer = hk
	default:
		if z.cfg.kek == nil {
			return nil, fmt.Errorf("its private key is wrapped under KEK %s, and this replica has no kek line", rec.Private.KEK)
		}
		der, err := z.cfg.kek.Unwrap(rec.Private.Wrapped, rec.Private.KEK, record.WrapBinding(z.origin, id))
		if err != nil {
			return nil, err
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("the unwrapped private key: %v", err)
		}
		switch p := priv.(type) {
		case *ecdsa.PrivateKey:
			signer = rfc6979{p}
		case ed25519.PrivateKey:
			signer = p
		default:
			return nil, fmt.Errorf("the unwrapped private key is a %T", priv)
		}
	}
	dk.Hdr.Name = z.origin
	k := &key{dnskey: dk, signer: signer, tag: dk.KeyTag()}
	if err := k.probe(); err != nil {
		if hk, ok := signer.(*pkcs11key.Key); ok {
			hk.Close()
		}
		return nil, fmt.Errorf("the private key does not match the DNSKEY: %v", err)
	}
	zk.opened[id], zk.openedAs[id] = k, as
	return k, nil
}

// nextKeyEvent is the first time after now at which the records' timelines change
// the key set (zero: none).
func (z *zone) nextKeyEvent(zk *zoneKeys, now time.Time) time.Time {
	var next time.Time
	minPublished := time.Duration(z.cfg.ttl) * time.Second
	for _, rec := range zk.records {
		if t := rec.Next(now, minPublished); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, since := range zk.servedSince {
		if t := since.Add(minPublished); !since.IsZero() && t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// sameZSK reports whether two key sets sign the zone's names with the same keys.
func sameZSK(a, b *keySet) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.zsk, b.zsk, func(x, y *key) bool { return x == y })
}

// sameApex reports whether two key sets publish and sign the apex alike.
func sameApex(a, b *keySet) bool {
	return a.sameSigners(b, dns.TypeDNSKEY) && rrsEqual(a.dnskey, b.dnskey) && rrsEqual(a.cds, b.cds)
}

// loadKeys reads the zone's key records (keys etcd) and returns the key set they make
// at now; for a zone with key lines, those.
func (z *zone) loadKeys(ctx context.Context, cli *clientv3.Client, prefix string, now time.Time) (*keySet, error) {
	if z.keyring == nil {
		return z.keys, nil
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	keyPrefix := prefix + record.KindDNSSEC + "/"
	resp, err := cli.Get(rctx, keyPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	read := newZoneKeys()
	for _, kv := range resp.Kvs {
		z.takeKeyRecord(read, z.parseDeletion(prefix, kv))
	}
	z.write.Lock() // the snapshot writer reads the records
	defer z.write.Unlock()
	z.keyring.setRecords(z.origin, read.records)
	ks, err := z.keySetAt(z.keyring, now)
	if err != nil {
		return nil, fmt.Errorf("keys etcd: %v; add the zone's keys (deviceid-signer keys)", err)
	}
	return ks, nil
}

// takeKeyRecord takes a key record of the load or the watch into zk (a zone with key
// lines has none: ignored); it reports whether zk changed. An invalid record is
// logged and counted once per revision, and no longer used.
func (z *zone) takeKeyRecord(zk *zoneKeys, p parsed) bool {
	if zk == nil {
		return false
	}
	var value []byte
	if len(p.kv.Value) > 0 {
		value = p.kv.Value
	}
	if err := zk.update(z.origin, p.keyID, value); err != nil {
		key := string(p.kv.Key)
		if z.rejected[key] != p.kv.ModRevision {
			z.rejected[key] = p.kv.ModRevision
			rejected.WithLabelValues(z.origin).Inc()
			log.Errorf("zone %s: key record %s (revision %d) is invalid, not used: %v", z.origin, p.keyID, p.kv.ModRevision, err)
		}
	}
	return true
}

// rekey makes the key set of the records at the clock's now the one in use: the apex
// changes in place; a change of the keys that sign the names ends the watch
// (errKeysChanged), so that the zone is loaded and signed again. When the records make
// no usable set, the keys in use stay, and the log says why.
func (z *zone) rekey() error {
	if z.keyring == nil {
		return nil
	}
	z.write.Lock()
	defer z.write.Unlock()
	x := z.current()
	if x == nil {
		return nil
	}
	now := z.now()
	cur := x.apex.Load().keys
	ks, err := z.keySetAt(z.keyring, now)
	switch {
	case err != nil:
		log.Errorf("zone %s: keeping the keys in use: %v", z.origin, err)
	case !sameZSK(cur, ks):
		return errKeysChanged
	case !sameApex(cur, ks):
		z.installKeys(x, ks, now)
		z.keyring.served(ks, now)
	}
	return nil
}

// installKeys puts ks at x's apex, signed. The caller holds z.write.
func (z *zone) installKeys(x *zoneData, ks *keySet, now time.Time) {
	zk := z.keyring
	old := x.apex.Load()
	if old.keys == ks || old.keys != nil && sameZSK(old.keys, ks) && sameApex(old.keys, ks) {
		return
	}
	a, err := z.newApex(x.revision.Load(), old, ks, now)
	if err != nil {
		log.Warningf("zone %s: %v", z.origin, err)
	}
	z.storeApex(x, a)
	zk.closeUnused(ks)
	keySetChanges.WithLabelValues(z.origin).Inc()
	log.Infof("zone %s: keys: %s", z.origin, ks)
}

// served notes that ks is the key set served from now on: when this replica started
// to publish each of its DNSKEYs (zero for those of its first key set, published
// before it started), forgetting those it no longer publishes.
func (zk *zoneKeys) served(ks *keySet, now time.Time) {
	if zk == nil || ks == nil {
		return
	}
	since := make(map[string]time.Time, len(ks.published))
	for _, id := range ks.published {
		t, ok := zk.servedSince[id]
		switch {
		case ok:
		case zk.inUse == nil:
			t = time.Time{}
		default:
			t = now
		}
		since[id] = t
	}
	zk.servedSince, zk.inUse = since, ks
}

// keyTimer fires when the timeline of the zone's keys next changes the key set
// (never for a zone with key lines).
func (z *zone) keyTimer() *time.Timer {
	never := time.NewTimer(time.Duration(math.MaxInt64))
	if z.keyring == nil {
		return never
	}
	// A step more than a day ahead is looked at again in a day (and a time far ahead
	// cannot overflow the timer); a key that could not be opened (not yet in this
	// replica's HSM), every minute.
	wait := 24 * time.Hour
	if len(z.keyring.failed) > 0 {
		wait = time.Minute
	}
	now := z.now()
	next := z.nextKeyEvent(z.keyring, now)
	switch {
	case !next.IsZero():
		wait = min(max(next.Sub(now), 0), wait)
	case len(z.keyring.failed) == 0:
		return never
	}
	never.Stop()
	return time.NewTimer(wait + 10*time.Millisecond)
}

// String describes a key set for the log: the DNSKEYs published, the keys that sign
// the apex and the names, and those with a CDS, by tag.
func (ks *keySet) String() string {
	tags := func(keys []*key) []uint16 {
		var t []uint16
		for _, k := range keys {
			t = append(t, k.tag)
		}
		return t
	}
	var published, synced []uint16
	for _, rr := range ks.dnskey {
		published = append(published, rr.(*dns.DNSKEY).KeyTag())
	}
	for _, rr := range ks.cdnskey {
		synced = append(synced, rr.(*dns.CDNSKEY).KeyTag())
	}
	return fmt.Sprintf("DNSKEY %v, signing DNSKEY %v, signing names %v, CDS %v", published, tags(ks.ksk), tags(ks.zsk), synced)
}
