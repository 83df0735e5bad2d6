package registry

import (
	"errors"
	"slices"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
)

// TestReindex: records put into etcd directly join their tenant's index, entries of
// devices that are gone or moved leave it, a dry run changes nothing, and a second run
// finds nothing to do.
func TestReindex(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	if _, err := r.Register(ctx, acme, "kept", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, globex, "moved", "", nil); err != nil {
		t.Fatal(err)
	}
	put := func(key, value string) {
		t.Helper()
		if _, err := r.Client.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	dev := func(name string) string { return record.DeviceKey(r.Prefix, r.Zone, name) }
	put(dev("raw"), `{"version": 1, "tenant": "acme"}`)      // never indexed
	put(dev("moved"), `{"version": 1, "tenant": "acme"}`)    // indexed under globex
	put(dev("stray"), `{"version": 1, "tenant": "initech"}`) // a tenant that does not exist
	put(dev("broken"), `{"version": 1, "tenant": 7}`)        // invalid: left alone
	put(dev("plain"), `{"version": 1}`)                      // no tenant: no entry
	put(r.indexKey("acme", "gone"), "")                      // no record
	put(r.indexKey("globex", "broken"), "")                  // kept: the record's tenant is unknown

	if _, err := r.Reindex(ctx, acme, false); !errors.Is(err, ErrForbidden) {
		t.Errorf("a tenant reindexing: %v", err)
	}
	before := testenv.Revision(t, r.Client)
	dry, err := r.Reindex(ctx, testOperator, true)
	if err != nil {
		t.Fatal(err)
	}
	if after := testenv.Revision(t, r.Client); after != before {
		t.Errorf("the dry run wrote: revision %d -> %d", before, after)
	}
	wantAdded := []string{"acme/moved", "acme/raw", "initech/stray"}
	wantRemoved := []string{"globex/moved", "acme/gone"}
	if dry.Devices != 6 || !slices.Equal(dry.Added, wantAdded) || !slices.Equal(dry.Removed, wantRemoved) || !slices.Equal(dry.UnknownTenants, []string{"initech/stray"}) {
		t.Errorf("dry run: %+v", dry)
	}

	rep, err := r.Reindex(ctx, testOperator, false)
	if err != nil || !slices.Equal(rep.Added, wantAdded) || !slices.Equal(rep.Removed, wantRemoved) || len(rep.Changed) != 0 {
		t.Fatalf("reindex: %+v %v", rep, err)
	}
	names := func(actor Actor) []string {
		entries, _, err := r.Search(ctx, actor, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			out = append(out, e.Name)
		}
		return out
	}
	if got := names(acme); !slices.Equal(got, []string{"kept", "moved", "raw"}) {
		t.Errorf("acme lists %v", got)
	}
	if got := names(globex); len(got) != 0 {
		t.Errorf("globex lists %v", got)
	}
	if resp, _ := r.Client.Get(ctx, r.indexKey("globex", "broken")); len(resp.Kvs) != 1 {
		t.Error("the entry of an invalid record was removed")
	}
	entries, _, err := r.Audit(ctx, testOperator, AuditFilter{Operation: "index.repair"})
	if err != nil || len(entries) != 5 {
		t.Errorf("audit: %d entries, %v", len(entries), err)
	}
	again, err := r.Reindex(ctx, testOperator, false)
	if err != nil || len(again.Added)+len(again.Removed) != 0 {
		t.Errorf("second run: %+v %v", again, err)
	}
	// The repaired index keeps acme from being deleted while raw is there.
	r.SetTenantDisabled(ctx, testOperator, "acme", true)
	if err := r.DeleteTenant(ctx, testOperator, "acme"); !errors.Is(err, ErrConflict) {
		t.Errorf("deleting acme with a raw device: %v", err)
	}
}
