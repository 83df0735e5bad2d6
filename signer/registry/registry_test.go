package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// tenantRegistry is a registry with tenants acme and globex and their actors.
func tenantRegistry(t *testing.T) (*Registry, Actor, Actor, *testenv.Clock) {
	t.Helper()
	r := testRegistry(t)
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	r.Now = clock.Now
	for _, name := range []string{"acme", "globex"} {
		if _, err := r.CreateTenant(t.Context(), testOperator, name); err != nil {
			t.Fatal(err)
		}
	}
	return r, Actor{ID: "token:acme", Tenant: "acme"}, Actor{ID: "token:globex", Tenant: "globex"}, clock
}

func mustDevice(t *testing.T, r *Registry, name string) *record.Device {
	t.Helper()
	d, _, err := r.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestLifecycle(t *testing.T) {
	r, acme, globex, clock := tenantRegistry(t)
	ctx := t.Context()
	render := func(t *testing.T, name string) []record.Published {
		return mustDevice(t, r, name).Render(60, clock.Now(), record.RenderOptions{RevokedUsage: 255})
	}

	var d *record.Device
	var err error
	e := &Enroller{CA: catest.New(t), Registry: r}
	if !t.Run("register", func(t *testing.T) {
		d, err = r.Register(ctx, acme, "lamp", "", map[string]string{"model": "th-200"})
		if err != nil || d.Tenant != "acme" || len(d.Credentials) != 0 || len(render(t, "lamp")) != 0 {
			t.Fatalf("register: %+v %v", d, err)
		}
		if _, err := r.Register(ctx, acme, "lamp", "", nil); err != nil {
			t.Errorf("registering again: %v", err)
		}
		if _, err := r.Register(ctx, globex, "lamp", "", nil); !errors.Is(err, ErrConflict) {
			t.Errorf("another tenant registering a held name: %v", err)
		}
		if _, err := r.Register(ctx, acme, "lamp2", "globex", nil); !errors.Is(err, ErrForbidden) {
			t.Errorf("a tenant registering for another: %v", err)
		}
		if _, err := r.Register(ctx, testOperator, "lamp3", "initech", nil); !errors.Is(err, ErrNoTenant) {
			t.Errorf("registering for a tenant that does not exist: %v", err)
		}

	}) {
		return
	}

	if !t.Run("enroll", func(t *testing.T) {
		key := testenv.DeviceKey(t)
		if _, err := e.Enroll(ctx, Enrollment{Actor: globex, Device: "lamp", PublicKey: key.Public()}); !errors.Is(err, ErrNotFound) {
			t.Errorf("another tenant enrolling: %v", err)
		}
		if _, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "lamp", PublicKey: key.Public()}); err != nil {
			t.Fatal(err)
		}
		if p := render(t, "lamp"); len(p) != 1 || p[0].Usage != 3 {
			t.Fatalf("enrolled: %+v", p)
		}

	}) {
		return
	}

	if !t.Run("suspend", func(t *testing.T) {
		// Suspend: nothing published as active; resume brings it back.
		if _, err := r.SetSuspended(ctx, globex, "lamp", true); !errors.Is(err, ErrNotFound) {
			t.Errorf("another tenant suspending: %v", err)
		}
		if _, err := r.SetSuspended(ctx, acme, "lamp", true); err != nil || len(render(t, "lamp")) != 0 {
			t.Fatalf("suspended: %v %+v", err, render(t, "lamp"))
		}
		if _, err := r.SetSuspended(ctx, acme, "lamp", false); err != nil || len(render(t, "lamp")) != 1 {
			t.Fatalf("resumed: %v", err)
		}

	}) {
		return
	}

	if !t.Run("transfer", func(t *testing.T) {
		// Transfer: codes are one-time, expire and only the losing tenant cancels.
		code, _, err := r.StartTransfer(ctx, acme, "lamp", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.StartTransfer(ctx, globex, "lamp", time.Hour); !errors.Is(err, ErrNotFound) {
			t.Errorf("gaining tenant starting a transfer: %v", err)
		}
		if _, err := r.AcceptTransfer(ctx, globex, "lamp", "", "WRONG", false); !errors.Is(err, ErrBadTransferCode) {
			t.Errorf("wrong code: %v", err)
		}
		if _, err := r.AcceptTransfer(ctx, acme, "lamp", "", code, false); !errors.Is(err, ErrInvalid) {
			t.Errorf("transfer to the same tenant: %v", err)
		}
		if _, err := r.SetTenantDisabled(ctx, testOperator, "globex", true); err != nil {
			t.Fatal(err)
		}
		if _, err := r.AcceptTransfer(ctx, testOperator, "lamp", "globex", code, false); !errors.Is(err, ErrTenantDisabled) {
			t.Errorf("transfer to a disabled tenant: %v", err)
		}
		r.SetTenantDisabled(ctx, testOperator, "globex", false)
		if err := r.CancelTransfer(ctx, globex, "lamp"); !errors.Is(err, ErrNotFound) {
			t.Errorf("gaining tenant cancelling: %v", err)
		}
		if err := r.CancelTransfer(ctx, acme, "lamp"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.AcceptTransfer(ctx, globex, "lamp", "", code, false); !errors.Is(err, ErrBadTransferCode) {
			t.Errorf("cancelled code: %v", err)
		}
		code, _, _ = r.StartTransfer(ctx, acme, "lamp", time.Hour)
		clock.Add(time.Hour + time.Second)
		if _, err := r.AcceptTransfer(ctx, globex, "lamp", "", code, false); !errors.Is(err, ErrBadTransferCode) {
			t.Errorf("expired code: %v", err)
		}
		code, _, _ = r.StartTransfer(ctx, acme, "lamp", time.Hour)
		d, err = r.AcceptTransfer(ctx, globex, "lamp", "", code, false)
		if err != nil || d.Tenant != "globex" || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Reason != "affiliationChanged" {
			t.Fatalf("transfer, keys revoked: %+v %v", d, err)
		}
		if _, err := r.AcceptTransfer(ctx, globex, "lamp", "", code, false); !errors.Is(err, ErrBadTransferCode) {
			t.Errorf("reused code: %v", err)
		}
		if _, err := r.SetSuspended(ctx, acme, "lamp", true); !errors.Is(err, ErrNotFound) {
			t.Errorf("the losing tenant after the transfer: %v", err)
		}
		// Keys kept: a second transfer back.
		e.Enroll(ctx, Enrollment{Actor: globex, Device: "lamp", PublicKey: testenv.DeviceKey(t).Public()})
		code, _, _ = r.StartTransfer(ctx, globex, "lamp", time.Hour)
		if d, err = r.AcceptTransfer(ctx, acme, "lamp", "", code, true); err != nil || d.Tenant != "acme" || d.Credentials[1].Status != record.StatusActive {
			t.Fatalf("transfer, keys kept: %+v %v", d, err)
		}

	}) {
		return
	}

	t.Run("index and deletion", func(t *testing.T) {
		// The tenant index follows; a tenant with devices cannot be deleted.
		if list, _, _ := r.Search(ctx, globex, Filter{}); len(list) != 0 {
			t.Errorf("globex still lists %v", list)
		}
		if list, _, _ := r.Search(ctx, acme, Filter{}); len(list) != 1 || list[0].Name != "lamp" {
			t.Errorf("acme lists %v", list)
		}
		r.SetTenantDisabled(ctx, testOperator, "acme", true)
		if err := r.DeleteTenant(ctx, testOperator, "acme"); !errors.Is(err, ErrConflict) {
			t.Errorf("deleting a tenant with devices: %v", err)
		}
		r.SetTenantDisabled(ctx, testOperator, "acme", false)
		if err := r.Delete(ctx, globex, "lamp"); !errors.Is(err, ErrNotFound) {
			t.Errorf("another tenant deleting: %v", err)
		}
		if err := r.Delete(ctx, acme, "lamp"); err != nil {
			t.Fatal(err)
		}
		if err := r.DeleteTenant(ctx, testOperator, "acme"); !errors.Is(err, ErrConflict) {
			t.Errorf("deleting an enabled tenant: %v", err)
		}
		r.SetTenantDisabled(ctx, testOperator, "acme", true)
		if err := r.DeleteTenant(ctx, testOperator, "acme"); err != nil {
			t.Errorf("deleting an empty disabled tenant: %v", err)
		}
		if err := r.DeleteTenant(ctx, acme, "globex"); !errors.Is(err, ErrForbidden) {
			t.Errorf("a tenant deleting a tenant: %v", err)
		}
	})
}

// TestAssign: the operator gives a device from before tenants to one, and moves a
// tenant's device to another without a code; nobody else can.
func TestAssign(t *testing.T) {
	r, acme, globex, clock := tenantRegistry(t)
	ctx := t.Context()
	e := &Enroller{CA: catest.New(t), Registry: r}
	if _, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "old", PublicKey: testenv.DeviceKey(t).Public()}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, acme, "old", "", nil); !errors.Is(err, ErrConflict) {
		t.Errorf("a tenant registering a device from before tenants: %v", err)
	}
	for _, tc := range []struct {
		actor  Actor
		device string
		tenant string
		want   error
	}{
		{acme, "old", "acme", ErrForbidden},
		{testOperator, "old", "", ErrInvalid},
		{testOperator, "old", "Bad Tenant", ErrInvalid},
		{testOperator, "bad_name", "acme", ErrInvalid},
		{testOperator, "nothing", "acme", ErrNotFound},
		{testOperator, "old", "initech", ErrNoTenant},
	} {
		before := testenv.Revision(t, r.Client)
		if _, err := r.Assign(ctx, tc.actor, tc.device, tc.tenant, true); !errors.Is(err, tc.want) {
			t.Errorf("assign %s to %q by %s: %v, want %v", tc.device, tc.tenant, tc.actor.ID, err, tc.want)
		}
		if after := testenv.Revision(t, r.Client); after != before {
			t.Errorf("assign %s to %q by %s changed etcd", tc.device, tc.tenant, tc.actor.ID)
		}
	}

	// Adopted with its key active; assigning again changes nothing.
	d, err := r.Assign(ctx, testOperator, "old", "acme", true)
	if err != nil || d.Tenant != "acme" || d.Credentials[0].Status != record.StatusActive {
		t.Fatalf("adopted: %+v %v", d, err)
	}
	before := testenv.Revision(t, r.Client)
	if _, err := r.Assign(ctx, testOperator, "old", "acme", false); err != nil || testenv.Revision(t, r.Client) != before || mustDevice(t, r, "old").Credentials[0].Status != record.StatusActive {
		t.Errorf("assigning to its tenant again: %v, revision %d -> %d", err, before, testenv.Revision(t, r.Client))
	}
	if list, _, _ := r.Search(ctx, acme, Filter{}); len(list) != 1 || list[0].Name != "old" {
		t.Errorf("acme lists %v", list)
	}

	// Moved to globex with the keys revoked: acme's pending codes die with the move.
	if _, _, err := r.StartTransfer(ctx, acme, "old", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.IssueCode(ctx, acme, "old", "", time.Hour); err != nil {
		t.Fatal(err)
	}
	r.SetTenantDisabled(ctx, testOperator, "globex", true)
	if _, err := r.Assign(ctx, testOperator, "old", "globex", false); !errors.Is(err, ErrTenantDisabled) {
		t.Errorf("to a disabled tenant: %v", err)
	}
	r.SetTenantDisabled(ctx, testOperator, "globex", false)
	clock.Add(time.Second) // audit entries are in time order
	d, err = r.Assign(ctx, testOperator, "old", "globex", false)
	if err != nil || d.Tenant != "globex" || d.Credentials[0].Status != record.StatusRevoked || d.Credentials[0].Reason != "affiliationChanged" {
		t.Fatalf("moved: %+v %v", d, err)
	}
	for _, key := range []string{r.signerKey(kindTransfer, "old"), r.codeKey("old")} {
		if resp, _ := r.Client.Get(ctx, key); len(resp.Kvs) != 0 {
			t.Errorf("%s is still there", key)
		}
	}
	if list, _, _ := r.Search(ctx, acme, Filter{}); len(list) != 0 {
		t.Errorf("acme still lists %v", list)
	}
	if _, err := r.SetSuspended(ctx, globex, "old", true); err != nil {
		t.Errorf("the new tenant: %v", err)
	}
	entries, _, err := r.Audit(ctx, testOperator, AuditFilter{Device: "old", Operation: "device.assign"})
	if err != nil || len(entries) != 2 || entries[1].Detail != "keys revoked (affiliationChanged)" || entries[1].Before.Tenant != "acme" || entries[1].After.Revoked != 1 {
		t.Errorf("audit: %+v %v", entries, err)
	}
}

// TestTokens issues, uses and revokes tenant tokens.
func TestTokens(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	tok, err := r.IssueToken(ctx, acme, "acme", "ci")
	if err != nil {
		t.Fatal(err)
	}
	if a, err := r.Authenticate(ctx, tok.Secret); err != nil || a.Tenant != "acme" || a.ID != "token:"+tok.ID {
		t.Errorf("authenticate: %+v %v", a, err)
	}
	stored, _ := r.Client.Get(ctx, r.signerKey(kindToken, tok.ID))
	if len(stored.Kvs) != 1 || string(stored.Kvs[0].Value) == "" || containsSecret(stored.Kvs[0].Value, tok.Secret) {
		t.Errorf("the stored token holds its secret: %s", stored.Kvs[0].Value)
	}
	for _, bad := range []string{"", "did_", tok.Secret + "x", "did_" + tok.ID + "_wrong", "did_zzzzzzzzzzzzzzzz_x"} {
		if _, err := r.Authenticate(ctx, bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("token %q: %v", bad, err)
		}
	}
	if _, err := r.IssueToken(ctx, globex, "acme", ""); !errors.Is(err, ErrNoTenant) {
		t.Errorf("another tenant issuing: %v", err)
	}
	r.SetTenantDisabled(ctx, testOperator, "acme", true)
	if _, err := r.Authenticate(ctx, tok.Secret); !errors.Is(err, ErrTenantDisabled) {
		t.Errorf("disabled tenant: %v", err)
	}
	r.SetTenantDisabled(ctx, testOperator, "acme", false)
	if err := r.RevokeToken(ctx, globex, "acme", tok.ID); !errors.Is(err, ErrNoTenant) {
		t.Errorf("another tenant revoking: %v", err)
	}
	if err := r.RevokeToken(ctx, acme, "acme", tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(ctx, tok.Secret); !errors.Is(err, ErrBadToken) {
		t.Errorf("revoked token: %v", err)
	}
}

func containsSecret(stored []byte, secret string) bool {
	_, s, _ := strings.Cut(secret[len(tokenPrefix):], "_")
	return strings.Contains(string(stored), s)
}

// TestConcurrentLifecycle races suspend, resume, revoke and transfer on one device:
// whatever the order, the audit trail is one chain (each entry starts from the state
// the previous one left) that ends in the record as stored.
func TestConcurrentLifecycle(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	e := &Enroller{CA: catest.New(t), Registry: r}
	for round := range 5 {
		name := fmt.Sprintf("dev%d", round)
		if _, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: name, PublicKey: testenv.DeviceKey(t).Public()}); err != nil {
			t.Fatal(err)
		}
		code, _, err := r.StartTransfer(ctx, acme, name, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		ops := []func() error{
			func() error { _, err := r.SetSuspended(ctx, acme, name, true); return err },
			func() error { _, err := r.Revoke(ctx, acme, name, nil, "keyCompromise"); return err },
			func() error { _, err := r.AcceptTransfer(ctx, globex, name, "", code, true); return err },
			func() error { _, err := r.SetSuspended(ctx, acme, name, false); return err },
		}
		for _, op := range ops {
			wg.Go(func() {
				// A tenant that lost the device meanwhile gets "not found": a consistent refusal.
				if err := op(); err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("%s: %v", name, err)
				}
			})
		}
		wg.Wait()
		entries, _, err := r.Audit(ctx, testOperator, AuditFilter{Device: name, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		// The key orders entries by time (here all at one fake instant); the
		// revision orders them exactly.
		slices.SortFunc(entries, func(a, b AuditEntry) int { return int(a.Revision - b.Revision) })
		var last *Summary
		for i, en := range entries {
			if i > 0 && fmt.Sprint(en.Before) != fmt.Sprint(last) {
				t.Errorf("%s: entry %d (%s) starts from %+v, the previous left %+v", name, i, en.Operation, en.Before, last)
			}
			last = en.After
		}
		if got := Summarize(mustDevice(t, r, name)); fmt.Sprint(got) != fmt.Sprint(last) {
			t.Errorf("%s: stored %+v, the audit trail ends in %+v", name, got, last)
		}
	}
}

// TestEveryChangeAudited watches every etcd event under the prefix while the
// registry does one of each operation, and finds an audit entry written at the
// revision of each change.
func TestEveryChangeAudited(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	start, _ := r.Client.Get(ctx, "/")
	watch := r.Client.Watch(ctx, r.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))
	e := &Enroller{CA: catest.New(t), Registry: r}
	steps := []func() error{
		func() error { _, err := r.Register(ctx, acme, "a", "", map[string]string{"serial": "1"}); return err },
		func() error { _, _, err := r.IssueCode(ctx, acme, "b", "", time.Hour); return err },
		func() error {
			_, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "a", PublicKey: testenv.DeviceKey(t).Public()})
			return err
		},
		func() error { _, err := r.SetAttributes(ctx, acme, "a", map[string]string{"serial": "2"}); return err },
		func() error { _, err := r.SetSuspended(ctx, acme, "a", true); return err },
		func() error { _, err := r.SetSuspended(ctx, acme, "a", false); return err },
		func() error { _, err := r.Revoke(ctx, acme, "a", nil, "superseded"); return err },
		func() error {
			code, _, err := r.StartTransfer(ctx, acme, "a", time.Hour)
			if err == nil {
				_, err = r.AcceptTransfer(ctx, globex, "a", "", code, false)
			}
			return err
		},
		func() error {
			_, _, err := r.StartTransfer(ctx, globex, "a", time.Hour)
			if err == nil {
				err = r.CancelTransfer(ctx, globex, "a")
			}
			return err
		},
		func() error { _, err := r.IssueToken(ctx, acme, "acme", "x"); return err },
		func() error { return r.Delete(ctx, globex, "a") },
		func() error { _, err := r.CreateTenant(ctx, testOperator, "initech"); return err },
		func() error { _, err := r.SetTenantDisabled(ctx, testOperator, "initech", true); return err },
		func() error { return r.DeleteTenant(ctx, testOperator, "initech") },
		func() error { return r.PutCA(ctx, e.CA) },
		func() error { return r.PutCA(ctx, e.CA) }, // as it is: nothing written
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	end, _ := r.Client.Get(ctx, "/")
	audited := map[int64]bool{}
	changed := map[int64]string{}
	auditPrefix := r.signerKey(kindAudit, "")
	for resp := range watch {
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if len(key) >= len(auditPrefix) && key[:len(auditPrefix)] == auditPrefix {
				audited[ev.Kv.ModRevision] = true
			} else {
				changed[ev.Kv.ModRevision] = key
			}
		}
		if resp.Header.Revision >= end.Header.Revision {
			break
		}
	}
	if len(changed) < len(steps) {
		t.Fatalf("only %d changes seen", len(changed))
	}
	for rev, key := range changed {
		if !audited[rev] {
			t.Errorf("revision %d changed %s without an audit entry", rev, key)
		}
	}
}

// TestAuditRetention compacts the trail by age and by count, on a fake clock.
func TestAuditRetention(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t) // 2 entries: the tenants
	ctx := t.Context()
	for i := range 10 {
		clock.Add(24 * time.Hour)
		if _, err := r.Register(ctx, acme, fmt.Sprintf("d%d", i), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		es, _, err := r.Audit(ctx, testOperator, AuditFilter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	if n := count(); n != 12 {
		t.Fatalf("%d entries, want 12", n)
	}
	// Entries at day 0 (2), 1..10: keep 5 days (days 6..10 and the one at exactly 5 days ago).
	deleted, err := r.CompactAudit(ctx, Retention{MaxAge: 5 * 24 * time.Hour})
	if err != nil || deleted != 6 || count() != 6 {
		t.Errorf("by age: deleted %d (%v), %d left; want 6 and 6", deleted, err, count())
	}
	deleted, err = r.CompactAudit(ctx, Retention{MaxCount: 4})
	es, _, _ := r.Audit(ctx, testOperator, AuditFilter{})
	if err != nil || deleted != 2 || len(es) != 4 || es[0].Device != "d6" {
		t.Errorf("by count: deleted %d (%v), left %v", deleted, err, es)
	}
}

// TestSearchPaging pages through devices with filters while others are written: no
// device that exists throughout is skipped or repeated.
func TestSearchPaging(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	want := map[string]bool{}
	for i := range 120 {
		name := fmt.Sprintf("n%03d", i)
		owner := acme
		if i%3 == 0 {
			owner = globex
		}
		attrs := map[string]string{"model": []string{"a", "b"}[i%2]}
		if _, err := r.Register(ctx, owner, name, "", attrs); err != nil {
			t.Fatal(err)
		}
		if owner == acme && i%2 == 0 {
			want[name] = true
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // churn: names sorting among the listed ones come and go
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("n%03d-x", i%120)
			r.Register(ctx, acme, name, "", map[string]string{"model": "a"})
			r.Delete(ctx, acme, name)
		}
	})
	seen := map[string]int{}
	f := Filter{Attributes: map[string]string{"model": "a"}, Limit: 7}
	for pages := 0; ; pages++ {
		list, next, err := r.Search(ctx, acme, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list {
			if e.Device.Tenant != "acme" || e.Device.Attributes["model"] != "a" {
				t.Errorf("%s does not match: %+v", e.Name, e.Device)
			}
			seen[e.Name]++
		}
		if next == "" {
			break
		}
		f.After = next
	}
	close(stop)
	wg.Wait()
	for name := range want {
		if seen[name] != 1 {
			t.Errorf("%s seen %d times", name, seen[name])
		}
	}
	if list, _, _ := r.Search(ctx, testOperator, Filter{Tenant: "globex", Prefix: "n00"}); len(list) != 4 { // n000, n003, n006, n009
		t.Errorf("operator, globex, prefix n00: %d devices", len(list))
	}
	if _, _, err := r.Search(ctx, testOperator, Filter{State: "asleep"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad state: %v", err)
	}
}
