package record

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/miekg/dns"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// testCA makes a CA and returns it with a function issuing device certificates.
func testCA(t testing.TB) (*x509.Certificate, func(notAfter time.Time) []byte) {
	t.Helper()
	ca := testenv.NewTestCA(t, "test CA")
	issue := func(notAfter time.Time) []byte {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		der, err := ca.Issue("sensor7._device.iot.example", pub, notAfter)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	return ca.Cert, issue
}

func spkiOf(der []byte) []byte {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return c.RawSubjectPublicKeyInfo
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestParseDeviceErrors(t *testing.T) {
	_, issue := testCA(t)
	cert := issue(now.AddDate(1, 0, 0))
	other := issue(now.AddDate(1, 0, 0))
	tests := []struct {
		name, json, err string
	}{
		{"not json", `nope`, "not a device record"},
		{"wrong type", `{"version": "1"}`, "not a device record"},
		{"credentials not a list", `{"version": 1, "credentials": {}}`, "not a device record"},
		{"bad base64", `{"version": 1, "credentials": [{"cert": "%%%", "status": "active"}]}`, "not a device record"},
		{"bad time", `{"version": 1, "credentials": [{"cert": "` + b64(cert) + `", "status": "active", "not_after": "tomorrow"}]}`, "not a device record"},
		{"negative ttl", `{"version": 1, "credentials": [], "ttl": -1}`, "not a device record"},
		{"version missing", `{"credentials": []}`, "version 0 is not supported"},
		{"version 2", `{"version": 2, "credentials": []}`, "version 2 is not supported"},
		{"ttl too large", `{"version": 1, "credentials": [], "ttl": 4294967295}`, "ttl 4294967295 is above"},
		{"no key", `{"version": 1, "credentials": [{"status": "active"}]}`, "credential 0: neither cert nor spki"},
		{"no status", `{"version": 1, "credentials": [{"cert": "` + b64(cert) + `"}]}`, "status is missing"},
		{"bad status", `{"version": 1, "credentials": [{"cert": "` + b64(cert) + `", "status": "suspended"}]}`, `status "suspended"`},
		{"bad cert", `{"version": 1, "credentials": [{"cert": "AAEC", "status": "active"}]}`, "credential 0: cert:"},
		{"bad spki", `{"version": 1, "credentials": [{"spki": "AAEC", "status": "active"}]}`, "credential 0: spki:"},
		{"spki mismatch", `{"version": 1, "credentials": [{"cert": "` + b64(cert) + `", "spki": "` + b64(spkiOf(other)) + `", "status": "active"}]}`, "does not match"},
		{"too large", `{"version": 1, "x": "` + strings.Repeat("a", MaxRecordSize) + `"}`, "more than the limit"},
		{"too many credentials", `{"version": 1, "credentials": [` + strings.Repeat(`{"status":"active","spki":"`+b64(spkiOf(cert))+`"},`, MaxCredentials) + `{}]}`, "credentials, more than the limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDevice([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestParseDeviceFillsFromCert(t *testing.T) {
	_, issue := testCA(t)
	notAfter := now.AddDate(1, 0, 0).Truncate(time.Second)
	cert := issue(notAfter)
	d, err := ParseDevice([]byte(`{"version": 1, "credentials": [{"cert": "` + b64(cert) + `", "status": "active", "unknown": 1}], "extra": true}`))
	if err != nil {
		t.Fatal(err)
	}
	c := d.Credentials[0]
	if string(c.SPKI) != string(spkiOf(cert)) {
		t.Error("spki not taken from the certificate")
	}
	if c.NotAfter == nil || !c.NotAfter.Equal(notAfter) {
		t.Errorf("not_after %v, want the certificate's %v", c.NotAfter, notAfter)
	}
	// A round trip through JSON, as the signer writes, gives the same record.
	out, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := ParseDevice(out)
	if err != nil {
		t.Fatalf("re-parsing %s: %v", out, err)
	}
	if !slices.EqualFunc(d.TLSA("a.", 60, now, RenderOptions{RevokedUsage: 255, Discovery: true}),
		d2.TLSA("a.", 60, now, RenderOptions{RevokedUsage: 255, Discovery: true}), func(a, b dns.RR) bool { return a.String() == b.String() }) {
		t.Error("round trip changed the record")
	}
}

func TestTLSA(t *testing.T) {
	_, issue := testCA(t)
	year := now.AddDate(1, 0, 0)
	c1, c2, old := issue(year), issue(year), issue(now.Add(-time.Second))
	ee := func(der []byte) string { s := sha256.Sum256(spkiOf(der)); return "3 1 1 " + hex.EncodeToString(s[:]) }
	cd := func(der []byte) string { return "4 0 0 " + hex.EncodeToString(der) }
	rv := func(usage int, der []byte) string {
		s := sha256.Sum256(spkiOf(der))
		return fmt.Sprintf("%d 1 1 %s", usage, hex.EncodeToString(s[:]))
	}
	cred := func(der []byte, status string) string {
		return `{"cert": "` + b64(der) + `", "status": "` + status + `"}`
	}
	on := RenderOptions{RevokedUsage: 255, Discovery: true}
	tests := []struct {
		name  string
		creds []string
		opt   RenderOptions
		ttl   string
		want  []string
	}{
		{"active", []string{cred(c1, "active")}, on, "", []string{ee(c1), cd(c1)}},
		{"discovery off", []string{cred(c1, "active")}, RenderOptions{RevokedUsage: 255}, "", []string{ee(c1)}},
		{"revoked", []string{cred(c1, "revoked")}, on, "", []string{rv(255, c1)}},
		{"revoked usage 200", []string{cred(c1, "revoked")}, RenderOptions{RevokedUsage: 200, Discovery: true}, "", []string{rv(200, c1)}},
		{"one of each", []string{cred(c1, "revoked"), cred(c2, "active")}, on, "", []string{rv(255, c1), ee(c2), cd(c2)}},
		{"expired", []string{cred(old, "active")}, on, "", nil},
		{"expired and revoked", []string{cred(old, "revoked")}, on, "", []string{rv(255, old)}},
		{"not_after overrides cert", []string{`{"cert": "` + b64(c1) + `", "status": "active", "not_after": "2026-01-01T00:00:00Z"}`}, on, "", nil},
		{"spki only", []string{`{"spki": "` + b64(spkiOf(c1)) + `", "status": "active"}`}, on, "", []string{ee(c1)}},
		{"same key active and revoked: revoked wins", []string{cred(c1, "active"), cred(c1, "revoked")}, on, "", []string{rv(255, c1)}},
		{"duplicate credential", []string{cred(c1, "active"), cred(c1, "active")}, on, "", []string{ee(c1), cd(c1)}},
		{"device ttl", []string{cred(c1, "active")}, on, `, "ttl": 5`, []string{ee(c1), cd(c1)}},
		{"no credentials", nil, on, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDevice([]byte(`{"version": 1, "credentials": [` + strings.Join(tc.creds, ",") + `]` + tc.ttl + `}`))
			if err != nil {
				t.Fatal(err)
			}
			wantTTL := uint32(60)
			if d.TTL != nil {
				wantTTL = *d.TTL
			}
			var got []string
			for _, rr := range d.TLSA("sensor7._device.iot.example.", 60, now, tc.opt) {
				r := rr.(*dns.TLSA)
				if r.Hdr.Name != "sensor7._device.iot.example." || r.Hdr.Ttl != wantTTL || r.Hdr.Class != dns.ClassINET {
					t.Errorf("header %v", r.Hdr)
				}
				got = append(got, fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, r.Certificate))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n%v\nwant\n%v", got, tc.want)
			}
		})
	}
}

func TestRenderUntil(t *testing.T) {
	_, issue := testCA(t)
	soon, later := now.Add(time.Hour).Truncate(time.Second), now.Add(2*time.Hour).Truncate(time.Second)
	c := issue(later)
	d, err := ParseDevice([]byte(`{"version": 1, "credentials": [
		{"cert": "` + b64(c) + `", "status": "active", "not_after": "` + soon.Format(time.RFC3339) + `"},
		{"cert": "` + b64(c) + `", "status": "active"},
		{"cert": "` + b64(issue(soon)) + `", "status": "active"},
		{"cert": "` + b64(issue(now.Add(-time.Hour))) + `", "status": "active"},
		{"spki": "` + b64(spkiOf(issue(soon))) + `", "status": "active"},
		{"cert": "` + b64(issue(now.Add(time.Minute))) + `", "status": "revoked"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var untils []int64
	for _, p := range d.Render(60, now, RenderOptions{RevokedUsage: 255, Discovery: true}) {
		untils = append(untils, p.Until)
	}
	// The duplicate credential keeps the later expiry; the expired one is left out;
	// an SPKI without not_after and a revoked key never expire.
	want := []int64{later.UnixNano(), later.UnixNano(), soon.UnixNano(), soon.UnixNano(), 0, 0}
	if !slices.Equal(untils, want) {
		t.Errorf("until %v, want %v", untils, want)
	}
	if n := len(d.TLSA("a.", 60, soon, RenderOptions{RevokedUsage: 255, Discovery: true})); n != 4 {
		t.Errorf("%d records at the first expiry, want 4", n)
	}
}

// An IEEE 802.1AR certificate that never expires (99991231235959Z) is published as
// long as it is stored: its not_after is past what UnixNano can hold.
func TestRenderNeverExpires(t *testing.T) {
	_, issue := testCA(t)
	forever := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	d, err := ParseDevice([]byte(`{"version": 1, "credentials": [{"cert": "` + b64(issue(forever)) + `", "status": "active"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Credentials[0].NotAfter.Equal(forever) {
		t.Fatalf("not_after %v, want %v", d.Credentials[0].NotAfter, forever)
	}
	if n := len(d.TLSA("a.", 60, now, RenderOptions{RevokedUsage: 255, Discovery: true})); n != 2 {
		t.Errorf("%d records for a certificate valid until 9999, want 2", n)
	}
	if n := len(d.TLSA("a.", 60, time.Date(2263, 1, 1, 0, 0, 0, 0, time.UTC), RenderOptions{RevokedUsage: 255})); n != 1 {
		t.Errorf("%d records in 2263, want 1", n)
	}
}

func TestServiceNameASCII(t *testing.T) {
	if _, err := ServiceName("_8883._tcp.\u212aettle"); err == nil || !strings.Contains(err.Error(), "outside ASCII") {
		t.Errorf("ServiceName with a Kelvin sign: %v", err)
	}
}

func TestDeviceName(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"sensor7", "sensor7", ""},
		{"Sensor7", "sensor7", ""},
		{"c90a.airquality", "c90a.airquality", ""},
		{"a-b", "a-b", ""},
		{"", "", "empty"},
		{"-a", "", "starts or ends"},
		{"a-", "", "starts or ends"},
		{"a..b", "", "empty label"},
		{"a.", "", "empty label"},
		{"a_b", "", "only a-z"},
		{"ü", "", "outside ASCII"},
		{"\u212aelvin", "", "outside ASCII"}, // the Kelvin sign, which strings.ToLower folds to 'k'
		{"sensor\u0130", "", "outside ASCII"},
		{"a b", "", "only a-z"},
		{strings.Repeat("a", 64), "", "longer than 63"},
	}
	for _, tc := range tests {
		got, err := DeviceName(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("DeviceName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("DeviceName(%q) error %v, want %q", tc.in, err, tc.err)
		}
	}
	long := strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("a", 50)
	if _, err := DeviceOwner(long, "iot.example"); err == nil || !strings.Contains(err.Error(), "more than 253") {
		t.Errorf("DeviceOwner of a name too long: %v", err)
	}
	if o, err := DeviceOwner("Sensor7", "IoT.example"); err != nil || o != "sensor7._device.iot.example." {
		t.Errorf("DeviceOwner = %q, %v", o, err)
	}
}

func TestSplitKey(t *testing.T) {
	aki := strings.Repeat("ab", 20)
	tests := []struct{ rest, kind, name, err string }{
		{"device/sensor7", KindDevice, "sensor7", ""},
		{"device/c90a.airquality", KindDevice, "c90a.airquality", ""},
		{"ca/" + aki, KindCA, aki, ""},
		{"device/Sensor7", "", "", "must be lower case"},
		{"device/bad_name", "", "", "only a-z"},
		{"ca/" + strings.ToUpper(aki), "", "", "40 lowercase hex"},
		{"ca/abc", "", "", "40 lowercase hex"},
		{"dnssec/key/ksk-20261203", KindDNSSEC, "ksk-20261203", ""},
		{"dnssec/key/KSK", "", "", "key id"},
		{"dnssec/policy", "", "", "dnssec/key/<id>"},
		{"other/x", "", "", "unknown kind"},
		{"device", "", "", "not <kind>/<name>"},
	}
	for _, tc := range tests {
		kind, name, err := SplitKey(tc.rest)
		if tc.err == "" && (err != nil || kind != tc.kind || name != tc.name) {
			t.Errorf("SplitKey(%q) = %q, %q, %v", tc.rest, kind, name, err)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("SplitKey(%q) error %v, want %q", tc.rest, err, tc.err)
		}
	}
	if k := DeviceKey("/deviceid/", "IoT.Example.", "s1"); k != "/deviceid/iot.example/device/s1" {
		t.Errorf("DeviceKey = %q", k)
	}
}

func TestParseCA(t *testing.T) {
	ca, issue := testCA(t)
	aki := KeyID(ca.SubjectKeyId)
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	leaf := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issue(now.AddDate(1, 0, 0))})
	if c, err := ParseCA(aki, p); err != nil || c == nil {
		t.Fatalf("ParseCA: %v", err)
	}
	tests := []struct {
		name, aki string
		data      []byte
		err       string
	}{
		{"wrong aki", strings.Repeat("0", 40), p, "does not match"},
		{"bad aki", "xyz", p, "40 lowercase hex"},
		{"not pem", aki, []byte("hello"), "not a PEM CERTIFICATE"},
		{"two certs", aki, append(append([]byte{}, p...), p...), "more than one"},
		{"not a CA", aki, leaf, "not a CA"},
		{"bad der", aki, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), "certificate:"},
	}
	for _, tc := range tests {
		if _, err := ParseCA(tc.aki, tc.data); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
	pub := CAPublished(60, ca.Raw)
	rr := pub.RR(CAOwner(aki, "iot.example"))
	if rr.Hdr.Name != aki+"._ca._device.iot.example." || rr.Usage != 2 || rr.Selector != 0 || rr.MatchingType != 0 || rr.Certificate != hex.EncodeToString(ca.Raw) {
		t.Errorf("CA TLSA %v", rr)
	}
}

// FuzzParseDevice checks that no input panics the parser, and that whatever it
// accepts renders and survives a round trip through JSON.
func FuzzParseDevice(f *testing.F) {
	_, issue := testCA(f)
	cert := issue(now.AddDate(1, 0, 0))
	f.Add([]byte(`{"version": 1, "credentials": [{"cert": "` + b64(cert) + `", "status": "active"}], "ttl": 30}`))
	f.Add([]byte(`{"version": 1, "credentials": [{"spki": "` + b64(spkiOf(cert)) + `", "status": "revoked", "not_after": "2027-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version": 1, "credentials": []}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDevice(data)
		if err != nil {
			return
		}
		rrs := d.TLSA("x._device.iot.example.", 60, now, RenderOptions{RevokedUsage: 255, Discovery: true})
		for _, rr := range rrs {
			if _, err := dns.NewRR(rr.String()); err != nil {
				t.Fatalf("rendered %q does not parse back: %v", rr, err)
			}
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseDevice(out); err != nil {
			t.Fatalf("accepted %q but not its re-encoding %q: %v", data, out, err)
		}
	})
}

// TestRegistryFields: tenant, state and attributes are checked, and a suspended
// device publishes only its revoked keys.
func TestRegistryFields(t *testing.T) {
	for _, tc := range []struct {
		json string
		ok   bool
	}{
		{`{"version": 1, "tenant": "acme", "state": "suspended", "attributes": {"model": "th-200", "fw.version": "1.2"}, "credentials": []}`, true},
		{`{"version": 1, "state": "asleep", "credentials": []}`, false},
		{`{"version": 1, "tenant": "Acme Corp", "credentials": []}`, false},
		{`{"version": 1, "attributes": {"Model": "x"}, "credentials": []}`, false},
		{`{"version": 1, "attributes": {".x": "x"}, "credentials": []}`, false},
		{`{"version": 1, "attributes": {"x": "a\u0000b"}, "credentials": []}`, false},
		{`{"version": 1, "attributes": {"x": "` + strings.Repeat("v", MaxAttributeValue+1) + `"}, "credentials": []}`, false},
	} {
		if _, err := ParseDevice([]byte(tc.json)); (err == nil) != tc.ok {
			t.Errorf("%.80s: %v, want ok=%v", tc.json, err, tc.ok)
		}
	}
	many := map[string]string{}
	for i := range MaxAttributes + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	if err := CheckAttributes(many); err == nil {
		t.Error("too many attributes accepted")
	}
	spki := []byte{0x30, 0x0b, 0x30, 0x03, 0x06, 0x01, 0x00, 0x03, 0x04, 0x00, 0x01, 0x02, 0x03}
	d := &Device{Version: 1, State: StateSuspended, Credentials: []Credential{
		{SPKI: spki, Status: StatusActive},
		{SPKI: append(slices.Clone(spki[:len(spki)-1]), 0x04), Status: StatusRevoked}, // another key
	}}
	pub := d.Render(60, time.Now(), RenderOptions{RevokedUsage: 255, Discovery: true})
	if len(pub) != 1 || pub[0].Usage != 255 {
		t.Errorf("suspended device publishes %+v, want only its revoked key", pub)
	}
	d.State = ""
	if pub := d.Render(60, time.Now(), RenderOptions{RevokedUsage: 255}); len(pub) != 2 {
		t.Errorf("resumed device publishes %+v", pub)
	}
}

// TestCondition: the word a person reads for each kind of device.
func TestCondition(t *testing.T) {
	_, issue := testCA(t)
	key := func(status string, notAfter time.Time) Credential {
		der := issue(notAfter)
		return Credential{Cert: der, SPKI: spkiOf(der), Status: status, NotAfter: &notAfter}
	}
	long, soon, past := now.AddDate(1, 0, 0), now.Add(ExpiringWithin-time.Hour), now.Add(-time.Hour)
	stale := key(StatusActive, long)
	revokedCopy := stale
	revokedCopy.Status = StatusRevoked
	for _, tc := range []struct {
		name string
		d    Device
		want string
	}{
		{"no key", Device{}, ConditionRegistered},
		{"one key", Device{Credentials: []Credential{key(StatusActive, long)}}, ConditionActive},
		{"a new key beside a revoked one", Device{Credentials: []Credential{key(StatusRevoked, long), key(StatusActive, long)}}, ConditionActive},
		{"the last key expires soon", Device{Credentials: []Credential{key(StatusActive, soon)}}, ConditionExpiring},
		{"a soon and a lasting key", Device{Credentials: []Credential{key(StatusActive, soon), key(StatusActive, long)}}, ConditionActive},
		{"revoked", Device{Credentials: []Credential{key(StatusRevoked, long)}}, ConditionRevoked},
		{"active but revoked in another credential", Device{Credentials: []Credential{stale, revokedCopy}}, ConditionRevoked},
		{"expired", Device{Credentials: []Credential{key(StatusActive, past)}}, ConditionExpired},
		{"revoked and expired", Device{Credentials: []Credential{key(StatusActive, past), key(StatusRevoked, long)}}, ConditionRevoked},
		{"a bare key that never expires", Device{Credentials: []Credential{{SPKI: spkiOf(issue(soon)), Status: StatusActive}}}, ConditionActive},
		{"suspended", Device{State: StateSuspended, Credentials: []Credential{key(StatusActive, long)}}, ConditionSuspended},
	} {
		if got := tc.d.Condition(now); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	d := Device{Credentials: []Credential{key(StatusActive, soon), key(StatusActive, long), key(StatusRevoked, long.Add(time.Hour))}}
	if got := d.Expires(now); !got.Equal(long) {
		t.Errorf("Expires: %v, want %v", got, long)
	}
}
