package deviceid

import (
	"crypto/elliptic"
	"crypto/x509"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
)

func TestSetup(t *testing.T) {
	dir := t.TempDir()
	cert, key := testenv.NewTestCA(t, "test").WriteTLSPair(t, dir, "client", x509.ExtKeyUsageClientAuth)
	ksk := genKey(t, dir, "iot.example.", dns.ECDSAP256SHA256, true)
	zsk := genKey(t, dir, "iot.example.", dns.ED25519, false)
	otherZone := genKey(t, dir, "other.example.", dns.ECDSAP256SHA256, true)
	mismatched := filepath.Join(dir, "Kmismatch")
	copyFile(t, ksk+".key", mismatched+".key")
	copyFile(t, zsk+".private", mismatched+".private")
	rsa := filepath.Join(dir, "Krsa")
	testenv.WriteFile(t, rsa+".key", []byte("iot.example. IN DNSKEY 257 3 8 AwEAAcFcGsaxxdgiuuGmCkVImy4h99CqT7jwY3pexPGcnUFtR2Fh36BponcwtkZ4cAgtvd4Qs8PkxUdp6p/DlUmObdk="))
	testenv.WriteFile(t, rsa+".private", []byte("Private-key-format: v1.3\nAlgorithm: 8 (RSASHA256)\n"))
	// Keys in an HSM: a KSK in SoftHSM, and a P-384 key the zone cannot use.
	h := testenv.SoftHSM(t)
	hsmKSK := hsmKey(t, h, "ksk")
	p384, err := pkcs11key.Generate(h.URI("p384"), elliptic.P384())
	if err != nil {
		t.Fatal(err)
	}
	p384.Close()
	wrongPIN := filepath.Join(dir, "pin")
	testenv.WriteFile(t, wrongPIN, []byte("0000"))
	kekFile := filepath.Join(dir, "kek")
	if _, err := kek.Generate(kekFile); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		input string
		err   string // empty: no error
		check func(t *testing.T, c *config)
	}{
		{"defaults", `deviceid`, "", func(t *testing.T, c *config) {
			if !slices.Equal(c.zones, []string{"iot.example."}) || !slices.Equal(c.etcd.Endpoints, []string{etcdclient.DefaultEndpoint}) ||
				c.prefix != "/deviceid" || c.ttl != 60 || c.render.RevokedUsage != 255 || !c.render.Discovery ||
				c.validity != 24*time.Hour || !c.cds || !slices.Equal(c.ns, []string{"ns1.iot.example."}) {
				t.Errorf("defaults %+v", c)
			}
			if c.maxUDPSize != 1232 {
				t.Errorf("default max_udp_size %d", c.maxUDPSize)
			}
			if r := c.rrl; r.rate != 100 || r.window != 5 || r.slip != 2 || r.v4 != 24 || r.v6 != 56 || r.tableSize != 65536 ||
				!slices.Equal(r.exempt, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}) {
				t.Errorf("default rrl %+v", r)
			}
		}},
		{"zones as arguments", `deviceid A.example b.example.`, "", func(t *testing.T, c *config) {
			if !slices.Equal(c.zones, []string{"a.example.", "b.example."}) {
				t.Errorf("zones %v", c.zones)
			}
		}},
		{"every option", `deviceid {
			endpoint https://10.0.0.1:2379,https://10.0.0.2:2379
			tls ` + cert + ` ` + key + ` ` + cert + `
			credentials user secret
			prefix /ids/
			key file ` + ksk + ` ` + zsk + `.key
			ns NS1.iot.example. ns2.example.net.
			ttl 30
			revoked_usage 254
			discovery off
			signature_validity 6h
			cds off
			signature_cache 1000
			denial_budget 5000
			max_udp_size 1400
			rrl 50 window 2 slip 3 ipv4_prefix 22 ipv6_prefix 48 table_size 1024 exempt 10.0.0.0/8 2001:DB8::1 ::ffff:192.0.2.0/120
		}`, "", func(t *testing.T, c *config) {
			if r := c.rrl; c.maxUDPSize != 1400 || r.rate != 50 || r.window != 2 || r.slip != 3 || r.v4 != 22 || r.v6 != 48 || r.tableSize != 1024 ||
				!slices.Equal(r.exempt, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("192.0.2.0/24")}) {
				t.Errorf("max_udp_size %d, rrl %+v", c.maxUDPSize, r)
			}
			if !slices.Equal(c.etcd.Endpoints, []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}) || c.etcd.CertFile != cert || c.etcd.CAFile != cert ||
				c.etcd.Username != "user" || c.etcd.Password != "secret" || c.prefix != "/ids" || len(c.keyFiles) != 2 ||
				!slices.Equal(c.ns, []string{"ns1.iot.example.", "ns2.example.net."}) || c.ttl != 30 ||
				c.render.RevokedUsage != 254 || c.render.Discovery || c.validity != 6*time.Hour || c.cds || c.cacheSize != 1000 || c.denialBudget != 5000 {
				t.Errorf("config %+v", c)
			}
			ks := c.keys["iot.example."]
			if ks == nil || len(ks.ksk) != 1 || len(ks.zsk) != 1 || len(ks.dnskey) != 2 || ks.cds != nil {
				t.Errorf("keys %+v", ks)
			}
		}},
		{"endpoints in one argument", "deviceid {\nendpoint \"http://a:2379 http://b:2379\"\n}", "", func(t *testing.T, c *config) {
			if len(c.etcd.Endpoints) != 2 {
				t.Errorf("endpoints %v", c.etcd.Endpoints)
			}
		}},
		{"unknown option", "deviceid {\nfoo bar\n}", "unknown property 'foo'", nil},
		{"endpoint missing", "deviceid {\nendpoint\n}", "no URL", nil},
		{"tls with plain http", "deviceid {\nendpoint http://a:2379\ntls " + cert + " " + key + "\n}", "plain http", nil},
		{"tls key missing", "deviceid {\nendpoint https://a:2379\ntls " + cert + " /nonexistent.pem\n}", "client certificate", nil},
		{"endpoint not a URL", "deviceid {\nendpoint 127.0.0.1:2379\n}", "not an http:// or https:// URL", nil},
		{"endpoint bad scheme", "deviceid {\nendpoint unix:///tmp/etcd\n}", "not an http:// or https:// URL", nil},
		{"tls too many", "deviceid {\ntls a b c d\n}", "Wrong argument count", nil},
		{"tls missing file", "deviceid {\nendpoint https://a:2379\ntls /nonexistent/cert.pem /nonexistent/key.pem\n}", "etcd client certificate", nil},
		{"credentials one", "deviceid {\ncredentials user\n}", "Wrong argument count", nil},
		{"prefix relative", "deviceid {\nprefix deviceid\n}", "must start with '/'", nil},
		{"prefix root", "deviceid {\nprefix /\n}", "must start with '/'", nil},
		{"prefix two", "deviceid {\nprefix /a /b\n}", "Wrong argument count", nil},
		{"key without file", "deviceid {\nkey Kiot\n}", "key file NAME", nil},
		{"one key is a CSK", "deviceid {\nkey file " + ksk + "\n}", "", func(t *testing.T, c *config) {
			ks := c.keys["iot.example."]
			if ks == nil || len(ks.ksk) != 1 || ks.zsk[0] != ks.ksk[0] || len(ks.cds) != 1 || len(ks.cdnskey) != 1 || len(ks.ds) != 1 {
				t.Errorf("keys %+v", ks)
			}
		}},
		{"key file missing", "deviceid {\nkey file " + dir + "/Knothere\n}", "no such file", nil},
		{"key for another zone", "deviceid {\nkey file " + otherZone + "\n}", "which this block does not serve", nil},
		{"only a zsk", "deviceid {\nkey file " + zsk + "\n}", "no key with the SEP flag", nil},
		{"private key of another key", "deviceid {\nkey file " + mismatched + "\n}", "does not match", nil},
		{"rsa key", "deviceid {\nkey file " + rsa + "\n}", "not supported", nil},
		{"signature_cache zero", "deviceid {\nsignature_cache 0\n}", "positive number", nil},
		{"denial_budget off", "deviceid {\ndenial_budget off\n}", "", func(t *testing.T, c *config) {
			if c.denialBudget != 0 {
				t.Errorf("denial_budget off: %v", c.denialBudget)
			}
		}},
		{"denial_budget default", "deviceid\n", "", func(t *testing.T, c *config) {
			if c.denialBudget != autoBudget {
				t.Errorf("default denial_budget: %v", c.denialBudget)
			}
		}},
		{"denial_budget bad", "deviceid {\ndenial_budget -3\n}", "want auto, off, or a positive number", nil},
		{"denial_budget twice", "deviceid {\ndenial_budget 1 2\n}", "Wrong argument count", nil},
		{"max_udp_size smallest", "deviceid {\nmax_udp_size 512\n}", "", func(t *testing.T, c *config) {
			if c.maxUDPSize != 512 {
				t.Errorf("max_udp_size %d", c.maxUDPSize)
			}
		}},
		{"max_udp_size below 512", "deviceid {\nmax_udp_size 511\n}", "max_udp_size \"511\" is not a number of bytes from 512 to 4096", nil},
		{"max_udp_size above 4096", "deviceid {\nmax_udp_size 65535\n}", "from 512 to 4096", nil},
		{"max_udp_size text", "deviceid {\nmax_udp_size big\n}", "from 512 to 4096", nil},
		{"max_udp_size missing", "deviceid {\nmax_udp_size\n}", "Wrong argument count", nil},
		{"max_udp_size twice", "deviceid {\nmax_udp_size 1232 1400\n}", "Wrong argument count", nil},
		{"rrl off", "deviceid {\nrrl off\n}", "", func(t *testing.T, c *config) {
			if c.rrl.rate != 0 || newRRL(c.rrl) != nil {
				t.Errorf("rrl off: %+v", c.rrl)
			}
		}},
		{"rrl rate alone keeps the defaults", "deviceid {\nrrl 5\n}", "", func(t *testing.T, c *config) {
			if r := c.rrl; r.rate != 5 || r.window != 5 || r.slip != 2 || r.tableSize != 65536 || len(r.exempt) != 2 {
				t.Errorf("rrl %+v", r)
			}
		}},
		{"rrl exempt none", "deviceid {\nrrl 5 exempt none slip 1\n}", "", func(t *testing.T, c *config) {
			if r := c.rrl; len(r.exempt) != 0 || r.slip != 1 {
				t.Errorf("rrl %+v", r)
			}
		}},
		{"rrl slip 0", "deviceid {\nrrl 5 slip 0\n}", "", func(t *testing.T, c *config) {
			if c.rrl.slip != 0 {
				t.Errorf("rrl %+v", c.rrl)
			}
		}},
		{"rrl missing", "deviceid {\nrrl\n}", "Wrong argument count", nil},
		{"rrl off with more", "deviceid {\nrrl off slip 2\n}", "Wrong argument count", nil},
		{"rrl zero", "deviceid {\nrrl 0\n}", "rrl \"0\": want off, or a number of responses a second per client prefix from 1 to 1000000", nil},
		{"rrl negative", "deviceid {\nrrl -5\n}", "want off, or a number", nil},
		{"rrl too fast", "deviceid {\nrrl 1000001\n}", "want off, or a number", nil},
		{"rrl on", "deviceid {\nrrl on\n}", "want off, or a number", nil},
		{"rrl window zero", "deviceid {\nrrl 5 window 0\n}", "rrl window \"0\": want a number from 1 to 3600", nil},
		{"rrl window text", "deviceid {\nrrl 5 window 2s\n}", "rrl window \"2s\": want a number from 1 to 3600", nil},
		{"rrl window without value", "deviceid {\nrrl 5 window\n}", "rrl window: no value", nil},
		{"rrl slip too large", "deviceid {\nrrl 5 slip 11\n}", "rrl slip \"11\": want a number from 0 to 10", nil},
		{"rrl ipv4_prefix too long", "deviceid {\nrrl 5 ipv4_prefix 33\n}", "rrl ipv4_prefix \"33\": want a number from 0 to 32", nil},
		{"rrl ipv6_prefix too long", "deviceid {\nrrl 5 ipv6_prefix 129\n}", "rrl ipv6_prefix \"129\": want a number from 0 to 128", nil},
		{"rrl table_size too small", "deviceid {\nrrl 5 table_size 8\n}", "rrl table_size \"8\": want a number from 16 to 16777216", nil},
		{"rrl table_size too large", "deviceid {\nrrl 5 table_size 16777217\n}", "from 16 to 16777216", nil},
		{"rrl unknown setting", "deviceid {\nrrl 5 burst 10\n}", "rrl: unknown setting 'burst'", nil},
		{"rrl exempt empty", "deviceid {\nrrl 5 exempt\n}", "rrl exempt: name the prefixes not limited, or none", nil},
		{"rrl exempt empty before a setting", "deviceid {\nrrl 5 exempt slip 1\n}", "rrl exempt: name the prefixes", nil},
		{"rrl exempt not an address", "deviceid {\nrrl 5 exempt 300.1.2.3\n}", "rrl exempt \"300.1.2.3\" is not an address or a prefix", nil},
		{"rrl exempt with a zone", "deviceid {\nrrl 5 exempt fe80::1%eth0\n}", "is not an address or a prefix", nil},
		{"rrl exempt short mapped prefix", "deviceid {\nrrl 5 exempt ::ffff:0:0/80\n}", "is not an address or a prefix", nil},
		{"key file without name", "deviceid {\nkey file\n}", "key file NAME", nil},
		{"ns not fqdn", "deviceid {\nns ns1.iot.example\n}", "not a fully qualified", nil},
		{"ns missing", "deviceid {\nns\n}", "Wrong argument count", nil},
		{"ttl zero", "deviceid {\nttl 0\n}", "ttl \"0\"", nil},
		{"ttl text", "deviceid {\nttl soon\n}", "ttl \"soon\"", nil},
		{"ttl too large", "deviceid {\nttl 2147483648\n}", "ttl \"2147483648\"", nil},
		{"revoked_usage usable", "deviceid {\nrevoked_usage 3\n}", "from 5 to 255", nil},
		{"revoked_usage pkix-cd", "deviceid {\nrevoked_usage 4\n}", "from 5 to 255", nil},
		{"revoked_usage too large", "deviceid {\nrevoked_usage 256\n}", "from 5 to 255", nil},
		{"discovery maybe", "deviceid {\ndiscovery maybe\n}", "want on or off", nil},
		{"discovery missing", "deviceid {\ndiscovery\n}", "Wrong argument count", nil},
		{"signature_validity short", "deviceid {\nsignature_validity 30m\n}", "at least 2h", nil},
		{"signature_validity text", "deviceid {\nsignature_validity long\n}", "at least 2h", nil},
		{"cds yes", "deviceid {\ncds yes\n}", "want on or off", nil},
		{"twice", "deviceid\ndeviceid", "this plugin", nil},
		{"hsm ksk and file zsk", "deviceid {\nkey pkcs11 \"" + hsmKSK + "\"\nkey file " + zsk + "\n}", "", func(t *testing.T, c *config) {
			defer c.closeKeys()
			if ks := c.keys["iot.example."]; ks == nil || len(ks.ksk) != 1 || len(ks.zsk) != 1 || len(ks.cds) != 1 || len(c.hsmKeys) != 1 {
				t.Errorf("keys %+v", ks)
			}
		}},
		{"pkcs11 not a uri", "deviceid {\nkey pkcs11 ksk.pem\n}", "not a pkcs11: URI", nil},
		{"pkcs11 malformed", "deviceid {\nkey pkcs11 pkcs11:token\n}", "malformed", nil},
		{"pkcs11 wrong pin", "deviceid {\nkey pkcs11 \"" + strings.Replace(hsmKSK, h.PINFile, wrongPIN, 1) + "\"\n}", "wrong PIN", nil},
		{"pkcs11 missing object", "deviceid {\nkey pkcs11 \"" + h.URI("nosuch") + "\"\n}", "no such key pair", nil},
		{"pkcs11 wrong key type", "deviceid {\nkey pkcs11 \"" + h.URI("p384") + "\"\n}", "want ECDSA on P-256", nil},
		{"pkcs11 unreachable module", "deviceid {\nkey pkcs11 \"" + strings.Replace(hsmKSK, h.Module, "/nonexistent/module.so", 1) + "\"\n}", "not a readable module", nil},
		{"pkcs11 two zones", "deviceid a.example b.example {\nkey pkcs11 \"" + hsmKSK + "\"\n}", "one zone", nil},
		{"keys etcd", "deviceid {\nkeys etcd\nkek file " + kekFile + "\n}", "", func(t *testing.T, c *config) {
			if !c.keysFromEtcd || c.kek == nil || len(c.keys) != 0 {
				t.Errorf("keys etcd: %+v", c)
			}
		}},
		{"keys etcd and key lines", "deviceid {\nkeys etcd\nkey file " + ksk + "\n}", "exclude each other", nil},
		{"kek without keys etcd", "deviceid {\nkek file " + kekFile + "\n}", "without it", nil},
		{"keys not etcd", "deviceid {\nkeys file\n}", "keys etcd", nil},
		{"kek missing", "deviceid {\nkeys etcd\nkek file " + filepath.Join(dir, "nosuch") + "\n}", "no such file", nil},
		{"kek not a file", "deviceid {\nkeys etcd\nkek pkcs11 x\n}", "kek file PATH", nil},
		{"keys etcd in an hsm", "deviceid {\nkeys etcd\nhsm \"" + h.TokenURI() + "\"\n}", "", func(t *testing.T, c *config) {
			if c.hsm != h.TokenURI() {
				t.Errorf("hsm %q", c.hsm)
			}
		}},
		{"snapshot", "deviceid {\nsnapshot " + dir + " 30s\n}", "", func(t *testing.T, c *config) {
			if c.snapshotDir != dir || c.snapshotInterval != 30*time.Second {
				t.Errorf("snapshot %q every %s", c.snapshotDir, c.snapshotInterval)
			}
		}},
		{"snapshot default interval", "deviceid {\nsnapshot " + dir + "\n}", "", func(t *testing.T, c *config) {
			if c.snapshotInterval != 5*time.Minute {
				t.Errorf("snapshot every %s", c.snapshotInterval)
			}
		}},
		{"snapshot no directory", "deviceid {\nsnapshot " + filepath.Join(dir, "nosuch") + "\n}", "not a directory", nil},
		{"snapshot interval too short", "deviceid {\nsnapshot " + dir + " 10ms\n}", "1s or more", nil},
		{"snapshot no argument", "deviceid {\nsnapshot\n}", "snapshot DIR", nil},
		{"hsm without keys etcd", "deviceid {\nhsm \"" + h.TokenURI() + "\"\n}", "without it", nil},
		{"hsm naming a key", "deviceid {\nkeys etcd\nhsm \"" + hsmKSK + "\"\n}", "names a key", nil},
		{"hsm without a pin", "deviceid {\nkeys etcd\nhsm pkcs11:token=x?module-path=" + h.Module + "\n}", "PIN", nil},
		{"hsm twice", "deviceid {\nkeys etcd\nhsm a b\n}", "want 'hsm pkcs11:", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := caddy.NewTestController("dns", tc.input)
			c.ServerBlockKeys = []string{"iot.example."}
			cfg, err := parse(c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, cfg)
		})
	}
}

// genKey writes a key pair for zone into dir and returns its base name.
func genKey(t testing.TB, dir, zone string, alg uint8, sep bool) string {
	t.Helper()
	base, _, err := dnskey.Generate(dir, zone, alg, sep)
	if err != nil {
		t.Fatal(err)
	}
	return base
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WriteFile(t, to, b)
}

// TestSetupRoot: relative file names of 'key file' and 'tls' are joined with the
// server's root, as CoreDNS's own plugins do.
func TestSetupRoot(t *testing.T) {
	dir := t.TempDir()
	ksk := genKey(t, dir, "iot.example.", dns.ECDSAP256SHA256, true)
	testenv.NewTestCA(t, "test").WriteTLSPair(t, dir, "client", x509.ExtKeyUsageClientAuth)
	c := caddy.NewTestController("dns", "deviceid {\nendpoint https://127.0.0.1:2379\nkey file "+filepath.Base(ksk)+"\ntls client.pem client-key.pem\n}")
	c.ServerBlockKeys = []string{"iot.example."}
	dnsserver.GetConfig(c).Root = dir
	cfg, err := parse(c)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.keyFiles, []string{ksk}) || cfg.etcd.CertFile != filepath.Join(dir, "client.pem") {
		t.Errorf("key files %v, tls %q: not read from the root %s", cfg.keyFiles, cfg.etcd.CertFile, dir)
	}
	// Without the root the same names are not found.
	c = caddy.NewTestController("dns", "deviceid {\nkey file "+filepath.Base(ksk)+"\n}")
	c.ServerBlockKeys = []string{"iot.example."}
	if _, err := parse(c); err == nil {
		t.Error("a relative key file was found outside the root")
	}
}
