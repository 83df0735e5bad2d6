package signer

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

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
	// globex: its creation and its three registrations; acme: its newest five.
	if es := trail(globex); len(es) != 4 || es[3].Device != "g2" {
		t.Errorf("globex's trail after acme's writes: %v", es)
	}
	if es := trail(acme); len(es) != 5 || es[0].Device != "a25" {
		t.Errorf("acme's trail: %v", es)
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
	e := &Enroller{CA: testCA(t), Registry: r, Now: clock.Now}
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
		if err := enroll(); !errors.Is(err, ErrForbidden) || statusOf(err) != http.StatusForbidden {
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
		if err := enroll(); !errors.Is(err, ErrTenantDisabled) || statusOf(err) != http.StatusForbidden {
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
	e := &Enroller{CA: testCA(t), Registry: r, Now: clock.Now}
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
	if !errors.Is(refused, ErrConflict) || statusOf(refused) != http.StatusConflict {
		t.Errorf("a full record: %v", refused)
	}
	d := readable()
	if active := summarize(d).Active; active < 2 {
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

// Every route of the signer is behind the failure limiter: a client that keeps
// failing authentication is answered 429, others are not, and its bucket refills.
func TestFailureLimiter(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	s := &Server{CA: testCA(t), Registry: testRegistry(t), Token: "0123456789abcdef0123", Now: clock.Now,
		Limits: Limits{FailuresPerSecond: 1, FailureBurst: 3}}
	h := s.Handler()
	ask := func(addr, token string) int {
		req := httptest.NewRequest("GET", "/api/v1/whoami", nil)
		req.RemoteAddr = addr
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 3 {
		if code := ask("192.0.2.1:1000", "wrong"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i, code)
		}
	}
	if code := ask("192.0.2.1:1001", "0123456789abcdef0123"); code != http.StatusTooManyRequests {
		t.Errorf("after the burst of failures: %d, want 429", code)
	}
	if code := ask("192.0.2.2:1000", "0123456789abcdef0123"); code != http.StatusOK {
		t.Errorf("another client: %d", code)
	}
	clock.Add(time.Second)
	if code := ask("192.0.2.1:1002", "0123456789abcdef0123"); code != http.StatusOK {
		t.Errorf("after a second: %d", code)
	}
}
