package httpapi

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca/catest"
	"github.com/deviceid/deviceid/signer/registry"
)

// TestOverviewDays: the overview counts each change on the day the registry's clock
// says, over the last ActivityDays days only, and judges expiry by that clock.
func TestOverviewDays(t *testing.T) {
	r, ctx := testRegistry(t), t.Context()
	clock := testenv.NewClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	r.Now = clock.Now
	authority := catest.New(t)
	authority.Lifetime = 40 * 24 * time.Hour
	srv := httptest.NewServer((&API{CA: authority, Registry: r, Token: token, Timeout: 5 * time.Second}).Handler())
	t.Cleanup(srv.Close)
	enroll := func(name string, withCert bool) {
		t.Helper()
		e := registry.Enrollment{Device: name, Actor: testOperator}
		if withCert {
			e.CSR, _ = x509.ParseCertificateRequest(testenv.CSR(t, testenv.DeviceKey(t), name))
		} else {
			e.PublicKey = testenv.DeviceKey(t).Public()
		}
		if _, err := (&registry.Enroller{CA: authority, Registry: r, Now: clock.Now}).Enroll(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	enroll("old", false) // 20 days ago: not drawn
	enroll("cert", true) // its certificate lasts 40 days: 20 left today
	clock.Add(17 * 24 * time.Hour)
	enroll("a", false)
	enroll("b", false)
	clock.Add(2 * 24 * time.Hour)
	if _, err := r.Revoke(ctx, testOperator, "a", nil, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	clock.Add(24 * time.Hour)

	status, body := call(t, srv, "GET", "/api/v1/overview", token, "")
	var o Overview
	if status != 200 || json.Unmarshal(body, &o) != nil {
		t.Fatalf("%d %s", status, body)
	}
	days := map[string]DayActivity{}
	enrollments := 0
	for _, d := range o.Activity {
		days[d.Day] = d
		enrollments += d.Enrollments
	}
	if len(o.Activity) != ActivityDays || o.Activity[ActivityDays-1].Day != "2026-12-21" || o.Activity[0].Day != "2026-12-08" {
		t.Errorf("days drawn: %+v", o.Activity)
	}
	if days["2026-12-18"].Enrollments != 2 || days["2026-12-20"].Revocations != 1 || enrollments != 2 {
		t.Errorf("activity: %+v", o.Activity)
	}
	want := map[string]int{record.ConditionActive: 2, record.ConditionExpiring: 1, record.ConditionRevoked: 1}
	for _, c := range record.Conditions {
		if o.Conditions[c] != want[c] {
			t.Errorf("%s: %d, want %d (%v)", c, o.Conditions[c], want[c], o.Conditions)
		}
	}
	if o.ExpiringCount != 1 || o.Expiring[0].Name != "cert" || !o.Expiring[0].Expires.Equal(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).Add(authority.Lifetime)) {
		t.Errorf("expiring: %+v", o.Expiring)
	}
	if len(o.DNS) != 1 || o.DNS[0].Error == "" {
		t.Error("a signer without -dns reports DNS health")
	}
	// A tenant's overview: the DNS servers, their errors and the zone's changes are not
	// its to see (nor to make the signer read the whole zone for).
	if _, err := r.CreateTenant(ctx, testOperator, "acme"); err != nil {
		t.Fatal(err)
	}
	acme, err := r.IssueToken(ctx, testOperator, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	status, body = call(t, srv, "GET", "/api/v1/overview", acme.Secret, "")
	if status != 200 || bytes.Contains(body, []byte(`"dns"`)) {
		t.Errorf("a tenant's overview: %d %s", status, body)
	}
	if status, body := call(t, srv, "GET", "/api/v1/overview?tenant=nosuch", token, ""); status != 404 {
		t.Errorf("the overview of no tenant: %d %s", status, body)
	}
}
