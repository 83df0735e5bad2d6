package test

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/chromedp/chromedp"
)

// TestConsoleOverview: the operator's and a tenant's overview in headless Chromium
// against the real signer, etcd and two replicas of a signed CoreDNS. Devices are made in every
// condition and the charts must count them; the audit trail's filters narrow it;
// tenants and tokens are managed through the pages and checked through the API.
func TestConsoleOverview(t *testing.T) {
	etcd, c, ksk, _ := signedZone(t, 60)
	replica := testenv.StartCoreDNS(t, signedCorefile(dnsPort(t), etcd.URL(), ksk))
	waitLoaded(t, replica)
	r := registryStackOn(t, etcd, c, c.UDP, replica.UDP)
	s := r.s
	globex := r.tenantToken(t, "globex")
	r.tenantToken(t, "acme")
	start := time.Now().UTC()

	// acme: a1..a5 enrolled, a1 and a2 revoked, a3 suspended, r1 registered; globex:
	// g1 and g2 enrolled, g1 given to acme (a transfer); x1 enrolled with a key that
	// expires in 10 days.
	enroll := func(name, tenant string) {
		t.Helper()
		key, _ := testenv.NewDeviceKey()
		body := fmt.Sprintf(`{"csr": %q, "tenant": %q}`, testenv.CSRPEM(t, key, name), tenant)
		if st := s.admin(t, "POST", "/api/v1/devices/"+name+"/enroll", body, nil); st != http.StatusCreated {
			t.Fatalf("enroll %s: %d", name, st)
		}
	}
	for i := 1; i <= 5; i++ {
		enroll(fmt.Sprintf("a%d", i), "acme")
	}
	enroll("g1", "globex")
	enroll("g2", "globex")
	for _, call := range []struct{ path, body string }{
		{"/api/v1/devices/a1/revoke", `{"reason": "keyCompromise"}`},
		{"/api/v1/devices/a2/revoke", `{}`},
		{"/api/v1/devices/a3/suspend", ``},
		{"/api/v1/devices/r1/register", `{"tenant": "acme"}`},
		{"/api/v1/devices/g1/assign", `{"tenant": "acme", "keep_keys": true}`},
	} {
		if st := s.admin(t, "POST", call.path, call.body, nil); st != http.StatusOK {
			t.Fatalf("%s: %d", call.path, st)
		}
	}
	short := *s.authority
	short.Lifetime = 10 * 24 * time.Hour
	key, _ := testenv.NewDeviceKey()
	csr, _ := x509.ParseCertificateRequest(testenv.CSR(t, key, "x1"))
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	if _, err := (&registry.Enroller{CA: &short, Registry: reg}).Enroll(t.Context(), registry.Enrollment{
		Device: "x1", CSR: csr, Actor: registry.OperatorActor("test"), Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}

	p := browser(t)
	p.do(chromedp.Navigate(s.url+"/console/"), chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), adminToken), chromedp.Click(chromedp.CSS("#login-button")))
	p.waitShown("#overview-title", "the whole registry")
	p.waitShown("#devices-count", "Devices: 9")

	// The bars count the devices of each condition, and are drawn to scale.
	count := func(chart, sel string) string {
		return p.js(fmt.Sprintf(`[...document.querySelectorAll('#%s %s')].map((e) => e.textContent || e.dataset.count).join(",")`, chart, sel))
	}
	for cond, want := range map[string]string{"active": "4", "expiring": "1", "suspended": "1", "revoked": "2", "expired": "0", "registered": "1"} {
		if got := count("chart-conditions", `g[data-condition="`+cond+`"] .count`); got != want {
			t.Errorf("devices %s: the chart says %q, want %s", cond, got, want)
		}
	}
	if ratio := p.js(`String(document.querySelector('#chart-conditions g[data-condition="active"] rect').getAttribute("width") /
		document.querySelector('#chart-conditions g[data-condition="revoked"] rect').getAttribute("width"))`); ratio != "2" {
		t.Errorf("active (4) to revoked (2) bars: %s, want 2", ratio)
	}
	// The activity chart: 8 enrollments, 2 revocations, 1 transfer, on the days they were made.
	sum := `(cls) => [...document.querySelectorAll('#chart-activity rect.' + cls)].reduce((n, r) => n + Number(r.dataset.count), 0)`
	for series, want := range map[string]string{"enrollments": "8", "revocations": "2", "transfers": "1"} {
		if got := p.js(fmt.Sprintf(`String((%s)(%q))`, sum, series)); got != want {
			t.Errorf("activity %s: the chart counts %s, want %s", series, got, want)
		}
		if totals := p.text("#activity-totals"); !strings.Contains(strings.ToLower(totals), series+" "+want) {
			t.Errorf("activity totals %q lack %s %s", totals, series, want)
		}
	}
	tallest := `(cls) => Math.max(...[...document.querySelectorAll('#chart-activity rect.' + cls)].map((r) => Number(r.getAttribute("height"))))`
	if tall := p.js(fmt.Sprintf(`String((%[1]s)("enrollments") > 3 * (%[1]s)("revocations") && (%[1]s)("revocations") > 0)`, tallest)); tall != "true" {
		t.Error("the bars are not to scale: 8 enrollments, 2 revocations")
	}
	if text := p.text("#expiring"); !strings.Contains(text, "x1") || strings.Contains(text, "a4") {
		t.Errorf("expiring within 30 days: %q", text)
	}
	// DNS: each replica's serial catches up with etcd; their signatures expire ahead.
	row := func(c *testenv.CoreDNS, cell string) string {
		return `#dns-health tr[data-server="` + c.UDP + `"] ` + cell
	}
	for _, server := range []*testenv.CoreDNS{c, replica} {
		p.waitText(row(server, ".unserved"), "in step")
		if serial := p.text(row(server, ".serial")); serial == "0" {
			t.Errorf("%s: SOA serial 0", server.UDP)
		}
		if exp := p.text(row(server, ".sig-expiry")); !strings.Contains(exp, "(in ") || strings.Contains(exp, "in -") {
			t.Errorf("%s: signature expiry %q", server.UDP, exp)
		}
	}
	p.noMissingValues("the operator's overview")
	p.screenshot("console-overview")
	// A replica that stops answering is shown as such beside the one that serves on.
	replica.Stop()
	p.waitText(row(replica, ".problem"), replica.UDP)
	if text := p.text(row(c, ".unserved")); !strings.Contains(text, "in step") {
		t.Errorf("the replica that serves on: %q", text)
	}

	// A tenant's overview, as the operator sees it and as the tenant does.
	p.do(chromedp.Navigate(s.url + "/console/#/overview/globex"))
	p.waitShown("#overview-title", "tenant globex")
	p.waitShown("#devices-count", "Devices: 1")
	if got := count("chart-conditions", `g[data-condition="active"] .count`); got != "1" {
		t.Errorf("globex's active devices: %q", got)
	}
	if got := p.js(fmt.Sprintf(`String((%s)("enrollments")) + "/" + String((%s)("transfers"))`, sum, sum)); got != "2/1" {
		t.Errorf("globex's enrollments/transfers: %s, want 2/1", got)
	}

	// States as a person reads them, in the list and on the device page.
	p.do(chromedp.Navigate(s.url + "/console/#/devices"))
	p.waitShown("#devices", "x1")
	for name, want := range map[string]string{"a1": "revoked", "a3": "suspended", "r1": "registered", "x1": "expiring", "a4": "active"} {
		if got := p.js(`document.querySelector('#devices tr[data-device="` + name + `"] td:nth-child(3)').textContent`); got != want {
			t.Errorf("%s is listed as %q, want %q", name, got, want)
		}
	}
	p.do(chromedp.Navigate(s.url + "/console/#/device/a1"))
	p.waitShown("#device-state", "revoked")

	// The audit trail, narrowed by action, device and time.
	p.do(chromedp.Navigate(s.url+"/console/#/audit"), chromedp.WaitVisible(chromedp.CSS("#audit-filters")))
	rows := func() string {
		return p.js(`[...document.querySelectorAll('#audit-trail tbody tr')].map((r) => r.dataset.operation).join(",")`)
	}
	// filter sets the form's fields (id=value, in the page's script: a re-render between
	// a node's query and its use would lose it) and waits for the new table.
	filter := func(fields ...string) {
		t.Helper()
		set := ""
		for _, f := range fields {
			id, v, _ := strings.Cut(f, "=")
			set += fmt.Sprintf("document.getElementById(%q).value = %q;", id, v)
		}
		p.do(chromedp.Evaluate[chromedp.Void](set+`document.getElementById("audit-trail").remove()`), chromedp.Click(chromedp.CSS("#audit-search")),
			chromedp.WaitVisible(chromedp.CSS("#audit-trail")))
	}
	if all := rows(); strings.Count(all, ",") < 15 {
		t.Errorf("the unfiltered trail: %s", all)
	}
	filter("af-operation=device.revoke")
	if got := rows(); got != "device.revoke,device.revoke" {
		t.Errorf("action device.revoke: %s", got)
	}
	filter("af-device=a1")
	if got := rows(); got != "device.revoke" {
		t.Errorf("action device.revoke of a1: %s", got)
	}
	filter("af-operation=", "af-device=", "af-tenant=globex")
	if got := rows(); got != "tenant.create,token.issue,device.enroll,device.enroll,device.assign" {
		t.Errorf("globex's trail: %s", got)
	}
	before := start.Add(-time.Minute).Format("2006-01-02T15:04")
	filter("af-until=" + before)
	if got := rows(); got != "" {
		t.Errorf("globex's trail before the test began: %s", got)
	}
	filter("af-until=", "af-since="+before)
	if got := rows(); !strings.HasPrefix(got, "tenant.create,") {
		t.Errorf("globex's trail since the test began: %s", got)
	}
	p.noMissingValues("the audit trail")
	p.screenshot("console-audit")

	// Tenants and tokens: create initech, issue it a token that works, revoke it, disable initech.
	p.do(chromedp.Navigate(s.url+"/console/#/tenants"), chromedp.WaitVisible(chromedp.CSS("#tenant-create")),
		chromedp.SetValue(chromedp.CSS("#t-name"), "initech"))
	p.confirm("#tenant-create-button")
	p.waitShown("#tenant-name", "initech")
	p.do(chromedp.SetValue(chromedp.CSS("#k-label"), "ci"))
	p.confirm("#token-issue-button")
	secret := p.text("#new-token")
	var who httpapi.WhoAmI
	if st := s.apiCall(t, secret, "GET", "/api/v1/whoami", "", &who); st != 200 || who.Tenant != "initech" {
		t.Fatalf("the issued token: %d %+v", st, who)
	}
	p.waitShown("#tokens", "ci")
	p.noMissingValues("a tenant's tokens")
	p.confirm("#tokens .revoke-token")
	p.waitShown("#main", "No tokens")
	if st := s.apiCall(t, secret, "GET", "/api/v1/whoami", "", nil); st != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d", st)
	}
	p.do(chromedp.Navigate(s.url + "/console/#/tenants"))
	p.waitShown("#tenants", "initech")
	p.confirm(`#tenants tr[data-tenant="initech"] .disable`)
	p.waitShown(`#tenants tr[data-tenant="initech"]`, "disabled")
	p.screenshot("console-tenants")
	var tn registry.Tenant
	if s.admin(t, "GET", "/api/v1/tenants/initech", "", &tn); !tn.Disabled {
		t.Error("initech was not disabled")
	}

	// A tenant sees its own overview only, and no tenant management.
	p.do(chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#login-token")),
		chromedp.SendKeys(chromedp.CSS("#login-token"), globex), chromedp.Click(chromedp.CSS("#login-button")))
	p.waitShown("#overview-title", "tenant globex")
	p.waitShown("#devices-count", "Devices: 1")
	p.noMissingValues("a tenant's own overview")
	if p.truth(`!document.getElementById("nav-operator").hidden || document.getElementById("overview-tenants") !== null`) {
		t.Error("a tenant is offered the operator's pages")
	}
}
