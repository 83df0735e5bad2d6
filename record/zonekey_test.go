package record

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testDNSKEY returns the RDATA of a new key of alg in presentation format.
func testDNSKEY(t testing.TB, flags uint16, alg uint8) string {
	t.Helper()
	k := &dns.DNSKEY{Hdr: dns.RR_Header{Name: "iot.example.", Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET}, Flags: flags, Protocol: 3, Algorithm: alg}
	if _, err := k.Generate(256); err != nil {
		t.Fatal(err)
	}
	_, rdata, _ := strings.Cut(k.String(), "DNSKEY\t")
	return rdata
}

func at(s string) *time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return &t
}

func TestZoneKeyValidate(t *testing.T) {
	ksk, zsk := testDNSKEY(t, 257, dns.ECDSAP256SHA256), testDNSKEY(t, 256, dns.ED25519)
	good := func() ZoneKey {
		return ZoneKey{Version: 1, Role: RoleKSK, DNSKEY: ksk, Private: PrivateKeyRef{PKCS11: "pkcs11:token=dns;object=ksk"},
			Timeline: Timeline{Publish: at("2026-12-01T00:00:00Z"), Active: at("2026-12-01T01:00:00Z"), SyncPublish: at("2026-12-01T02:00:00Z")}}
	}
	tests := []struct {
		name   string
		change func(k *ZoneKey)
		err    string
	}{
		{"good", func(*ZoneKey) {}, ""},
		{"wrapped", func(k *ZoneKey) { k.Private = PrivateKeyRef{Wrapped: []byte{1, 2}, KEK: "0123abcd"} }, ""},
		{"zsk", func(k *ZoneKey) {
			k.Role, k.DNSKEY, k.Timeline.SyncPublish, k.Private = RoleZSK, zsk, nil, PrivateKeyRef{Wrapped: []byte{1, 2}, KEK: "0123abcd"}
		}, ""},
		{"version", func(k *ZoneKey) { k.Version = 2 }, "version"},
		{"no dnskey", func(k *ZoneKey) { k.DNSKEY = "" }, "dnskey"},
		{"bad dnskey", func(k *ZoneKey) { k.DNSKEY = "257 3 13 !!!" }, "dnskey"},
		{"rsa", func(k *ZoneKey) { k.DNSKEY = strings.Replace(ksk, " 13 ", " 8 ", 1) }, "algorithm 8"},
		{"ksk without SEP", func(k *ZoneKey) { k.DNSKEY = strings.Replace(ksk, "257 ", "256 ", 1) }, "SEP"},
		{"zsk with SEP", func(k *ZoneKey) { k.Role, k.Timeline.SyncPublish = RoleZSK, nil }, "no SEP"},
		{"revoked flag", func(k *ZoneKey) { k.DNSKEY = strings.Replace(ksk, "257 ", "385 ", 1) }, "flags"},
		{"role", func(k *ZoneKey) { k.Role = "kzk" }, "role"},
		{"no private key", func(k *ZoneKey) { k.Private = PrivateKeyRef{} }, "private"},
		{"both private keys", func(k *ZoneKey) { k.Private.Wrapped = []byte{1} }, "private"},
		{"wrapped without kek", func(k *ZoneKey) { k.Private = PrivateKeyRef{Wrapped: []byte{1}} }, "kek"},
		{"not a URI", func(k *ZoneKey) { k.Private.PKCS11 = "/etc/key.pem" }, "pkcs11:"},
		{"a module from etcd", func(k *ZoneKey) { k.Private.PKCS11 += "?module-path=/tmp/evil.so" }, "module or a PIN"},
		{"a PIN file from etcd", func(k *ZoneKey) { k.Private.PKCS11 += "?pin-source=/etc/shadow" }, "module or a PIN"},
		{"an Ed25519 key in an HSM", func(k *ZoneKey) { k.Role, k.DNSKEY, k.Timeline.SyncPublish = RoleZSK, zsk, nil }, "P-256"},
		{"active before publish", func(k *ZoneKey) { k.Timeline.Active = at("2026-11-30T00:00:00Z") }, "order"},
		{"remove before retire", func(k *ZoneKey) {
			k.Timeline.Retire, k.Timeline.Remove = at("2026-12-05T00:00:00Z"), at("2026-12-04T00:00:00Z")
		}, "order"},
		{"CDS before publish (double-DS)", func(k *ZoneKey) { k.Timeline.SyncPublish = at("2026-11-30T00:00:00Z") }, ""},
		{"CDS deleted before published", func(k *ZoneKey) { k.Timeline.SyncDelete = at("2026-12-01T01:59:00Z") }, "sync_publish"},
		{"CDS after remove", func(k *ZoneKey) { k.Timeline.Remove = at("2026-12-01T01:30:00Z") }, "sync_publish"},
		{"a zsk's CDS", func(k *ZoneKey) { k.Role, k.DNSKEY = RoleZSK, strings.Replace(ksk, "257 ", "256 ", 1) }, "only a ksk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := good()
			tt.change(&k)
			b, _ := json.Marshal(k)
			_, err := ParseZoneKey("iot.example", b)
			if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Errorf("error %v, want %q", err, tt.err)
			}
		})
	}
	if _, err := ParseZoneKey("iot.example", []byte(`{"version":1,`)); err == nil {
		t.Error("truncated JSON accepted")
	}
}

func TestZoneKeyTimeline(t *testing.T) {
	k := &ZoneKey{Role: RoleKSK, Timeline: Timeline{Publish: at("2026-12-01T00:00:00Z"), Active: at("2026-12-01T00:30:00Z"),
		SyncPublish: at("2026-12-01T02:00:00Z"), SyncDelete: at("2026-12-02T00:00:00Z"),
		Retire: at("2026-12-03T00:00:00Z"), Remove: at("2026-12-04T00:00:00Z")}}
	hour := time.Hour
	tests := []struct {
		at                      string
		published, signs, syncs bool
		next                    string
	}{
		{"2026-11-30T23:59:59Z", false, false, false, "2026-12-01T00:00:00Z"},
		{"2026-12-01T00:00:00Z", true, false, false, "2026-12-01T00:30:00Z"},
		// Active, but not published for an hour yet: it does not sign.
		{"2026-12-01T00:30:00Z", true, false, false, "2026-12-01T01:00:00Z"},
		{"2026-12-01T01:00:00Z", true, true, false, "2026-12-01T01:30:00Z"},
		{"2026-12-01T02:00:00Z", true, true, true, "2026-12-01T03:00:00Z"},
		{"2026-12-02T00:00:00Z", true, true, false, "2026-12-02T01:00:00Z"},
		{"2026-12-03T00:00:00Z", true, false, false, "2026-12-03T01:00:00Z"},
		{"2026-12-04T00:00:00Z", false, false, false, "2026-12-04T01:00:00Z"},
		{"2026-12-04T01:00:00Z", false, false, false, "0001-01-01T00:00:00Z"},
	}
	for _, tt := range tests {
		now := *at(tt.at)
		if got := k.Published(now); got != tt.published {
			t.Errorf("%s: published %v", tt.at, got)
		}
		if got := k.Signs(now, hour); got != tt.signs {
			t.Errorf("%s: signs %v", tt.at, got)
		}
		if got := k.Syncs(now); got != tt.syncs {
			t.Errorf("%s: syncs %v", tt.at, got)
		}
		if got := k.Next(now, hour).Format(time.RFC3339); got != tt.next {
			t.Errorf("%s: next %s, want %s", tt.at, got, tt.next)
		}
	}
	zsk := &ZoneKey{Role: RoleZSK, Timeline: Timeline{Publish: at("2026-12-01T00:00:00Z")}}
	if zsk.Signs(*at("2027-01-01T00:00:00Z"), hour) || zsk.Syncs(*at("2027-01-01T00:00:00Z")) {
		t.Error("a zsk never made active signs, or has a CDS")
	}
}

func FuzzParseZoneKey(f *testing.F) {
	b, _ := json.Marshal(ZoneKey{Version: 1, Role: RoleKSK, DNSKEY: testDNSKEY(f, 257, dns.ECDSAP256SHA256), Private: PrivateKeyRef{PKCS11: "pkcs11:object=k"},
		Timeline: Timeline{Publish: at("2026-12-01T00:00:00Z"), Active: at("2026-12-01T01:00:00Z")}})
	f.Add(b)
	f.Add([]byte(`{"version":1,"role":"zsk","dnskey":"256 3 15 AAAA","private":{"wrapped":"AQ==","kek":"x"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseZoneKey("iot.example", data)
		if err != nil {
			return
		}
		// What parses is valid, says where its private key is, and its timeline answers.
		if k.Validate("iot.example") != nil || k.Private.PKCS11 == "" && len(k.Private.Wrapped) == 0 {
			t.Fatalf("accepted an invalid key: %+v", k)
		}
		now := time.Now()
		if k.Signs(now, time.Hour) && !k.Published(now) {
			t.Fatal("signs without being published")
		}
	})
}
