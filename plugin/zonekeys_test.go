package deviceid

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// zoneKeyRecord makes a key of alg for iot.example with its private key wrapped under
// k, and its record with timeline tl.
func zoneKeyRecord(t *testing.T, k *kek.KEK, id, role string, alg uint8, tl record.Timeline) (*record.ZoneKey, uint16) {
	t.Helper()
	var priv crypto.Signer
	if alg == dns.ED25519 {
		_, priv, _ = ed25519.GenerateKey(rand.Reader)
	} else {
		priv, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	flags := uint16(256)
	if role != record.RoleZSK {
		flags = 257
	}
	dk := &dns.DNSKEY{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET}, Flags: flags, Protocol: 3, Algorithm: alg}
	switch p := priv.(type) {
	case ed25519.PrivateKey:
		dk.PublicKey = toBase64(p.Public().(ed25519.PublicKey))
	case *ecdsa.PrivateKey:
		b, _ := p.PublicKey.Bytes() // 04 || X || Y
		dk.PublicKey = toBase64(b[1:])
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	_, rdata, _ := strings.Cut(dk.String(), "DNSKEY\t")
	return &record.ZoneKey{Version: 1, Role: role, DNSKEY: rdata,
		Private:  record.PrivateKeyRef{Wrapped: k.Wrap(der, record.WrapBinding("iot.example", id)), KEK: k.ID},
		Timeline: tl}, dk.KeyTag()
}

// deviceValue is the record of a device with one active key.
func deviceValue(t *testing.T) string {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	dev, err := json.Marshal(&record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki, Status: record.StatusActive}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(dev)
}

func toBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// signedBy asks for qname's TLSA with DO, checks every RRSIG of the answer against the
// zone's DNSKEY RRset at the clock's now, and returns the tags of the keys that
// signed it.
func signedBy(t *testing.T, d *Deviceid, now time.Time, qname string, qtype uint16) []uint16 {
	t.Helper()
	dk, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, true, false)
	keys := map[uint16]*dns.DNSKEY{}
	for _, rr := range dk.Answer {
		if k, ok := rr.(*dns.DNSKEY); ok {
			keys[k.KeyTag()] = k
		}
	}
	m := dk
	if qtype != dns.TypeDNSKEY {
		m, _ = ask(t, d, qname, qtype, true, false)
	}
	var set []dns.RR
	var tags []uint16
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.RRSIG); ok {
			tags = append(tags, s.KeyTag)
			continue
		}
		set = append(set, rr)
	}
	for _, rr := range m.Answer {
		s, ok := rr.(*dns.RRSIG)
		if !ok {
			continue
		}
		k := keys[s.KeyTag]
		if k == nil {
			t.Fatalf("%s %s signed by key %d, not in the DNSKEY RRset %v", qname, dns.TypeToString[qtype], s.KeyTag, slices.Collect(maps.Keys(keys)))
		}
		if err := s.Verify(k, set); err != nil || !s.ValidityPeriod(now) {
			t.Fatalf("%s %s: RRSIG by %d: %v (valid at %s: %v)", qname, dns.TypeToString[qtype], s.KeyTag, err, now, s.ValidityPeriod(now))
		}
	}
	if len(tags) == 0 {
		t.Fatalf("%s %s: no RRSIG in %v", qname, dns.TypeToString[qtype], m)
	}
	slices.Sort(tags)
	return tags
}

// runKeysEtcd runs the zone iot.example of cfg with keys etcd on cli, on clock, until
// the test ends, and returns it once loaded.
func runKeysEtcd(t *testing.T, cli *clientv3.Client, cfg *config, clock *testenv.Clock) (*Deviceid, *zone) {
	cfg.keysFromEtcd, cfg.cds, cfg.validity = true, true, 24*time.Hour
	d, z, _ := runZone(t, cli, cfg, clock)
	<-z.loaded
	return d, z
}

// TestKeysFromEtcd: with keys etcd the zone publishes and signs with the keys the
// records in etcd say at the clock's time, through a ZSK rollover by pre-publication:
// the new ZSK published before it signs, the old one published until after it
// stopped; a key this replica cannot open is left out, and said.
func TestKeysFromEtcd(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	ctx := t.Context()
	dir := t.TempDir()
	k, err := kek.Generate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := kek.Generate(filepath.Join(dir, "other.kek"))
	clock := testenv.NewClock(time.Now().Truncate(time.Second))
	t0 := clock.Now()
	at := func(d time.Duration) *time.Time { v := t0.Add(d); return &v }
	put := func(id string, rec *record.ZoneKey) {
		b, _ := json.Marshal(rec)
		if _, err := cli.Put(ctx, record.ZoneKeyKey("/deviceid", "iot.example", id), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	// putTogether writes keys in one transaction, as the key manager writes a
	// rollover's steps: a replica never sees one without the other.
	putTogether := func(recs map[string]*record.ZoneKey) {
		var ops []clientv3.Op
		for id, rec := range recs {
			b, _ := json.Marshal(rec)
			ops = append(ops, clientv3.OpPut(record.ZoneKeyKey("/deviceid", "iot.example", id), string(b)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	ksk, kskTag := zoneKeyRecord(t, k, "ksk", record.RoleKSK, dns.ECDSAP256SHA256, record.Timeline{Publish: at(-2 * time.Hour), Active: at(-2 * time.Hour), SyncPublish: at(-2 * time.Hour)})
	zsk1, zsk1Tag := zoneKeyRecord(t, k, "zsk1", record.RoleZSK, dns.ED25519, record.Timeline{Publish: at(-2 * time.Hour), Active: at(-2 * time.Hour), Retire: at(2 * time.Hour), Remove: at(4 * time.Hour)})
	zsk2, zsk2Tag := zoneKeyRecord(t, k, "zsk2", record.RoleZSK, dns.ED25519, record.Timeline{Publish: at(time.Hour), Active: at(2 * time.Hour)})
	// Wrapped under a KEK this replica does not hold (a replica's mistake, or a record
	// written by someone without the KEK): never published, no CDS, never signs.
	stray, _ := zoneKeyRecord(t, other, "stray", record.RoleKSK, dns.ED25519, record.Timeline{Publish: at(-2 * time.Hour), Active: at(-2 * time.Hour), SyncPublish: at(-2 * time.Hour)})
	for id, rec := range map[string]*record.ZoneKey{"ksk": ksk, "zsk1": zsk1, "zsk2": zsk2, "stray": stray} {
		put(id, rec)
	}
	testenv.Put(t, cli, record.DeviceKey("/deviceid", "iot.example", "sensor7"), deviceValue(t))

	cfg := caddyConfig(t)
	cfg.kek = k
	d, z := runKeysEtcd(t, cli, cfg, clock)

	const device = "sensor7._device.iot.example."
	// wait polls until the zone's names are signed by want (the change is applied by
	// the zone's etcd loop), or fails after a while.
	wait := func(step string, want ...uint16) {
		t.Helper()
		slices.Sort(want)
		deadline := time.Now().Add(20 * time.Second)
		for {
			got := signedBy(t, d, clock.Now(), device, dns.TypeTLSA)
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: TLSA signed by %v, want %v", step, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	published := func(step string, want ...uint16) {
		t.Helper()
		slices.Sort(want)
		deadline := time.Now().Add(20 * time.Second)
		for {
			m, _ := ask(t, d, "iot.example.", dns.TypeDNSKEY, false, false)
			var got []uint16
			for _, rr := range m.Answer {
				got = append(got, rr.(*dns.DNSKEY).KeyTag())
			}
			slices.Sort(got)
			if slices.Equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: DNSKEY %v, want %v", step, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if tags := signedBy(t, d, clock.Now(), "iot.example.", dns.TypeDNSKEY); !slices.Equal(tags, []uint16{kskTag}) {
			t.Errorf("%s: DNSKEY signed by %v, want the KSK %d", step, tags, kskTag)
		}
	}
	rekey := func(d time.Duration) {
		clock.Add(d)
		z.rekeyNow <- struct{}{}
	}

	wait("start", zsk1Tag)
	published("start", kskTag, zsk1Tag)
	if cds, _ := ask(t, d, "iot.example.", dns.TypeCDS, false, false); len(cds.Answer) != 1 || cds.Answer[0].(*dns.CDS).KeyTag != kskTag {
		t.Errorf("CDS: %v, want the KSK's", cds.Answer)
	}
	if testutil.ToFloat64(keyUnavailable.WithLabelValues("iot.example.", "stray")) != 1 {
		t.Error("the key this replica cannot open is not reported")
	}

	rekey(time.Hour) // the new ZSK is published, and does not sign yet
	published("pre-publication", kskTag, zsk1Tag, zsk2Tag)
	wait("pre-publication", zsk1Tag)

	rekey(time.Hour) // the new ZSK signs; the old one is still published
	wait("rollover", zsk2Tag)
	published("rollover", kskTag, zsk1Tag, zsk2Tag)

	rekey(2 * time.Hour) // the old ZSK is removed
	published("removal", kskTag, zsk2Tag)
	wait("removal", zsk2Tag)

	// A change in etcd is followed at once: a new key published now.
	now := clock.Now()
	zsk3, zsk3Tag := zoneKeyRecord(t, k, "zsk3", record.RoleZSK, dns.ECDSAP256SHA256, record.Timeline{Publish: &now})
	put("zsk3", zsk3)
	published("put", kskTag, zsk2Tag, zsk3Tag)
	wait("put", zsk2Tag)
	// A record whose DNSKEY is not its wrapped key's is never published.
	forged := *zsk3
	forged.DNSKEY = zsk2.DNSKEY
	put("forged", &forged)
	cli.Delete(ctx, record.ZoneKeyKey("/deviceid", "iot.example", "zsk3"))
	published("forged", kskTag, zsk2Tag)

	// A replica that learns of a key late (cut off from etcd while the key was
	// pre-published, it reads a timeline that has the key signing already) publishes
	// it first, and signs with it only after the TTL; meanwhile the ZSK it used signs
	// on, retired by the timeline but still published.
	now = clock.Now()
	zsk4, zsk4Tag := zoneKeyRecord(t, k, "zsk4", record.RoleZSK, dns.ECDSAP256SHA256, record.Timeline{Publish: at(now.Sub(t0) - 2*time.Hour), Active: at(now.Sub(t0) - time.Hour)})
	zsk2.Timeline.Retire, zsk2.Timeline.Remove = at(now.Sub(t0)-time.Hour), at(now.Sub(t0)+2*time.Hour)
	putTogether(map[string]*record.ZoneKey{"zsk2": zsk2, "zsk4": zsk4})
	published("learnt late", kskTag, zsk2Tag, zsk4Tag)
	wait("learnt late", zsk2Tag)
	rekey(time.Duration(cfg.ttl) * time.Second)
	wait("published here for the TTL", zsk4Tag)

	// Cut off through a whole rollover: the ZSK it used is gone too, so the KSK signs
	// the names (in every DNSKEY RRset a validator may hold) until the new ZSK has been
	// published here for the TTL.
	now = clock.Now()
	zsk5, zsk5Tag := zoneKeyRecord(t, k, "zsk5", record.RoleZSK, dns.ECDSAP256SHA256, record.Timeline{Publish: at(now.Sub(t0) - 2*time.Hour), Active: at(now.Sub(t0) - time.Hour)})
	zsk4.Timeline.Retire, zsk4.Timeline.Remove = at(now.Sub(t0)-time.Hour), at(now.Sub(t0)-time.Minute)
	putTogether(map[string]*record.ZoneKey{"zsk4": zsk4, "zsk5": zsk5})
	wait("predecessor gone", kskTag)
	rekey(time.Duration(cfg.ttl) * time.Second)
	wait("predecessor gone, published here for the TTL", zsk5Tag)
}

// TestKeysInHSM: keys etcd opens a key in an HSM by the token of the replica's hsm
// line and the object the record names. A key missing from this replica's token, or
// a replica without the hsm line, leaves that key out and says why, and the zone
// stays signed with the keys it has.
func TestKeysInHSM(t *testing.T) {
	h := testenv.SoftHSM(t)
	etcd := testenv.StartEtcd(t)
	cli := etcd.Client()
	k, err := kek.Generate(filepath.Join(t.TempDir(), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	clock := testenv.NewClock(time.Now().Truncate(time.Second))
	long := clock.Now().Add(-2 * time.Hour)
	tl := record.Timeline{Publish: &long, Active: &long}
	put := func(id string, rec *record.ZoneKey) {
		b, _ := json.Marshal(rec)
		testenv.Put(t, cli, record.ZoneKeyKey("/deviceid", "iot.example", id), string(b))
	}
	ksk, kskTag := zoneKeyRecord(t, k, "ksk", record.RoleKSK, dns.ECDSAP256SHA256, tl)
	ksk.MaxTTL = 30 // the key policy's TTLs are below the replica's
	put("ksk", ksk)
	// The token lives as long as the test process: ids of this run's own.
	zskID := fmt.Sprintf("zsk-%x", time.Now().UnixNano())
	ref, err := pkcs11key.ObjectRef(h.TokenURI(), record.WrapBinding("iot.example", zskID))
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := pkcs11key.InToken(h.TokenURI(), ref)
	hk, err := pkcs11key.Generate(uri, elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	dk, _ := dnskey.FromECDSA("iot.example.", hk.Public().(*ecdsa.PublicKey), false)
	hk.Close()
	_, rdata, _ := strings.Cut(dk.String(), "DNSKEY\t")
	zsk := &record.ZoneKey{Version: 1, Role: record.RoleZSK, DNSKEY: rdata, Private: record.PrivateKeyRef{PKCS11: ref}, Timeline: tl}
	put(zskID, zsk)
	// Another ZSK whose object is not in this replica's token (not copied there yet).
	missing, _ := zoneKeyRecord(t, k, "missing", record.RoleZSK, dns.ECDSAP256SHA256, tl)
	missing.Private = record.PrivateKeyRef{PKCS11: "pkcs11:token=" + h.Token + ";object=iot.example%2Fmissing"}
	put("missing", missing)
	// A record that names the ZSK's object under another id: a key serves the record
	// it was made for only.
	put("copy", zsk)
	const device = "sensor7._device.iot.example."
	testenv.Put(t, cli, record.DeviceKey("/deviceid", "iot.example", "sensor7"), deviceValue(t))

	cfg := caddyConfig(t)
	cfg.kek, cfg.hsm = k, h.TokenURI()
	d, _ := runKeysEtcd(t, cli, cfg, clock)
	if got := signedBy(t, d, clock.Now(), device, dns.TypeTLSA); !slices.Equal(got, []uint16{dk.KeyTag()}) {
		t.Errorf("with the HSM: names signed by %v, want the ZSK in the token %d", got, dk.KeyTag())
	}
	for _, id := range []string{"missing", "copy"} {
		if testutil.ToFloat64(keyUnavailable.WithLabelValues("iot.example.", id)) != 1 {
			t.Errorf("key %s is not reported unavailable", id)
		}
	}
	if got := signedBy(t, d, clock.Now(), "iot.example.", dns.TypeDNSKEY); !slices.Equal(got, []uint16{kskTag}) {
		t.Errorf("DNSKEY signed by %v, want the KSK", got)
	}
	if got := testutil.ToFloat64(keyTTLAbovePolicy.WithLabelValues("iot.example.")); got != 1 {
		t.Errorf("ttl %d above the records' max_ttl 30: ttl_above_key_policy %v", cfg.ttl, got)
	}
	expires := time.Unix(int64(testutil.ToFloat64(signaturesExpire.WithLabelValues("iot.example."))), 0)
	if expires.Before(clock.Now()) || expires.After(clock.Now().Add(cfg.validity)) {
		t.Errorf("apex signatures expire at %s, want within the validity from %s", expires, clock.Now())
	}
	ksk.MaxTTL = cfg.ttl
	put("ksk", ksk)

	// Without the hsm line, the wrapped KSK signs everything.
	cfg = caddyConfig(t)
	cfg.kek = k
	d, _ = runKeysEtcd(t, cli, cfg, clock)
	if got := signedBy(t, d, clock.Now(), device, dns.TypeTLSA); !slices.Equal(got, []uint16{kskTag}) {
		t.Errorf("without the HSM: names signed by %v, want the KSK %d", got, kskTag)
	}
	if got := testutil.ToFloat64(keyTTLAbovePolicy.WithLabelValues("iot.example.")); got != 0 {
		t.Errorf("ttl %d at the records' max_ttl: ttl_above_key_policy %v", cfg.ttl, got)
	}
}
