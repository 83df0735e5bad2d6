package keymgr

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
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
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// parentOf is a parent that serves the DS of every key whose CDS the zone publishes.
func parentOf(reg *registry.Registry, now func() time.Time) func(context.Context, []string, string) Parent {
	return func(ctx context.Context, _ []string, zone string) Parent {
		keys, err := reg.ZoneKeys(ctx)
		if err != nil {
			return Parent{Why: err.Error()}
		}
		var ds []*dns.DS
		for _, k := range keys {
			if k.Key != nil && k.Key.Syncs(now()) {
				dk, _ := k.Key.PublicKey(zone)
				ds = append(ds, dk.ToDS(dns.SHA256))
			}
		}
		return Parent{Known: true, DS: ds}
	}
}

func ids(t *testing.T, reg *registry.Registry) []string {
	t.Helper()
	keys, err := reg.ZoneKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if k.Err != nil {
			t.Fatalf("key %s: %v", k.ID, k.Err)
		}
		out = append(out, k.ID)
	}
	return out
}

// TestManagerTakesOver: one signer runs the key manager at a time; it makes the
// zone's keys once the zone is enabled; when it dies, another takes over and rolls
// the ZSK when it is due; a manager deposed meanwhile can write nothing.
func TestManagerTakesOver(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	k, err := kek.Generate(filepath.Join(t.TempDir(), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	clock := testenv.NewClock(time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC))
	newManager := func(cli *clientv3.Client) *Manager {
		reg := &registry.Registry{Client: cli, Prefix: "/deviceid", Zone: "iot.example."}
		return &Manager{Registry: reg, KEK: k, Actor: registry.OperatorActor("keymgr"), Now: clock.Now, Parent: parentOf(reg, clock.Now)}
	}
	first, second := newManager(testenv.Client(t, etcd.URL())), newManager(etcd.Client())
	reg := second.Registry

	if _, err := first.Step(t.Context(), nil, nil); !errors.Is(err, ErrNotManaged) {
		t.Fatalf("a zone not enabled: %v", err)
	}
	settings, _ := json.Marshal(Settings{Policy: fast})
	if err := reg.PutKeySettings(t.Context(), registry.OperatorActor("test"), 0, settings, "enable"); err != nil {
		t.Fatal(err)
	}
	ctx1, stop1 := context.WithCancel(t.Context())
	done1 := make(chan struct{})
	go func() { first.Run(ctx1, "first", 20*time.Millisecond, 1); close(done1) }()
	waitFor(t, "the first keys", func() bool { return len(ids(t, reg)) == 2 })
	before := ids(t, reg)

	ctx2, stop2 := context.WithCancel(t.Context())
	done2 := make(chan struct{})
	go func() { second.Run(ctx2, "second", 20*time.Millisecond, 1); close(done2) }()
	t.Cleanup(func() { stop2(); <-done2 })

	// The first dies: its etcd client goes away, its session expires.
	stop1()
	first.Registry.Client.Close()
	<-done1
	clock.Add(fast.ZSKLifetime.D())
	waitFor(t, "the ZSK rollover by the second", func() bool { return len(ids(t, reg)) == 3 })
	after := ids(t, reg)
	added := slices.DeleteFunc(slices.Clone(after), func(id string) bool { return slices.Contains(before, id) })
	if len(added) != 1 || added[0][:4] != "zsk-" {
		t.Fatalf("keys %v after %v", after, before)
	}
	entries, _, err := reg.Audit(t.Context(), registry.OperatorActor("test"), registry.AuditFilter{Operation: "key.create"})
	if err != nil || len(entries) != 3 {
		t.Errorf("key.create audit entries: %d %v", len(entries), err)
	}

	// A manager with another KEK than the zone's makes no key the replicas cannot open.
	other, _ := kek.Generate(filepath.Join(t.TempDir(), "other"))
	wrong := newManager(etcd.Client())
	wrong.KEK = other
	if _, err := wrong.Step(t.Context(), &Request{Roll: record.RoleKSK}, nil); err == nil || !strings.Contains(err.Error(), "is not the one the zone's keys are wrapped under") {
		t.Errorf("a roll with the wrong KEK: %v", err)
	}
	if got := ids(t, reg); len(got) != 3 {
		t.Errorf("keys after a roll with the wrong KEK: %v", got)
	}

	// A write fenced by a leadership that is gone is refused.
	stale := &registry.Fence{Key: reg.ElectionPrefix() + "/gone", Rev: 1}
	keys, _ := reg.ZoneKeys(t.Context())
	rec := *keys[0].Key
	if err := reg.WriteZoneKey(t.Context(), registry.OperatorActor("old"), stale, keys[0].ID, keys[0].Revision, &rec, "key.step", "stale"); !errors.Is(err, registry.ErrConflict) {
		t.Errorf("a write by a deposed manager: %v", err)
	}
}

// waitFor polls cond, which another goroutine makes true, for a while.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMakeKeyInHSM: with an HSM the manager makes each key in the token, and the
// record names only the token and the object: the key it names is the DNSKEY's.
func TestMakeKeyInHSM(t *testing.T) {
	h := testenv.SoftHSM(t)
	m := &Manager{Registry: &registry.Registry{Zone: "iot.example"}, HSM: h.TokenURI()}
	id := newKeyID(time.Now())(record.RoleZSK)
	rec, err := m.makeKey(id, record.RoleZSK, dns.ECDSAP256SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Validate("iot.example"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rec.Private.PKCS11, "?") || len(rec.Private.Wrapped) > 0 {
		t.Errorf("private %+v: want the token and object only", rec.Private)
	}
	uri, err := pkcs11key.InToken(h.TokenURI(), rec.Private.PKCS11)
	if err != nil {
		t.Fatal(err)
	}
	k, err := pkcs11key.Open(uri, elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dk, _ := rec.PublicKey("iot.example")
	fromToken, _ := dnskey.FromECDSA("iot.example.", k.Public().(*ecdsa.PublicKey), false)
	if fromToken.PublicKey != dk.PublicKey {
		t.Error("the DNSKEY is not the token's key")
	}
	if _, err := m.makeKey(id+"b", record.RoleZSK, dns.ED25519); err == nil || !strings.Contains(err.Error(), "P-256") {
		t.Errorf("an Ed25519 key in the HSM: %v", err)
	}
	// A deleted record's key leaves the token (it cannot be brought back); a record
	// naming it under another id deletes nothing.
	m.deleteFromHSM("other", rec)
	if k, err := pkcs11key.Open(uri, elliptic.P256()); err != nil {
		t.Fatalf("deleted for another record: %v", err)
	} else {
		k.Close()
	}
	m.deleteFromHSM(id, rec)
	if _, err := pkcs11key.Open(uri, elliptic.P256()); err == nil {
		t.Error("the key of a deleted record is still in the token")
	}
}

// TestObserveMetrics: the metrics count the keys by role and state and say when the
// signing keys' lifetimes end.
func TestObserveMetrics(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	const zone = "metrics.example"
	m := &Manager{Registry: &registry.Registry{Zone: zone}, Now: func() time.Time { return now }}
	p := DefaultPolicy
	m.observe(Report{Policy: p, Keys: []registry.StoredZoneKey{
		{ID: "ksk", Key: &record.ZoneKey{Role: record.RoleKSK, Timeline: record.Timeline{Publish: at(-90 * 24 * time.Hour), Active: at(-90 * 24 * time.Hour)}}},
		{ID: "zsk-old", Key: &record.ZoneKey{Role: record.RoleZSK, Timeline: record.Timeline{Publish: at(-40 * 24 * time.Hour), Active: at(-40 * 24 * time.Hour), Retire: at(-time.Hour), Remove: at(time.Hour)}}},
		{ID: "zsk", Key: &record.ZoneKey{Role: record.RoleZSK, Timeline: record.Timeline{Publish: at(-2 * time.Hour), Active: at(-time.Hour)}}},
		{ID: "zsk-next", Key: &record.ZoneKey{Role: record.RoleZSK, Timeline: record.Timeline{Publish: at(time.Hour)}}},
	}}, nil)
	for _, c := range []struct {
		role, state string
		want        float64
	}{{record.RoleKSK, "signing", 1}, {record.RoleZSK, "signing", 1}, {record.RoleZSK, "retired", 1}, {record.RoleZSK, "created", 1}, {record.RoleZSK, "published", 0}, {record.RoleCSK, "signing", 0}} {
		if got := testutil.ToFloat64(keyCount.WithLabelValues(zone, c.role, c.state)); got != c.want {
			t.Errorf("keys %s %s: %v, want %v", c.role, c.state, got, c.want)
		}
	}
	for role, want := range map[string]time.Time{record.RoleZSK: now.Add(-time.Hour + p.ZSKLifetime.D()), record.RoleKSK: now.Add(-90*24*time.Hour + p.KSKLifetime.D())} {
		if got := testutil.ToFloat64(lifetimeEnd.WithLabelValues(zone, role)); got != float64(want.Unix()) {
			t.Errorf("%s lifetime ends at %v, want %v", role, time.Unix(int64(got), 0).UTC(), want)
		}
	}
}
