package test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/keymgr"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// TestDSPushWithParent: with -keys-ds-push the key manager pushes the DS set its CDS
// asks for to a real parent (BIND named, UPDATE with TSIG) through a KSK rollover it
// drives unattended on a fake clock, asking named for the DS before each step. A
// wrong TSIG key is refused by named, said, and changes nothing; the DS of a key
// record written into etcd by someone without the KEK is never pushed.
func TestDSPushWithParent(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	ctx := t.Context()
	operator := registry.OperatorActor("test")
	clock := testenv.NewClock(time.Now())
	policy := keymgr.DefaultPolicy
	policy.DSTTL = keymgr.Duration(time.Hour)
	settings, _ := json.Marshal(keymgr.Settings{Policy: policy})
	if err := reg.PutKeySettings(ctx, operator, 0, settings, "enable"); err != nil {
		t.Fatal(err)
	}
	k, err := kek.Generate(filepath.Join(t.TempDir(), "kek"))
	if err != nil {
		t.Fatal(err)
	}
	m := &keymgr.Manager{Registry: reg, KEK: k, Actor: registry.OperatorActor("keymgr"), Now: clock.Now}
	step := func(m *keymgr.Manager, req *keymgr.Request) keymgr.Report {
		t.Helper()
		rep, err := m.Step(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	dsOf := func(zk registry.StoredZoneKey) *dns.DS {
		dk, _ := zk.Key.PublicKey(zone)
		return dk.ToDS(dns.SHA256)
	}
	step(m, nil) // the zone's first keys
	keys, _ := reg.ZoneKeys(ctx)
	var first registry.StoredZoneKey
	for _, zk := range keys {
		if zk.Key.SEP() {
			first = zk
		}
	}
	p := startParent(t, 3600, dsOf(first))
	tsig, err := keymgr.ParseTSIG(p.tsig)
	if err != nil {
		t.Fatal(err)
	}
	m.Push = &keymgr.ParentUpdate{Server: p.addr(), Zone: "example.", TSIG: tsig}
	cds := func() []string {
		keys, _ := reg.ZoneKeys(ctx)
		var out []string
		for _, zk := range keys {
			if zk.Key.Syncs(clock.Now()) {
				out = append(out, dsKey(dsOf(zk)))
			}
		}
		slices.Sort(out)
		return out
	}
	served := func() []string {
		var out []string
		for _, d := range p.ds(t) {
			out = append(out, dsKey(d))
		}
		slices.Sort(out)
		return out
	}

	// A KSK record written into etcd by someone without the KEK, asking for its DS.
	_, strayKey, err := dnskey.Generate(t.TempDir(), zone, dns.ECDSAP256SHA256, true)
	if err != nil {
		t.Fatal(err)
	}
	forged := *first.Key
	_, forged.DNSKEY, _ = strings.Cut(strayKey.String(), "DNSKEY\t")
	forgedJSON, _ := json.Marshal(forged)
	testenv.Put(t, reg.Client, record.ZoneKeyKey("/deviceid", zone, "ksk-forged"), string(forgedJSON))
	if rep := step(m, nil); !slices.ContainsFunc(rep.Waiting, func(w string) bool { return strings.Contains(w, "ksk-forged") }) {
		t.Errorf("the forged key is not said: %v", rep.Waiting)
	}
	if got := served(); !slices.Equal(got, []string{dsKey(dsOf(first))}) {
		t.Fatalf("the DS of a forged key reached the parent: %v", got)
	}
	if _, err := reg.Client.Delete(ctx, record.ZoneKeyKey("/deviceid", zone, "ksk-forged")); err != nil {
		t.Fatal(err)
	}

	// A KSK rollover; a wrong TSIG key first.
	clock.Add(time.Hour)
	step(m, &keymgr.Request{Roll: record.RoleKSK})
	bad := &keymgr.Manager{Registry: reg, KEK: k, Actor: m.Actor, Now: clock.Now,
		Push: &keymgr.ParentUpdate{Server: p.addr(), Zone: "example.", TSIG: keymgr.TSIG{Algorithm: tsig.Algorithm, Name: tsig.Name, Secret: "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}}}
	if rep := step(bad, nil); !slices.ContainsFunc(rep.Waiting, func(w string) bool {
		return strings.Contains(w, "take the DS update") && strings.Contains(w, "TSIG key parent-update.")
	}) {
		t.Errorf("a refused update is not said: %v", rep.Waiting)
	}
	if got := served(); !slices.Equal(got, []string{dsKey(dsOf(first))}) {
		t.Errorf("after a refused update the parent serves %v", got)
	}
	step(m, nil) // pushed with the right key
	if got, want := served(), cds(); !slices.Equal(got, want) || len(got) != 2 {
		t.Fatalf("after the push the parent serves %v, want the CDS's %v", got, want)
	}
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatalf("the KSK rollover did not end in %d steps: %v", i, step(m, nil).Waiting)
		}
		clock.Add(5 * time.Minute)
		step(m, nil)
		keys, _ := reg.ZoneKeys(ctx)
		if !slices.ContainsFunc(keys, func(zk registry.StoredZoneKey) bool { return zk.ID == first.ID }) {
			break
		}
	}
	if got, want := served(), cds(); !slices.Equal(got, want) || len(got) != 1 || got[0] == dsKey(dsOf(first)) {
		t.Errorf("after the rollover the parent serves %v, want the new KSK's %v", got, want)
	}
}

// dsKey is a DS record without owner and TTL, to compare.
func dsKey(d *dns.DS) string {
	return fmt.Sprintf("%d %d %d %s", d.KeyTag, d.Algorithm, d.DigestType, strings.ToUpper(d.Digest))
}
