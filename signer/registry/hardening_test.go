package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// One tenant's writes never push another tenant's entries out of the trail: the
// count retention keeps each owner's newest entries.
func TestAuditRetentionPerTenant(t *testing.T) {
	r, acme, globex, clock := tenantRegistry(t)
	ctx := t.Context()
	for i := range 3 {
		clock.Add(time.Second)
		if _, err := r.Register(ctx, globex, fmt.Sprintf("g%d", i), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		clock.Add(time.Second)
		if _, err := r.Register(ctx, acme, fmt.Sprintf("a%d", i), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.CompactAudit(ctx, Retention{MaxCount: 5}); err != nil {
		t.Fatal(err)
	}
	trail := func(actor Actor) []AuditEntry {
		es, _, err := r.Audit(ctx, actor, AuditFilter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	// globex: its creation and its three registrations; acme: its newest five, and
	// its creation, which the operator's share keeps.
	if es := trail(globex); len(es) != 4 || es[3].Device != "g2" {
		t.Errorf("globex's trail after acme's writes: %v", es)
	}
	if es := trail(acme); len(es) != 6 || es[0].Operation != "tenant.create" || es[1].Device != "a25" {
		t.Errorf("acme's trail: %v", es)
	}
}

// An entry about a tenant is kept while any tenant it concerns keeps it: the
// operator's suspension of acme's device and globex's acceptance of acme's device stay
// in acme's trail however much globex and acme write.
func TestAuditOwners(t *testing.T) {
	r, acme, globex, clock := tenantRegistry(t)
	ctx := t.Context()
	for _, name := range []string{"lamp", "sensor7"} {
		if _, err := r.Register(ctx, acme, name, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	clock.Add(time.Second)
	if _, err := r.SetSuspended(ctx, testOperator, "sensor7", true); err != nil {
		t.Fatal(err)
	}
	code, _, err := r.StartTransfer(ctx, acme, "lamp", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Second)
	if _, err := r.AcceptTransfer(ctx, globex, "lamp", "", code, false); err != nil {
		t.Fatal(err)
	}
	// globex writes much: the acceptance, about acme's device, stays in acme's trail;
	// then acme writes much: the operator's suspension stays (the operator's share).
	for _, a := range []Actor{globex, acme} {
		for i := range 20 {
			clock.Add(time.Second)
			if _, err := r.Register(ctx, a, fmt.Sprintf("%s%d", a.Tenant, i), "", nil); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.CompactAudit(ctx, Retention{MaxCount: 3}); err != nil {
			t.Fatal(err)
		}
		es, _, err := r.Audit(ctx, acme, AuditFilter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		ops := map[string]bool{}
		for _, e := range es {
			ops[e.Operation] = true
		}
		want := "transfer.accept"
		if a.Tenant == "acme" {
			want = "device.suspend"
		}
		if !ops[want] {
			t.Errorf("after %s's writes, acme's trail lost %s: %v", a.Tenant, want, es)
		}
	}
}

// Quotas bound the writes of a tenant (bytes) and a device's own enrollments; the
// operator is not bound; the buckets refill on the registry's clock.
func TestQuotas(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	r.Quotas = &Quotas{TenantBytesPerSecond: 1000, TenantBurstBytes: 200 << 10, DeviceWritesPerHour: 6, DeviceWriteBurst: 2}
	ctx := t.Context()
	big := map[string]string{}
	for i := range 30 {
		big[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 200)
	}
	if _, err := r.Register(ctx, acme, "lamp", "", nil); err != nil {
		t.Fatal(err)
	}
	var limited error
	writes := 0
	for ; writes < 100 && limited == nil; writes++ {
		big["n"] = fmt.Sprint(writes)
		_, limited = r.SetAttributes(ctx, acme, "lamp", big)
	}
	if !errors.Is(limited, ErrRateLimited) || writes < 10 {
		t.Fatalf("after %d writes: %v", writes, limited)
	}
	if _, err := r.SetAttributes(ctx, testOperator, "lamp", nil); err != nil {
		t.Errorf("the operator is not bound: %v", err)
	}
	clock.Add(10 * time.Second)
	if _, err := r.SetAttributes(ctx, acme, "lamp", map[string]string{"a": "b"}); err != nil {
		t.Errorf("after the quota refilled: %v", err)
	}

	e := &Enroller{CA: catest.New(t), Registry: r, Now: clock.Now}
	cur, err := e.Enroll(ctx, Enrollment{Actor: testOperator, Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t))})
	if err != nil {
		t.Fatal(err)
	}
	reenroll := func() error {
		next, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: cur.Cert, Supersede: SupersedeCurrent})
		if err == nil {
			cur = next
		}
		return err
	}
	for i := range 2 {
		if err := reenroll(); err != nil {
			t.Fatalf("re-enrollment %d: %v", i, err)
		}
	}
	if err := reenroll(); !errors.Is(err, ErrRateLimited) {
		t.Errorf("a third re-enrollment at once: %v", err)
	}
	clock.Add(10 * time.Minute)
	if err := reenroll(); err != nil {
		t.Errorf("ten minutes later: %v", err)
	}
}

// A code or a transfer issued again replaces the lease of the one before: a device
// holds one lease per kind however often they are issued.
func TestCodeLeaseReplaced(t *testing.T) {
	r, acme, _, _ := tenantRegistry(t)
	ctx := t.Context()
	before := leases(t, r.Client)
	for range 20 {
		if _, _, err := r.IssueCode(ctx, acme, "sensor7", "", time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.StartTransfer(ctx, acme, "sensor7", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n := leases(t, r.Client) - before; n != 2 {
		t.Errorf("%d leases for one code and one transfer", n)
	}
}

// No write but a revocation grows a record past the size at which all its keys can be
// revoked: the operator and the tenant can always revoke.
func TestRevokeAlwaysFits(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	ctx := t.Context()
	e := &Enroller{CA: catest.New(t), Registry: r, Now: clock.Now}
	for {
		if _, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t))}); err != nil {
			if !errors.Is(err, ErrConflict) {
				t.Fatal(err)
			}
			break
		}
	}
	attrs := map[string]string{}
	var err error
	for i := 0; i < record.MaxAttributes && err == nil; i++ {
		attrs[fmt.Sprintf("k%d", i)] = strings.Repeat("v", record.MaxAttributeValue)
		_, err = r.SetAttributes(ctx, acme, "sensor7", attrs)
	}
	if !errors.Is(err, ErrConflict) {
		t.Errorf("attributes filling the record: %v", err)
	}
	if _, err := r.Revoke(ctx, acme, "sensor7", nil, "keyCompromise"); err != nil {
		t.Errorf("revoking every key of a full record: %v", err)
	}
}

// leases counts the etcd leases granted and not yet ended.
func leases(t *testing.T, c *clientv3.Client) int {
	t.Helper()
	resp, err := c.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// A refused request leaves no lease behind (nor a code or an audit entry).
func TestRefusedRequestsGrantNoLease(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	if _, err := r.Register(ctx, acme, "sensor7", "", nil); err != nil {
		t.Fatal(err)
	}
	rev := func() int64 {
		resp, err := r.Client.Get(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	before, at := leases(t, r.Client), rev()
	for range 20 {
		if _, _, err := r.IssueCode(ctx, globex, "sensor7", "", time.Hour); !errors.Is(err, ErrNotFound) {
			t.Fatalf("another tenant's code: %v", err)
		}
		if _, _, err := r.StartTransfer(ctx, globex, "sensor7", time.Hour); !errors.Is(err, ErrNotFound) {
			t.Fatalf("another tenant's transfer: %v", err)
		}
		if _, _, err := r.IssueCode(ctx, globex, "Bad Name", "", time.Hour); err == nil {
			t.Fatal("a bad name got a code")
		}
	}
	if n := leases(t, r.Client); n != before {
		t.Errorf("%d leases after refused requests, %d before", n, before)
	}
	if now := rev(); now != at {
		t.Errorf("refused requests changed etcd: revision %d, was %d", now, at)
	}
	if _, _, err := r.IssueCode(ctx, acme, "sensor7", "", time.Hour); err != nil {
		t.Fatal(err)
	}
	if n := leases(t, r.Client); n != before+1 {
		t.Errorf("%d leases after a code was issued, want %d", n, before+1)
	}
}

// A suspended device, or one of a disabled tenant, gets no certificate by its own
// code or its current certificate.
func TestDeviceEnrollmentRefusedWhenSuspendedOrDisabled(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	ctx := t.Context()
	e := &Enroller{CA: catest.New(t), Registry: r, Now: clock.Now}
	first, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t))})
	if err != nil {
		t.Fatal(err)
	}
	code, _, err := r.IssueCode(ctx, acme, "sensor7", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	byCode := func() error {
		_, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Code: code})
		return err
	}
	byCert := func() error {
		_, err := e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: first.Cert})
		return err
	}
	if _, err := r.SetSuspended(ctx, acme, "sensor7", true); err != nil {
		t.Fatal(err)
	}
	for what, enroll := range map[string]func() error{"code": byCode, "certificate": byCert} {
		if err := enroll(); !errors.Is(err, ErrForbidden) {
			t.Errorf("suspended device by its %s: %v", what, err)
		}
	}
	if _, err := r.SetSuspended(ctx, acme, "sensor7", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetTenantDisabled(ctx, testOperator, "acme", true); err != nil {
		t.Fatal(err)
	}
	for what, enroll := range map[string]func() error{"code": byCode, "certificate": byCert} {
		if err := enroll(); !errors.Is(err, ErrTenantDisabled) || !errors.Is(err, ErrForbidden) {
			t.Errorf("device of a disabled tenant by its %s: %v", what, err)
		}
	}
	if d := mustDevice(t, r, "sensor7"); len(d.Credentials) != 1 {
		t.Errorf("refused enrollments wrote keys: %d credentials", len(d.Credentials))
	}
	if _, err := r.SetTenantDisabled(ctx, testOperator, "acme", false); err != nil {
		t.Fatal(err)
	}
	if err := byCert(); err != nil {
		t.Errorf("re-enrollment once enabled again: %v", err)
	}
}

// A device that re-enrolls again and again can never make its record unreadable:
// superseded keys make room for new ones, and a record full of active keys refuses
// the next one with 409, still readable by DNS.
func TestReenrollmentFloodKeepsRecordReadable(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	ctx := t.Context()
	e := &Enroller{CA: catest.New(t), Registry: r, Now: clock.Now}
	cur, err := e.Enroll(ctx, Enrollment{Actor: acme, Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t))})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 { // each re-enrollment supersedes the key it authenticated with
		if cur, err = e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: cur.Cert, Supersede: SupersedeCurrent}); err != nil {
			t.Fatalf("re-enrollment %d: %v", i, err)
		}
	}
	readable := func() *record.Device {
		resp, err := r.Client.Get(ctx, record.DeviceKey(r.Prefix, r.Zone, "sensor7"))
		if err != nil {
			t.Fatal(err)
		}
		d, err := record.ParseDevice(resp.Kvs[0].Value)
		if err != nil {
			t.Fatalf("the record no longer reads back: %v", err)
		}
		return d
	}
	if d := readable(); d.Credentials[len(d.Credentials)-1].Status != record.StatusActive || string(d.Credentials[len(d.Credentials)-1].Cert) != string(cur.Cert.Raw) {
		t.Errorf("the newest key is not the active one on record")
	}
	// Without superseding, every key stays active until the record is full.
	var refused error
	for i := 0; i < 2*record.MaxCredentials && refused == nil; i++ {
		_, refused = e.Enroll(ctx, Enrollment{Device: "sensor7", CSR: csrFor(t, testenv.DeviceKey(t)), Current: cur.Cert})
	}
	if !errors.Is(refused, ErrConflict) {
		t.Errorf("a full record: %v", refused)
	}
	d := readable()
	if active := Summarize(d).Active; active < 2 {
		t.Errorf("%d active keys on a full record", active)
	}
	if _, err := r.Revoke(ctx, acme, "sensor7", nil, "keyCompromise"); err != nil {
		t.Errorf("revoking a full record: %v", err)
	}
}

// A tenant cannot create a name below another tenant's device; below its own it may,
// and so may the operator.
func TestNameBelowAnotherTenantsDevice(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	if _, err := r.Register(ctx, acme, "sensor7", "", nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"x.sensor7", "y.x.sensor7"} {
		if _, err := r.Register(ctx, globex, name, "", nil); !errors.Is(err, ErrConflict) {
			t.Errorf("globex registering %s: %v", name, err)
		}
		if _, _, err := r.IssueCode(ctx, globex, name, "", time.Hour); !errors.Is(err, ErrConflict) {
			t.Errorf("globex's code for %s: %v", name, err)
		}
	}
	if _, err := r.Register(ctx, acme, "x.sensor7", "", nil); err != nil {
		t.Errorf("acme below its own device: %v", err)
	}
	// Nor move one there by a transfer.
	code, _, err := r.StartTransfer(ctx, acme, "x.sensor7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AcceptTransfer(ctx, globex, "x.sensor7", "", code, false); !errors.Is(err, ErrConflict) {
		t.Errorf("a transfer below acme's device to globex: %v", err)
	}
	if _, err := r.Register(ctx, testOperator, "z.sensor7", "globex", nil); err != nil {
		t.Errorf("the operator: %v", err)
	}
}

// The operator's delete of a record that does not parse removes its place in the
// tenant index too.
func TestDeleteInvalidRemovesIndex(t *testing.T) {
	r, acme, _, _ := tenantRegistry(t)
	ctx := t.Context()
	if _, err := r.Register(ctx, acme, "sensor7", "", nil); err != nil {
		t.Fatal(err)
	}
	key := record.DeviceKey(r.Prefix, r.Zone, "sensor7")
	if _, err := r.Client.Put(ctx, key, `{"version": 1, "tenant": "acme", "credentials": [{"status": "bogus"}]}`); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, testOperator, "sensor7"); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Client.Get(ctx, r.indexKey("acme", "sensor7"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("the index entry is left behind: %v %v", resp.Kvs, err)
	}
}

// Clients flooding the table from ever new addresses neither grow it nor lock out a
// new client: a new key takes the slot with the most tokens left.
func TestBucketsBounded(t *testing.T) {
	b := NewBuckets(64, 1, 3, func() time.Time { return time.Unix(0, 0) })
	for i := range 100_000 {
		key := fmt.Sprintf("2001:db8:%x::", i)
		for b.Take(key, 1) {
		}
	}
	if len(b.slots) != 64 {
		t.Fatalf("the table has %d slots", len(b.slots))
	}
	if !b.Take("192.0.2.7", 1) {
		t.Error("a new client was locked out by the flood")
	}
	// A limited key is the last of its set to be pushed out: new keys that keep
	// tokens push out each other, not it.
	b = NewBuckets(64, 1, 3, func() time.Time { return time.Unix(0, 0) })
	for b.Take("192.0.2.7", 1) {
	}
	for i := range 1000 {
		b.Take(fmt.Sprintf("2001:db8:1:%x::", i), 1)
	}
	if b.Take("192.0.2.7", 1) {
		t.Error("a flood of new keys freed a limited one")
	}
}

// hookKV lets a test act between the registry's etcd calls.
type hookKV struct {
	clientv3.KV
	onGet func(key string)
}

func (h *hookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := h.KV.Get(ctx, key, opts...)
	if h.onGet != nil {
		h.onGet(key)
	}
	return resp, err
}

// A change charged on one attempt and refused on a later one (another writer got
// there first) gives its quota back, and its lease.
func TestRefusedAfterConflictRefunds(t *testing.T) {
	r := testRegistry(t)
	ctx := t.Context()
	k := "/deviceid/k"
	charged, refunded := 0, 0
	_, err := r.commit(ctx, txn{keys: []string{k}, decide: func(s snapshot) (*plan, error) {
		if s.values[0] != nil {
			return nil, ErrConflict
		}
		r.Client.Put(ctx, k, "other") // the race: the write that follows fails
		return &plan{audit: AuditEntry{Operation: "test"}, leased: &leasedPut{key: "/deviceid/l", value: "v", ttl: time.Minute},
			charge: func() (func(), error) { charged++; return func() { refunded++ }, nil }}, nil
	}})
	if !errors.Is(err, ErrConflict) || charged != 1 || refunded != 1 {
		t.Errorf("refused after a conflict: %v, charged %d, refunded %d", err, charged, refunded)
	}
	if leases, _ := r.Client.Leases(ctx); len(leases.Leases) != 0 {
		t.Errorf("%d leases left", len(leases.Leases))
	}
}

// A tenant record that does not parse is reported as such (500), not as no tenant.
func TestIssueTokenInvalidTenant(t *testing.T) {
	r := testRegistry(t)
	r.Client.Put(t.Context(), r.signerKey(kindTenant, "acme"), "{")
	if _, err := r.IssueToken(t.Context(), testOperator, "acme", ""); !errors.Is(err, ErrStoredInvalid) {
		t.Errorf("IssueToken over an invalid tenant record: %v", err)
	}
	if tn, err := r.CreateTenant(t.Context(), testOperator, "acme"); tn != nil || !errors.Is(err, ErrStoredInvalid) {
		t.Errorf("CreateTenant over an invalid record: %v, %v", tn, err)
	}
}

// The operator deletes an invalid record; one made valid meanwhile is left alone.
func TestDeleteInvalidRace(t *testing.T) {
	r, _, _, _ := tenantRegistry(t)
	ctx := t.Context()
	key := record.DeviceKey(r.Prefix, r.Zone, "s1")
	r.Client.Put(ctx, key, "{")
	raw := r.Client.KV
	var gets atomic.Int32
	r.Client.KV = &hookKV{KV: raw, onGet: func(k string) {
		if k == key && gets.Add(1) == 1 {
			raw.Put(ctx, key, `{"version":1,"tenant":"acme"}`)
		}
	}}
	err := r.Delete(ctx, testOperator, "s1")
	r.Client.KV = raw
	if got, _ := raw.Get(ctx, key); !errors.Is(err, ErrConflict) || len(got.Kvs) != 1 {
		t.Errorf("delete of a record made valid meanwhile: %v, still there: %v", err, len(got.Kvs) == 1)
	}
}

// The trail's time range is read as a range of keys, page by page: entries at or
// after Since and before Until, by the registry's clock.
func TestAuditTimeRange(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	ctx := t.Context()
	start := clock.Now()
	for i := range 6 {
		clock.Add(time.Hour) // d<i> at start + i+1 hours
		if _, err := r.Register(ctx, acme, fmt.Sprintf("d%d", i), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	f := AuditFilter{Since: start.Add(2 * time.Hour), Until: start.Add(5 * time.Hour), Limit: 2}
	var got []string
	for page := 0; page < 5; page++ {
		es, next, err := r.Audit(ctx, acme, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			got = append(got, e.Device)
		}
		if next == "" {
			break
		}
		f.After = next
	}
	if strings.Join(got, ",") != "d1,d2,d3" {
		t.Errorf("from 2 h to 5 h: %v", got)
	}
	if es, next, err := r.Audit(ctx, acme, AuditFilter{Since: start.Add(5 * time.Hour), Until: start.Add(time.Hour)}); err != nil || len(es) != 0 || next != "" {
		t.Errorf("an empty range: %v %q %v", es, next, err)
	}
}

// TestAuditCursorNamesNothing: a tenant paging through a trail of another tenant's
// entries gets a cursor that names no entry of theirs (an entry's ID names its tenants).
func TestAuditCursorNamesNothing(t *testing.T) {
	r, acme, _, clock := tenantRegistry(t)
	ctx := t.Context()
	e, _ := json.Marshal(AuditEntry{Operation: "register", Tenant: "globex", Device: "g"})
	for i := 0; i < AuditScan+200; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			id := fmt.Sprintf("%d-%08d-globex", clock.Now().UnixNano()+int64(j), j)
			ops = append(ops, clientv3.OpPut(r.signerKey(kindAudit, id), string(e)))
		}
		if _, err := r.Client.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	f := AuditFilter{}
	for page := 0; ; page++ {
		es, next, err := r.Audit(ctx, acme, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Tenant == "globex" {
				t.Fatalf("acme sees %v", e)
			}
		}
		if strings.Contains(next, "globex") {
			t.Fatalf("acme's cursor names globex: %q", next)
		}
		if next == "" {
			if page == 0 {
				t.Fatal("one page: the scan limit was not reached")
			}
			return
		}
		f.After = next
	}
}
