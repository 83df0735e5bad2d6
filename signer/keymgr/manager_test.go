package keymgr

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
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
