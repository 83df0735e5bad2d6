package test

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
)

// TestDNSSECValidation: every kind of answer validates in unbound and delv, with the
// KSK in a file and with the KSK in an HSM (SoftHSM) beside a ZSK in a file.
func TestDNSSECValidation(t *testing.T) {
	t.Run("keys in files", func(t *testing.T) {
		dnssecValidation(t, genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true))
	})
	t.Run("KSK in an HSM", func(t *testing.T) {
		dnssecValidation(t, genHSMZoneKey(t, testenv.SoftHSM(t), "ksk"))
	})
	// The validators' queries answered by the fast path: each one that unbound and delv
	// ask for a name that exists, the apex, or a denial already signed.
	t.Run("fast path", func(t *testing.T) {
		fast := fastPackets(t, "fast")
		dnssecValidation(t, genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true), "fastpath 2")
		t.Logf("fast path: %v answered, %v handed over", fastPackets(t, "fast")-fast, fastPackets(t, "handed"))
		if n := fastPackets(t, "fast") - fast; n < 20 {
			t.Errorf("the fast path answered %v queries of the validators, want most of them", n)
		}
	})
}

// dnssecValidation runs the validators against a zone signed with ksk and a ZSK, the
// deviceid block having the extra lines.
func dnssecValidation(t *testing.T, ksk zoneKey, extra ...string) {
	etcd, cli, ca := testbed(t)
	year := time.Now().AddDate(1, 0, 0)
	active := newDevice(t, ca, "sensor7", year)
	revoked := newDevice(t, ca, "sensor8", year)
	multi := newDevice(t, ca, "c90a.airquality", year)
	later := newDevice(t, ca, "sensor9", year)
	var fleet []string // a device with four certificates: more than 1232 bytes
	var fleetWant []string
	for range 4 {
		d := newDevice(t, ca, "fleet", year)
		fleet = append(fleet, credentialJSON(d, "active"))
		fleetWant = append(fleetWant, d.ee(), d.discovery())
	}
	aki := record.KeyID(ca.Cert.SubjectKeyId)
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(active, "active")))
	testenv.Put(t, cli, deviceKey("sensor8"), deviceJSON(credentialJSON(revoked, "revoked")))
	testenv.Put(t, cli, deviceKey("c90a.airquality"), deviceJSON(credentialJSON(multi, "active")))
	testenv.Put(t, cli, deviceKey("sensor9"), deviceJSON(credentialJSON(later, "active")))
	testenv.Put(t, cli, deviceKey("fleet"), deviceJSON(fleet...))
	testenv.Put(t, cli, "/deviceid/iot.example/ca/"+aki, string(ca.PEM()))

	zsk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, false)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefileWith(port, etcd.URL(), 60, extra, ksk, zsk))
	waitLoaded(t, c)
	if slices.Contains(extra, "fastpath 2") {
		waitFastPath(t, c, 2)
	}
	unbound := startUnbound(t, port, ksk.ds)

	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		answer []string // TLSA rdata; nil: any answer of the type, or none for negative
		neg    bool
	}{
		{"active device", "sensor7._device.iot.example.", dns.TypeTLSA, []string{active.ee(), active.discovery()}, false},
		{"revoked device", "sensor8._device.iot.example.", dns.TypeTLSA, []string{revoked.revoked()}, false},
		{"CA discovery", aki + "._ca._device.iot.example.", dns.TypeTLSA, []string{"2 0 0 " + fmt.Sprintf("%x", ca.Cert.Raw)}, false},
		{"multi-label device", "c90a.airquality._device.iot.example.", dns.TypeTLSA, []string{multi.ee(), multi.discovery()}, false},
		{"mixed case", "SeNsOr7._DeViCe.IoT.example.", dns.TypeTLSA, []string{active.ee(), active.discovery()}, false},
		{"answer over 1232 bytes, through TCP", "fleet._device.iot.example.", dns.TypeTLSA, fleetWant, false},
		{"nonexistent device", "nosuch._device.iot.example.", dns.TypeTLSA, nil, true},
		{"NODATA at a device", "sensor7._device.iot.example.", dns.TypeA, nil, true},
		{"NODATA at an empty non-terminal", "airquality._device.iot.example.", dns.TypeTLSA, nil, true},
		{"NODATA at _device", "_device.iot.example.", dns.TypeTLSA, nil, true},
		{"NODATA at the apex: HINFO", zone, dns.TypeHINFO, nil, true},
		{"NODATA at the apex: TXT", zone, dns.TypeTXT, nil, true},
		{"DNSKEY", zone, dns.TypeDNSKEY, nil, false},
		{"CDS", zone, dns.TypeCDS, nil, false},
		{"CDNSKEY", zone, dns.TypeCDNSKEY, nil, false},
		{"SOA", zone, dns.TypeSOA, nil, false},
		{"NS", zone, dns.TypeNS, nil, false},
	}
	for _, tc := range tests {
		t.Run("unbound/"+tc.name, func(t *testing.T) {
			r, err := resolve(unbound, "udp", tc.qname, tc.qtype)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData {
				t.Fatalf("rcode %s, AD %v: not validated", dns.RcodeToString[r.Rcode], r.AuthenticatedData)
			}
			var n int
			for _, rr := range r.Answer {
				if rr.Header().Rrtype == tc.qtype {
					n++
				}
			}
			if tc.neg != (n == 0) {
				t.Errorf("%d records of the type in %v", n, r.Answer)
			}
			if tc.answer != nil && !sameSet(tlsaSet(r), tc.answer) {
				t.Errorf("answer %v, want %v", tlsaSet(r), tc.answer)
			}
		})
	}

	t.Run("truncated over UDP, whole over TCP", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("fleet._device.iot.example.", dns.TypeTLSA)
		m.SetEdns0(1232, true)
		r, err := dns.Exchange(m, c.UDP)
		if err != nil || !r.Truncated || len(r.Answer) != 0 {
			t.Errorf("UDP with a 1232-byte buffer: %v, TC %v, %d records", err, r.Truncated, len(r.Answer))
		}
		r, err = resolve(c.TCP, "tcp", "fleet._device.iot.example.", dns.TypeTLSA)
		if err != nil || r.Truncated || !sameSet(tlsaSet(r), fleetWant) {
			t.Errorf("over TCP: %v %v", err, r)
		}
	})

	for _, q := range []struct {
		qname string
		qtype uint16
		want  string
	}{
		{"sensor7._device.iot.example.", dns.TypeTLSA, "; fully validated"},
		{"sensor8._device.iot.example.", dns.TypeTLSA, "; fully validated"},
		{"nosuch._device.iot.example.", dns.TypeTLSA, "; negative response, fully validated"},
		{"airquality._device.iot.example.", dns.TypeTLSA, "; negative response, fully validated"},
		{zone, dns.TypeTXT, "; negative response, fully validated"},
		{zone, dns.TypeDNSKEY, "; fully validated"},
		{zone, dns.TypeCDS, "; fully validated"},
	} {
		t.Run(fmt.Sprintf("delv/%s/%s", q.qname, dns.TypeToString[q.qtype]), func(t *testing.T) {
			if out := delv(t, port, ksk.ds, q.qname, q.qtype); !strings.Contains(out, q.want) {
				t.Errorf("delv says\n%s\nwant %q", out, q.want)
			}
		})
	}

	// Neither unbound 1.17 nor delv 9.18 sends the CO flag, so the NXDOMAIN form of
	// compact denial is checked here: every signature verifies with a key of the
	// DNSKEY RRset that the trusted DS vouches for.
	t.Run("CO flag: NXDOMAIN, signed", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("nosuch._device.iot.example.", dns.TypeTLSA)
		m.SetEdns0(1232, true)
		m.IsEdns0().SetCo()
		r, err := dns.Exchange(m, c.UDP)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeNameError || !r.IsEdns0().Co() {
			t.Fatalf("rcode %s, CO %v", dns.RcodeToString[r.Rcode], r.IsEdns0().Co())
		}
		keys := trustedKeys(t, c, ksk.ds)
		var nsec *dns.NSEC
		for _, rr := range r.Ns {
			if n, ok := rr.(*dns.NSEC); ok {
				nsec = n
			}
		}
		if nsec == nil || !slices.Contains(nsec.TypeBitMap, dns.TypeNXNAME) {
			t.Fatalf("no NSEC with NXNAME: %v", r.Ns)
		}
		verifySection(t, r.Ns, keys)
	})

	t.Run("revocation validates at once", func(t *testing.T) {
		name := "sensor9._device.iot.example."
		if r, err := resolve(unbound, "udp", name, dns.TypeTLSA); err != nil || !r.AuthenticatedData || !sameSet(tlsaSet(r), []string{later.ee(), later.discovery()}) {
			t.Fatalf("before: %v %v", err, r)
		}
		testenv.Put(t, cli, deviceKey("sensor9"), deviceJSON(credentialJSON(later, "revoked")))
		testenv.Eventually(t, "revoked record validated", func() error {
			r, err := resolve(unbound, "udp", name, dns.TypeTLSA)
			if err != nil {
				return err
			}
			if !r.AuthenticatedData || !sameSet(tlsaSet(r), []string{later.revoked()}) {
				return fmt.Errorf("AD %v, answer %v", r.AuthenticatedData, tlsaSet(r))
			}
			return nil
		})
	})
}

// trustedKeys fetches the zone's DNSKEY RRset and checks it against the DS the way a
// validator does: a key matches the DS and signs the RRset.
func trustedKeys(t testing.TB, c *testenv.CoreDNS, ds *dns.DS) map[uint16]*dns.DNSKEY {
	t.Helper()
	r, err := resolve(c.UDP, "udp", zone, dns.TypeDNSKEY)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[uint16]*dns.DNSKEY{}
	var trusted bool
	for _, rr := range r.Answer {
		if k, ok := rr.(*dns.DNSKEY); ok {
			keys[k.KeyTag()] = k
			if d := k.ToDS(dns.SHA256); d != nil && strings.EqualFold(d.Digest, ds.Digest) {
				trusted = true
			}
		}
	}
	if !trusted {
		t.Fatal("no DNSKEY matches the DS")
	}
	verifySection(t, r.Answer, keys)
	return keys
}

// verifySection checks that every RRset in rrs has an RRSIG that verifies with keys.
func verifySection(t testing.TB, rrs []dns.RR, keys map[uint16]*dns.DNSKEY) {
	t.Helper()
	sets := map[string][]dns.RR{}
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeRRSIG {
			k := strings.ToLower(rr.Header().Name) + dns.TypeToString[rr.Header().Rrtype]
			sets[k] = append(sets[k], rr)
		}
	}
	for k, set := range sets {
		ok := false
		for _, rr := range rrs {
			s, isSig := rr.(*dns.RRSIG)
			if isSig && strings.ToLower(s.Hdr.Name)+dns.TypeToString[s.TypeCovered] == k && keys[s.KeyTag] != nil &&
				s.Verify(keys[s.KeyTag], set) == nil && s.ValidityPeriod(time.Now()) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s has no valid RRSIG", k)
		}
	}
}

// TestKeyRollover rolls the zone-signing key and then the key-signing key by
// reloading the Corefile, as an operator does, while a validating resolver keeps
// asking: every answer must validate throughout. The resolver trusts the DS of both
// KSKs, as the parent would publish them during the roll.
func TestKeyRollover(t *testing.T) {
	dir := t.TempDir()
	rollover(t, genZoneKey(t, dir, dns.ECDSAP256SHA256, true), genZoneKey(t, dir, dns.ED25519, true))
}

// TestKeyRolloverHSM rolls a KSK kept in an HSM (SoftHSM) to a new one made there.
func TestKeyRolloverHSM(t *testing.T) {
	h := testenv.SoftHSM(t)
	rollover(t, genHSMZoneKey(t, h, "ksk1"), genHSMZoneKey(t, h, "ksk2"))
}

// rollover rolls the ZSK, then the KSK from k1 to k2.
func rollover(t *testing.T, k1, k2 zoneKey) {
	etcd, cli, ca := testbed(t)
	d := newDevice(t, ca, "sensor7", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(fmt.Sprintf(`{"cert": %q, "status": "active"}`, base64.StdEncoding.EncodeToString(d.cert))))

	dir := t.TempDir()
	z1 := genZoneKey(t, dir, dns.ECDSAP256SHA256, false)
	z2 := genZoneKey(t, dir, dns.ECDSAP256SHA256, false)
	port := dnsPort(t)
	// A short TTL, since each step must wait it out: a resolver keeps the DNSKEY RRset
	// it validated (unbound in its key cache) for that long.
	const ttl = 2
	c := testenv.StartCoreDNS(t, signedCorefileTTL(port, etcd.URL(), ttl, k1, z1))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, k1.ds, k2.ds)

	probe := startProber(10*time.Millisecond, func(i int) (int, []string) {
		q := []struct {
			name  string
			qtype uint16
		}{{"sensor7._device.iot.example.", dns.TypeTLSA}, {zone, dns.TypeDNSKEY}, {fmt.Sprintf("nx%d._device.iot.example.", i), dns.TypeTLSA}}[i%3]
		r, err := resolve(unbound, "udp", q.name, q.qtype)
		if err != nil || r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData {
			return 1, []string{fmt.Sprintf("%s %s: %v %v", q.name, dns.TypeToString[q.qtype], err, r)}
		}
		return 1, nil
	})

	steps := [][]zoneKey{
		{k1, z1, z2}, // pre-publish the new ZSK: both sign
		{k1, z2},     // retire the old ZSK
		{k1, k2, z2}, // introduce the new KSK (its DS is at the parent)
		{k2, z2},     // retire the old KSK
	}
	for _, keys := range steps {
		// Each step waits out the TTL (twice, for good measure) with queries going on,
		// as the README's rollover tells operators to.
		before, since := probe.asked.Load(), time.Now()
		testenv.Eventually(t, "queries and the TTL before the step", func() error {
			if n := probe.asked.Load() - before; n < 100 || time.Since(since) < 2*ttl*time.Second {
				return fmt.Errorf("%d queries in %s", n, time.Since(since))
			}
			return nil
		})
		c.Reload(t, signedCorefileTTL(port, etcd.URL(), ttl, keys...))
	}
	before := probe.asked.Load()
	testenv.Eventually(t, "queries after the last step", func() error {
		if probe.asked.Load() < before+100 {
			return fmt.Errorf("%d queries", probe.asked.Load()-before)
		}
		return nil
	})
	asked, failures := probe.done()
	if len(failures) != 0 {
		t.Errorf("%d of %d answers did not validate during the rollover; first: %v", len(failures), asked, failures[0])
	}
	r, err := resolve(c.UDP, "udp", zone, dns.TypeDNSKEY)
	if err != nil {
		t.Fatal(err)
	}
	var tags []uint16
	for _, rr := range r.Answer {
		if k, ok := rr.(*dns.DNSKEY); ok {
			tags = append(tags, k.KeyTag())
		}
	}
	slices.Sort(tags)
	want := []uint16{k2.ds.KeyTag, z2.ds.KeyTag}
	slices.Sort(want)
	if !slices.Equal(tags, want) {
		t.Errorf("DNSKEY tags after the rollover %v, want %v", tags, want)
	}
}

// TestHSMBadConfig: a wrong PIN, a missing key and an unreachable module stop CoreDNS
// from starting with an error that says so, and a reload to a missing key or module or
// another PIN is refused while the running configuration goes on answering, signed and
// validating.
func TestHSMBadConfig(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	h := testenv.SoftHSM(t)
	ksk := genHSMZoneKey(t, h, "ksk")
	wrongPIN := filepath.Join(t.TempDir(), "pin")
	testenv.WriteFile(t, wrongPIN, []byte("0000\n"))
	bad := map[string]zoneKey{
		"wrong PIN":             {uri: strings.Replace(ksk.uri, h.PINFile, wrongPIN, 1)},
		"no such key pair":      {uri: h.URI("nosuch")},
		"not a readable module": {uri: strings.Replace(ksk.uri, h.Module, "/nonexistent/libpkcs11.so", 1)},
	}
	port := dnsPort(t)
	for want, k := range bad {
		if _, err := testenv.TryStartCoreDNS(t, signedCorefile(dnsPort(t), etcd.URL(), k)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("start with %s: %v", want, err)
		}
	}
	c := testenv.StartCoreDNS(t, signedCorefile(port, etcd.URL(), ksk))
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)
	// PKCS#11 keeps one login to a token per process: while the running configuration
	// is logged in, the token cannot check another PIN, so a reload with one is refused.
	bad["PIN differs from the one this process is logged in"] = bad["wrong PIN"]
	delete(bad, "wrong PIN")
	for want, k := range bad {
		if err := c.TryReload(signedCorefile(port, etcd.URL(), k)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("reload with %s: %v", want, err)
		}
		r, err := resolve(unbound, "udp", zone, dns.TypeDNSKEY)
		if err != nil || r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData {
			t.Errorf("after the refused reload with %s: %v %v", want, err, r)
		}
	}
}

// TestDenialBudgetThroughUnbound: with the signing budget spent, CoreDNS answers a
// query for a fresh nonexistent name over UDP with TC and no records; unbound, a real
// resolver, asks again over TCP (where the query waits for the budget) and still gets
// a denial it validates. Names that exist are answered as ever meanwhile.
func TestDenialBudgetThroughUnbound(t *testing.T) {
	etcd, cli, ca := testbed(t)
	active := newDevice(t, ca, "sensor7", time.Now().AddDate(1, 0, 0))
	testenv.Put(t, cli, deviceKey("sensor7"), deviceJSON(credentialJSON(active, "active")))
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	corefile := strings.Replace(signedCorefile(port, etcd.URL(), ksk), "deviceid {", "deviceid {\n        denial_budget 2", 1)
	c := testenv.StartCoreDNS(t, corefile)
	waitLoaded(t, c)
	unbound := startUnbound(t, port, ksk.ds)

	exists := func() {
		t.Helper()
		r, err := resolve(c.UDP, "udp", "sensor7._device.iot.example.", dns.TypeTLSA)
		if err != nil || r.Truncated || !sameSet(tlsaSet(r), []string{active.ee(), active.discovery()}) {
			t.Fatalf("a name that exists: %v %v", err, r)
		}
	}
	exists() // engages the budget: names that exist are being asked for
	truncated := false
	for i := range 6 { // spends the budget of two a second
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("spent%d-%d._device.iot.example.", i, time.Now().UnixNano()), dns.TypeTLSA)
		m.SetEdns0(1232, true)
		r, err := dns.Exchange(m, c.UDP)
		if err != nil {
			t.Fatal(err)
		}
		if r.Truncated {
			truncated = true
			if len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("a truncated answer with records: %v", r)
			}
		}
	}
	if !truncated {
		t.Fatal("six fresh names at once within a budget of two a second: none truncated")
	}
	for i := range 4 {
		exists()
		r, err := resolve(unbound, "udp", fmt.Sprintf("nx%d-%d._device.iot.example.", i, time.Now().UnixNano()), dns.TypeTLSA)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(r.Answer) != 0 {
			t.Errorf("through unbound over the budget: rcode %s, AD %v, %v", dns.RcodeToString[r.Rcode], r.AuthenticatedData, r.Answer)
		}
	}
}
