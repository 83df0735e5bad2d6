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
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

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
}

func newZoneKeys() *zoneKeys {
	return &zoneKeys{records: map[string]*record.ZoneKey{}, opened: map[string]*key{}, openedAs: map[string]string{}, failed: map[string]string{}}
}

// errKeysChanged ends the watch when the keys that sign the zone's names change: the
// zone is loaded again, and signed ahead with the new keys.
var errKeysChanged = errors.New("the keys that sign the zone's names changed")

// update takes a key record from the load or the watch (value nil: deleted); it
// reports an invalid one.
func (zk *zoneKeys) update(origin, id string, value []byte) error {
	if value == nil {
		delete(zk.records, id)
		delete(zk.opened, id)
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
		return err
	}
	zk.records[id] = k
	return nil
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
func (z *zone) keySetAt(zk *zoneKeys, now time.Time) (*keySet, error) {
	minPublished := time.Duration(z.cfg.ttl) * time.Second
	ks := &keySet{}
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
		if len(ks.dnskey) == maxPublishedKeys {
			return nil, fmt.Errorf("more than %d keys would be published at %s", maxPublishedKeys, now.UTC().Format(time.RFC3339))
		}
		ks.dnskey = append(ks.dnskey, dk)
		if !rec.Signs(now, minPublished) {
			continue
		}
		if rec.SEP() {
			ks.ksk = append(ks.ksk, k)
		}
		if rec.Role != record.RoleKSK {
			ks.zsk = append(ks.zsk, k)
		}
	}
	if len(ks.ksk) == 0 {
		return nil, fmt.Errorf("no KSK or CSK signs at %s (of %d key records)", now.UTC().Format(time.RFC3339), len(zk.records))
	}
	if len(ks.zsk) == 0 {
		ks.zsk = ks.ksk
	}
	return ks, nil
}

// openZoneKey returns the private key of record id, opened once for what the record
// says.
func (z *zone) openZoneKey(zk *zoneKeys, id string, rec *record.ZoneKey, dk *dns.DNSKEY) (*key, error) {
	as := rec.DNSKEY + "|" + rec.Private.PKCS11 + "|" + string(rec.Private.Wrapped)
	if k := zk.opened[id]; k != nil && zk.openedAs[id] == as {
		return k, nil
	}
	var signer crypto.Signer
	switch {
	case rec.Private.PKCS11 != "":
		// A URI read from etcd could name any module or PIN file on the replica: keys
		// etcd opens wrapped keys only (a KSK in an HSM stays a key pkcs11 line).
		return nil, errors.New("its private key is named by a pkcs11: URI, which keys etcd does not open (a URI from etcd could name any module or PIN file here); wrap it under the KEK instead")
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
		return nil, fmt.Errorf("the private key does not match the DNSKEY: %v", err)
	}
	zk.opened[id], zk.openedAs[id] = k, as
	return k, nil
}

// nextKeyEvent is the first time after now at which the records' timelines change
// the key set (zero: none).
func (z *zone) nextKeyEvent(zk *zoneKeys, now time.Time) time.Time {
	var next time.Time
	for _, rec := range zk.records {
		if t := rec.Next(now, time.Duration(z.cfg.ttl)*time.Second); !t.IsZero() && (next.IsZero() || t.Before(next)) {
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
	z.keyring.records = map[string]*record.ZoneKey{}
	for _, kv := range resp.Kvs {
		z.takeKeyRecord(z.keyring, z.parseDeletion(prefix, kv))
	}
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
	}
	return nil
}

// installKeys puts ks at x's apex, signed. The caller holds z.write.
func (z *zone) installKeys(x *zoneData, ks *keySet, now time.Time) {
	old := x.apex.Load()
	if old.keys == ks || old.keys != nil && sameZSK(old.keys, ks) && sameApex(old.keys, ks) {
		return
	}
	a, err := z.newApex(x.revision.Load(), old, ks, now)
	if err != nil {
		log.Warningf("zone %s: %v", z.origin, err)
	}
	x.apex.Store(a)
	keySetChanges.WithLabelValues(z.origin).Inc()
	log.Infof("zone %s: keys: %s", z.origin, ks)
}

// keyTimer fires when the timeline of the zone's keys next changes the key set
// (never for a zone with key lines).
func (z *zone) keyTimer() *time.Timer {
	never := time.NewTimer(time.Duration(math.MaxInt64))
	if z.keyring == nil {
		return never
	}
	now := z.now()
	next := z.nextKeyEvent(z.keyring, now)
	if next.IsZero() {
		return never
	}
	never.Stop()
	// A step more than a day ahead is looked at again in a day (and a time far ahead
	// cannot overflow the timer).
	return time.NewTimer(min(max(next.Sub(now), 0), 24*time.Hour) + 10*time.Millisecond)
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
