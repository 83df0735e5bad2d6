package registry

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"
)

// TestServicesPaging: services are listed a page at a time in name order, each
// tenant sees its own, the operator sees all, and a tenant's service on a later page
// still keeps the tenant from being deleted.
func TestServicesPaging(t *testing.T) {
	r, acme, globex, _ := tenantRegistry(t)
	ctx := t.Context()
	spki, _ := x509.MarshalPKIXPublicKey(testenv.DeviceKey(t).Public())
	var all, acmes []string
	for i := range 7 {
		for _, owner := range []Actor{acme, globex} {
			name := fmt.Sprintf("_%d._tcp.api%d.%s", 8000+i, i, owner.Tenant)
			if _, err := r.PublishServiceKey(ctx, owner, name, "", spki); err != nil {
				t.Fatal(err)
			}
			all = append(all, name)
			if owner == acme {
				acmes = append(acmes, name)
			}
		}
	}
	slices.Sort(all)
	slices.Sort(acmes)
	pages := func(actor Actor, f Filter) []string {
		t.Helper()
		var names []string
		for n := 0; ; n++ {
			entries, next, err := r.Services(ctx, actor, f)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) > f.Limit || n > 20 {
				t.Fatalf("page of %d, limit %d (page %d)", len(entries), f.Limit, n)
			}
			for _, e := range entries {
				names = append(names, e.Name)
			}
			if next == "" {
				return names
			}
			f.After = next
		}
	}
	if got := pages(testOperator, Filter{Limit: 3}); !slices.Equal(got, all) {
		t.Errorf("the operator's pages:\n got %v\nwant %v", got, all)
	}
	if got := pages(acme, Filter{Limit: 2}); !slices.Equal(got, acmes) {
		t.Errorf("acme's pages:\n got %v\nwant %v", got, acmes)
	}
	if got := pages(acme, Filter{Limit: 2, Tenant: "globex"}); !slices.Equal(got, acmes) {
		t.Errorf("acme asking for globex's services sees %v", got)
	}
	if got := pages(testOperator, Filter{Limit: 5, Prefix: "_8003."}); !slices.Equal(got, []string{"_8003._tcp.api3.acme", "_8003._tcp.api3.globex"}) {
		t.Errorf("by prefix: %v", got)
	}
	if _, _, err := r.Services(ctx, testOperator, Filter{Limit: 5000}); !errors.Is(err, ErrInvalid) {
		t.Errorf("limit 5000: %v", err)
	}

	// globex keeps one service, the last in name order: deleting globex is refused.
	for _, name := range all {
		if name != "_8006._tcp.api6.globex" && name[len(name)-len("globex"):] == "globex" {
			if err := r.DeleteService(ctx, globex, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	r.SetTenantDisabled(ctx, testOperator, "globex", true)
	if err := r.DeleteTenant(ctx, testOperator, "globex"); !errors.Is(err, ErrConflict) {
		t.Errorf("deleting a tenant with a service: %v", err)
	}
	r.DeleteService(ctx, globex, "_8006._tcp.api6.globex")
	if err := r.DeleteTenant(ctx, testOperator, "globex"); err != nil {
		t.Errorf("deleting a tenant without services: %v", err)
	}
}
