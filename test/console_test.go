package test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/httpapi"
	"github.com/deviceid/deviceid/signer/keymgr"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/chromedp/chromedp"
)

// page is a tab of headless Chromium (Debian's chromium) driven by chromedp.
type page struct {
	t   *testing.T
	ctx context.Context
}

func browser(t *testing.T) *page {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed (apt-get install chromium): the console is tested in a real browser")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), // the signer's certificate is from the test CA
		chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	p := &page{t: t, ctx: ctx}
	p.do() // starts the browser
	return p
}

// do runs steps, failing the test on an error.
func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatal(err)
	}
}

// shownText is a page function: the text of the element sel when it is shown, else
// null. Reads go through JavaScript in one step rather than through DevTools node
// ids, which a re-render or a same-document navigation invalidates between the
// query and the read ("No node with given id found").
const shownText = `(sel) => { const e = document.querySelector(sel); return e && e.checkVisibility() ? {text: e.innerText} : null; }`

// text waits until sel is shown and returns its text.
func (p *page) text(sel string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.PollFunction[struct{ Text string }](shownText, chromedp.WithPollingArgs(sel)))
	if err != nil {
		p.t.Fatalf("%s: %v", sel, err)
	}
	return v.Text
}

// noMissingValues fails the test when the page shows a value the script did not have.
func (p *page) noMissingValues(what string) {
	p.t.Helper()
	if text := p.text("#main"); strings.Contains(text, "null") || strings.Contains(text, "undefined") || strings.Contains(text, "[object") {
		p.t.Errorf("%s shows a missing value: %q", what, text)
	}
}

// js evaluates expr, a string, in the page.
func (p *page) js(expr string) string {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		p.t.Fatal(err)
	}
	return v
}

func (p *page) truth(expr string) bool {
	p.t.Helper()
	return p.js("String(Boolean("+expr+"))") == "true"
}

// confirm clicks a button and then Confirm in the console's confirmation dialog.
func (p *page) confirm(sel string) {
	p.t.Helper()
	p.do(chromedp.Click(chromedp.CSS(sel)), chromedp.WaitVisible(chromedp.CSS("#confirm-yes")), chromedp.Click(chromedp.CSS("#confirm-yes")))
}

// waitText reloads the page until sel's text contains want.
func (p *page) waitText(sel, want string) { p.wait(sel, want, true) }

// waitShown waits, without reloading, until sel's text contains want.
func (p *page) waitShown(sel, want string) { p.wait(sel, want, false) }

func (p *page) wait(sel, want string, reload bool) {
	p.t.Helper()
	testenv.Eventually(p.t, sel+" shows "+want, func() error {
		if reload {
			if err := chromedp.Do(p.ctx, chromedp.Reload()); err != nil {
				return err
			}
		}
		v, err := chromedp.Run(p.ctx, chromedp.PollFunction[struct{ Text string }](shownText, chromedp.WithPollingArgs(sel), chromedp.WithPollingTimeout(5*time.Second)))
		if err == nil && !strings.Contains(v.Text, want) {
			shown, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.getElementById("error").textContent`))
			err = fmt.Errorf("%s: %q (error shown: %q)", sel, v.Text, shown)
		}
		return err
	})
}

// screenshot saves the page to $DEVICEID_SCREENSHOTS/<name>.png when that is set
// (make screenshots: the README's pictures).
func (p *page) screenshot(name string) {
	dir := os.Getenv("DEVICEID_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	if err != nil {
		p.t.Fatal(err)
	}
}

// TestConsole clicks through the console in headless Chromium against the real
// signer, CoreDNS and etcd: sign in as a tenant, register a device, issue its code,
// enroll it over EST with openssl and curl, see its TLSA record, revoke it, see the
// revoked status; hostile attributes stay text, errors are shown, and a page of
// another site cannot make the browser change anything.
func TestConsole(t *testing.T) {
	r := startRegistryStack(t)
	s := r.s
	acme := r.tenantToken(t, "acme")
	const hostile = `<img src=x onerror="window.pwned=1;document.title='pwned'"></td><script>window.pwned=1</script>`
	if st := s.apiCall(t, acme, "POST", "/api/v1/devices/evil/register", fmt.Sprintf(`{"attributes": {"note": %q, "model": "th-200"}}`, hostile), nil); st != 200 {
		t.Fatalf("register evil: %d", st)
	}
	p := browser(t)
	p.do(chromedp.Navigate(s.url+"/console/"), chromedp.WaitVisible(chromedp.CSS("#login-token")))
	p.do(chromedp.SendKeys(chromedp.CSS("#login-token"), acme), chromedp.Click(chromedp.CSS("#login-button")), chromedp.WaitVisible(chromedp.CSS("#overview-title")))
	if who := p.text("#whoami"); !strings.Contains(who, "tenant acme") {
		t.Errorf("signed in as %q", who)
	}
	p.do(chromedp.Navigate(s.url+"/console/#/devices"), chromedp.WaitVisible(chromedp.CSS("#devices")))

	// Register lamp through the form, with a confirmation.
	p.do(chromedp.SetValue(chromedp.CSS("#r-name"), "lamp"), chromedp.SetValue(chromedp.CSS("#r-attrs"), "model=th-200\nserial=A1B2"))
	p.confirm("#register-button")
	if name := p.text("#device-name"); name != "lamp" {
		t.Fatalf("device page of %q", name)
	}
	// The enrollment code, then EST as a device does it.
	p.confirm("#issue-code")
	code := p.text("#code")
	p.screenshot("console-code")
	cert := estEnroll(t, s, t.TempDir(), "lamp", code, "device.key")
	p.waitText("#dns-records", eeOf(cert))
	p.waitText("#keys", "active")
	p.screenshot("console-device")

	// Revoke: the page shows the revoked status DNS serves.
	p.do(chromedp.SetValue(chromedp.CSS("#reason"), "keyCompromise"))
	p.confirm("#revoke")
	p.waitShown("#keys", "revoked")
	p.waitText("#dns-records", revokedOf(cert))
	p.waitText("#keys", "keyCompromise")
	p.waitText("#audit", "device.revoke")
	p.screenshot("console-revoked")
	var d httpapi.DeviceView
	s.apiCall(t, acme, "GET", "/api/v1/devices/lamp", "", &d)
	if d.Keys[0].Status != "revoked" || d.Keys[0].Reason != "keyCompromise" {
		t.Errorf("after the console's revoke: %+v", d.Keys)
	}

	// Hostile attributes are shown as text and run nothing, on the device page and in the list.
	p.do(chromedp.Navigate(s.url + "/console/#/device/evil"))
	p.waitShown("#device-name", "evil") // lamp's page is still there until the new one renders
	if text := p.text("#attributes"); !strings.Contains(text, hostile) {
		t.Errorf("hostile attribute shown as %q", text)
	}
	const ran = `window.pwned === 1 || document.title === 'pwned' || document.querySelectorAll('#main img, #main script').length > 0`
	if p.truth(ran) {
		t.Error("a hostile attribute became markup on the device page")
	}
	if p.truth(`document.getElementById("assign") !== null`) {
		t.Error("a tenant is offered the operator's Assign")
	}
	p.do(chromedp.Navigate(s.url+"/console/#/devices"), chromedp.WaitVisible(chromedp.CSS("#devices")))
	p.screenshot("console-devices")
	if !strings.Contains(p.text("#devices"), "<img src=x") || p.truth(ran) {
		t.Error("a hostile attribute became markup in the list")
	}
	p.noMissingValues("the list page")

	// A service key: published through the form, listed, retired.
	broker := newDevice(t, testenv.NewTestCA(t, "broker CA"), "broker", time.Now().AddDate(1, 0, 0))
	p.do(chromedp.Navigate(s.url+"/console/#/services"), chromedp.WaitVisible(chromedp.CSS("#publish")),
		chromedp.SetValue(chromedp.CSS("#s-name"), "_8883._tcp.mqtt.acme"),
		chromedp.SetValue(chromedp.CSS("#s-pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: broker.cert}))))
	p.confirm("#publish-button")
	p.waitShown("#services", strings.TrimPrefix(broker.ee(), "3 1 1 "))
	p.confirm("#services .retire")
	p.waitShown("#services", "revoked (superseded)")
	p.do(chromedp.Navigate(s.url + "/console/#/devices"))

	// A clear error: a bad name.
	p.do(chromedp.SetValue(chromedp.CSS("#r-name"), "bad_name"))
	p.confirm("#register-button")
	if text := p.text("#error"); !strings.Contains(text, "400") || !strings.Contains(text, "bad_name") {
		t.Errorf("error shown: %q", text)
	}

	// CSRF: a page of another site fetches the API with the browser's credentials and
	// posts a form to it. The token never leaves the console's tab storage, so the
	// API sees no credentials, and the device stays as it is.
	hostilePage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `<!doctype html><body>
<form id=f method=POST enctype="text/plain" action="%[1]s/api/v1/devices/evil/suspend"><input name='{"a":"' value='b"}'></form>
<script>fetch("%[1]s/api/v1/devices/evil/suspend", {method: "POST", mode: "no-cors", credentials: "include", body: "{}"}).finally(() => document.getElementById("f").submit());</script>
</body>`, s.url)
	}))
	defer hostilePage.Close()
	p.do(chromedp.Navigate(hostilePage.URL))
	testenv.Eventually(t, "the hostile form was sent", func() error {
		location, err := chromedp.Run(p.ctx, chromedp.Location())
		if err != nil {
			return err
		}
		body, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS("body")))
		if err == nil && (!strings.HasPrefix(location, s.url) || !strings.Contains(body, "error")) {
			err = fmt.Errorf("at %s: %q", location, body)
		}
		return err
	})
	s.apiCall(t, acme, "GET", "/api/v1/devices/evil", "", &d)
	if d.State == "suspended" {
		t.Error("a page of another site suspended a device")
	}

	// The operator gives evil to globex without a code, keeping its keys.
	r.tenantToken(t, "globex")
	p.do(chromedp.Navigate(s.url+"/console/#/devices"), chromedp.WaitVisible(chromedp.CSS("#signout")), chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#login-token")), chromedp.SendKeys(chromedp.CSS("#login-token"), adminToken), chromedp.Click(chromedp.CSS("#login-button")))
	p.waitShown("#whoami", "registry operator")
	p.do(chromedp.Navigate(s.url + "/console/#/device/evil"))
	p.waitShown("#device-name", "evil")
	p.do(chromedp.SetValue(chromedp.CSS("#assign-tenant"), "globex"))
	p.do(chromedp.Click(chromedp.CSS("#assign-keep")))
	p.confirm("#assign")
	p.waitShown("#device-tenant", "globex")
	p.waitShown("#audit", "device.assign")
	s.admin(t, "GET", "/api/v1/devices/evil", "", &d)
	if d.Tenant != "globex" {
		t.Errorf("after the console's assign: tenant %q", d.Tenant)
	}

	// The zone's DNSSEC keys: their timeline drawn, for the operator only.
	reg := &registry.Registry{Client: r.etcd.Client(), Prefix: "/deviceid", Zone: zone}
	k, _ := kek.New(make([]byte, 32))
	settings, _ := json.Marshal(keymgr.Settings{Policy: keymgr.DefaultPolicy})
	if err := reg.PutKeySettings(t.Context(), registry.OperatorActor("test"), 0, settings, "enable"); err != nil {
		t.Fatal(err)
	}
	if _, err := (&keymgr.Manager{Registry: reg, KEK: k, Actor: registry.OperatorActor("test")}).Step(t.Context(), &keymgr.Request{Roll: record.RoleZSK}, nil); err == nil {
		t.Error("a roll with no keys yet was taken")
	}
	if _, err := (&keymgr.Manager{Registry: reg, KEK: k, Actor: registry.OperatorActor("test")}).Step(t.Context(), nil, nil); err != nil {
		t.Fatal(err)
	}
	p.do(chromedp.Navigate(s.url + "/console/#/keys"))
	p.waitShown("#keys-table", "ksk")
	if n := p.text("#keys-state"); !strings.Contains(n, "rolls these keys") {
		t.Errorf("keys page state: %q", n)
	}
	if !p.truth(`document.querySelectorAll('#key-timeline rect.signs').length === 2 && document.querySelectorAll('#key-timeline rect.cds').length === 1`) {
		t.Error("the timeline does not draw the two signing keys and the KSK's CDS")
	}
	p.screenshot("console-keys")
}
