package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/testenv"
	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/keymgr"
	"github.com/deviceid/deviceid/signer/registry"

	"github.com/miekg/dns"
)

// parent is BIND's named serving example., signed (dnssec-policy), with iot.example
// delegated to the replicas, and updates allowed by TSIG: the registry above ours.
type parent struct {
	port   int
	dir    string
	tsig   string // name:secret for nsupdate -y
	anchor *dns.DS
}

// startParent runs named for example. with iot.example. delegated, and its DS for
// ksk (the zone's first) in place.
func startParent(t *testing.T, dsTTL int, first *dns.DS) *parent {
	t.Helper()
	p := &parent{port: dnsPort(t), dir: t.TempDir()}
	secret := make([]byte, 32)
	rand.Read(secret)
	p.tsig = "hmac-sha256:parent-update:" + base64.StdEncoding.EncodeToString(secret)
	conf := fmt.Sprintf(`options {
    directory %q;
    listen-on port %d { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    pid-file none;
    notify no;
    dnssec-validation no;
};
key "parent-update" { algorithm hmac-sha256; secret %q; };
controls { };
zone "example" {
    type primary;
    file "example.db";
    dnssec-policy default;
    allow-update { key "parent-update"; };
};
`, p.dir, p.port, base64.StdEncoding.EncodeToString(secret))
	db := fmt.Sprintf(`$TTL 60
example. IN SOA ns.example. hostmaster.example. 1 60 60 600 1
example. IN NS ns.example.
ns.example. IN A 127.0.0.1
iot.example. IN NS ns1.iot.example.
ns1.iot.example. IN A 127.0.0.1
iot.example. %d IN DS %d %d %d %s
`, dsTTL, first.KeyTag, first.Algorithm, first.DigestType, first.Digest)
	testenv.WriteFile(t, filepath.Join(p.dir, "named.conf"), []byte(conf))
	testenv.WriteFile(t, filepath.Join(p.dir, "example.db"), []byte(db))
	startDaemon(t, "bind9", p.dir, "named", "-g", "-c", filepath.Join(p.dir, "named.conf"))
	addr := fmt.Sprintf("127.0.0.1:%d", p.port)
	testenv.Eventually(t, "named signs example.", func() error {
		m, err := resolve(addr, "tcp", "example.", dns.TypeDNSKEY)
		if err != nil {
			return err
		}
		for _, rr := range m.Answer {
			if k, ok := rr.(*dns.DNSKEY); ok && k.Flags&dns.SEP != 0 {
				p.anchor = k.ToDS(dns.SHA256)
			}
		}
		if p.anchor == nil || len(m.Answer) < 2 {
			return fmt.Errorf("no signed DNSKEY yet: %v", m.Answer)
		}
		return nil
	})
	return p
}

func (p *parent) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// ds returns the DS set the parent serves for the zone.
func (p *parent) ds(t *testing.T) []*dns.DS {
	m, err := resolve(p.addr(), "tcp", zone, dns.TypeDS)
	if err != nil {
		t.Errorf("parent DS: %v", err)
		return nil
	}
	var out []*dns.DS
	for _, rr := range m.Answer {
		if d, ok := rr.(*dns.DS); ok {
			out = append(out, d)
		}
	}
	return out
}

// scan is what a registry's CDS scanner does, with BIND's own tools: dnssec-cds reads
// the child's DNSKEY, CDS and CDNSKEY (with their RRSIGs, validated against the DS the
// parent serves now) and writes the nsupdate script that makes the DS set follow the
// CDS; nsupdate applies it with TSIG. It reports whether the DS set changed.
func (p *parent) scan(t *testing.T, child string, dsTTL int) (bool, error) {
	dir := t.TempDir()
	var ds strings.Builder
	for _, d := range p.ds(t) {
		ds.WriteString(d.String() + "\n")
	}
	dsset := filepath.Join(dir, "dsset-iot.example.")
	if err := os.WriteFile(dsset, []byte(ds.String()), 0o600); err != nil {
		return false, err
	}
	var childRRs strings.Builder
	for _, qt := range []uint16{dns.TypeDNSKEY, dns.TypeCDS, dns.TypeCDNSKEY} {
		m, err := resolve(child, "tcp", zone, qt)
		if err != nil {
			return false, err
		}
		for _, rr := range m.Answer {
			childRRs.WriteString(rr.String() + "\n")
		}
	}
	childFile := filepath.Join(dir, "child")
	if err := os.WriteFile(childFile, []byte(childRRs.String()), 0o600); err != nil {
		return false, err
	}
	// -s -7200: the plugin dates its signatures an hour back, for slow clocks.
	out, err := exec.Command("dnssec-cds", "-u", "-s", "-7200", "-T", fmt.Sprint(dsTTL), "-d", dsset, "-f", childFile, zone).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("dnssec-cds: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "update") {
		return false, nil // the DS set is what the CDS asks for
	}
	script := fmt.Sprintf("server 127.0.0.1 %d\nzone example.\n%ssend\n", p.port, out)
	cmd := exec.Command("nsupdate", "-y", p.tsig)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return false, fmt.Errorf("nsupdate: %v: %s\n%s", err, out, script)
	}
	return true, nil
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestRolloverWithParent: hands-free keys from a zone's first DS through a ZSK and a
// KSK rollover, then an algorithm rollover (ECDSA P-256 to Ed25519), with a real
// parent (BIND named, the DS kept by dnssec-cds and nsupdate as a registry's scanner
// would), two CoreDNS replicas following the keys in etcd (one cut off from etcd
// during a step), and two validators trusting only the parent's anchor throughout:
// unbound, and Knot Resolver. No answer is bogus, each rollover ends unattended, and
// no key step comes before its wait.
func TestRolloverWithParent(t *testing.T) {
	// Seconds: the rollovers take a minute. The propagation delay covers the second
	// replica's cut-off (3 s, and its watch's catch-up after): a replica cut off for
	// longer than the policy's propagation delay may have served a DNSKEY RRset that
	// validators still hold when the others sign with a key not in it.
	const ttl, dsTTL, propagation, cutOff = 2, 3, 6, 3
	policy := keymgr.Policy{Algorithm: dns.ECDSAP256SHA256, ZSKLifetime: keymgr.Duration(35 * time.Second), KSKLifetime: keymgr.Duration(35 * time.Second),
		DNSKEYTTL: keymgr.Duration(ttl * time.Second), ZoneMaxTTL: keymgr.Duration(ttl * time.Second), DSTTL: keymgr.Duration(dsTTL * time.Second),
		Propagation: keymgr.Duration(propagation * time.Second)}
	if err := policy.Validate(); err != nil {
		t.Fatal(err)
	}
	etcd := testenv.StartEtcd(t)
	dir := t.TempDir()
	kekFile := filepath.Join(dir, "kek")
	k, err := kek.Generate(kekFile)
	if err != nil {
		t.Fatal(err)
	}
	reg := &registry.Registry{Client: etcd.Client(), Prefix: "/deviceid", Zone: zone}
	operator := registry.OperatorActor("test")
	ctx := t.Context()

	// The zone's first keys, made by the manager before the replicas start.
	manager := &keymgr.Manager{Registry: reg, KEK: k, Actor: registry.OperatorActor("keymgr")}
	settings, _ := json.Marshal(keymgr.Settings{Policy: policy})
	if err := reg.PutKeySettings(ctx, operator, 0, settings, "enable"); err != nil {
		t.Fatal(err)
	}
	if _, err := manager.Step(ctx, nil, nil); err != nil {
		t.Fatal(err)
	}
	keys, _ := reg.ZoneKeys(ctx)
	var firstDS *dns.DS
	first := map[string]bool{} // published and signing at once: no wait to check
	for _, zk := range keys {
		first[zk.ID] = true
		if zk.Key.SEP() {
			dk, _ := zk.Key.PublicKey(zone)
			firstDS = dk.ToDS(dns.SHA256)
		}
	}
	p := startParent(t, dsTTL, firstDS)
	settings, _ = json.Marshal(keymgr.Settings{Policy: policy, ParentServers: []string{p.addr()}})
	_, rev, _ := reg.KeySettings(ctx)
	if err := reg.PutKeySettings(ctx, operator, rev, settings, "parents"); err != nil {
		t.Fatal(err)
	}

	// Two replicas; the second reaches etcd through a proxy the test cuts.
	proxy := startProxy(t, strings.TrimPrefix(etcd.URL(), "http://"))
	var replicas []*testenv.CoreDNS
	var ports []int
	for _, endpoint := range []string{etcd.URL(), "http://" + proxy.addr()} {
		port := dnsPort(t)
		c := testenv.StartCoreDNS(t, fmt.Sprintf(`iot.example:%d {
    bind 127.0.0.1
    deviceid {
        endpoint %s
        ns ns1.iot.example.
        ttl %d
        keys etcd
        kek file %s
    }
}`, port, endpoint, ttl, kekFile))
		waitLoaded(t, c)
		replicas, ports = append(replicas, c), append(ports, port)
	}
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(devKey.Public())
	dev, _ := json.Marshal(&record.Device{Version: 1, Credentials: []record.Credential{{SPKI: spki, Status: record.StatusActive}}})
	testenv.Put(t, reg.Client, record.DeviceKey("/deviceid", zone, "sensor7"), string(dev))
	// unbound and kresd validate from the parent's trust anchor, with no cap on their
	// caches; kresd through a non-validating unbound, which asks the parent for the DS.
	stubs := map[string][]int{"example.": {p.port}, zone: ports}
	unbound := startUnboundStubs(t, stubs, 0, p.anchor)
	upstream := startUnboundStubs(t, stubs, 0)
	kresd := startKresd(t, upstream, p.anchor)
	validators := []struct{ name, addr string }{{"unbound", unbound}, {"kresd", kresd}}
	for _, v := range validators {
		testenv.Eventually(t, "the chain validates at "+v.name, func() error {
			m, err := resolve(v.addr, "udp", "sensor7._device."+zone, dns.TypeTLSA)
			if err != nil || m.Rcode != dns.RcodeSuccess || !m.AuthenticatedData {
				return fmt.Errorf("%v %v", m, err)
			}
			return nil
		})
	}
	// kresd's AD is its own: from a wrong anchor, the same chain is bogus.
	wrong := *p.anchor
	wrong.Digest = strings.Repeat("00", 32)
	m, err := resolve(startKresd(t, upstream, &wrong), "udp", "sensor7._device."+zone, dns.TypeTLSA)
	if err != nil || m.Rcode != dns.RcodeServerFailure || m.IsEdns0() == nil || !slices.ContainsFunc(m.IsEdns0().Option, func(o dns.EDNS0) bool {
		e, ok := o.(*dns.EDNS0_EDE)
		return ok && e.InfoCode == dns.ExtendedErrorCodeDNSBogus
	}) {
		t.Fatalf("kresd trusting a wrong DS answered %v %v, want SERVFAIL (DNSSEC Bogus)", m, err)
	}

	// Validated queries all along, at both validators, and the scanner at the parent.
	probe := startProber(50*time.Millisecond, func(i int) (int, []string) {
		var failed []string
		for _, v := range validators {
			for _, q := range []struct {
				name string
				t    uint16
			}{{"sensor7._device." + zone, dns.TypeTLSA}, {zone, dns.TypeDNSKEY}, {"nx._device." + zone, dns.TypeTLSA}} {
				m, err := resolve(v.addr, "udp", q.name, q.t)
				if err != nil || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) || !m.AuthenticatedData {
					failed = append(failed, fmt.Sprintf("%s %s %s %s: %v %v", time.Now().Format("15:04:05.000"), v.name, q.name, dns.TypeToString[q.t], m, err))
				}
			}
		}
		return 3 * len(validators), failed
	})
	// Beside the scanner, every key's last timeline is noted: the checks at the end
	// need the old keys', deleted by then.
	seen := map[string]record.ZoneKey{}
	scanCtx, stopScan := context.WithCancel(ctx)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		for scanCtx.Err() == nil {
			if _, err := p.scan(t, replicas[0].UDP, dsTTL); err != nil {
				t.Logf("scanner: %v", err)
			}
			keys, _ := reg.ZoneKeys(scanCtx)
			for _, zk := range keys {
				if zk.Key != nil {
					seen[zk.ID] = *zk.Key
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	mctx, stopManager := context.WithCancel(ctx)
	managed := make(chan struct{})
	go func() { manager.Run(mctx, "test", 250*time.Millisecond, 5); close(managed) }()

	// The second replica is cut off from etcd as the first ZSK rollover begins: it
	// learns of the new ZSK when it is back, within the propagation delay.
	testenv.Within(t, 2*policy.ZSKLifetime.D(), "the first ZSK rollover begins", func() error {
		keys, err := reg.ZoneKeys(ctx)
		for _, zk := range keys {
			if !first[zk.ID] && zk.Key != nil && zk.Key.Role == record.RoleZSK {
				return nil
			}
		}
		return fmt.Errorf("no new ZSK yet (%v)", err)
	})
	cut := time.Now()
	proxy.cut()
	time.Sleep(cutOff * time.Second)
	proxy.restore()
	t.Logf("the second replica was cut off from etcd from %s to %s", cut.Format("15:04:05.000"), time.Now().Format("15:04:05.000"))

	// Both rollovers end: the first keys are gone, their successors sign.
	deleted := func() int {
		entries, _, _ := reg.Audit(ctx, operator, registry.AuditFilter{Operation: "key.delete"})
		return len(entries)
	}
	testenv.Within(t, 2*policy.KSKLifetime.D(), "both first keys deleted after their rollovers", func() error {
		if n := deleted(); n < 2 {
			return fmt.Errorf("%d keys deleted", n)
		}
		return nil
	})

	// Then the algorithm rollover, P-256 to Ed25519: the P-256 keys that sign now are
	// the old ones.
	ed25519 := func(k *record.ZoneKey) bool {
		dk, err := k.PublicKey(zone)
		return err == nil && dk.Algorithm == dns.ED25519
	}
	keys, _ = reg.ZoneKeys(ctx)
	old := map[string]bool{}
	for _, zk := range keys {
		if tl := zk.Key.Timeline; tl.Active != nil && tl.Retire == nil {
			old[zk.ID] = true
		}
	}
	deletedBefore := deleted()
	// No lifetime rollovers after this one: the test ends with it.
	policy.Algorithm, policy.ZSKLifetime, policy.KSKLifetime = dns.ED25519, 0, 0
	settings, _ = json.Marshal(keymgr.Settings{Policy: policy, ParentServers: []string{p.addr()}})
	_, rev, _ = reg.KeySettings(ctx)
	if err := reg.PutKeySettings(ctx, operator, rev, settings, "algorithm"); err != nil {
		t.Fatal(err)
	}
	// newDSAlone: nil once the parent serves the Ed25519 KSK's DS alone.
	newDSAlone := func() error {
		keys, err := reg.ZoneKeys(ctx)
		if err != nil {
			return err
		}
		var want *dns.DS
		for _, zk := range keys {
			if zk.Key.SEP() && ed25519(zk.Key) {
				dk, _ := zk.Key.PublicKey(zone)
				want = dk.ToDS(dns.SHA256)
			}
		}
		if ds := p.ds(t); want == nil || len(ds) != 1 || ds[0].KeyTag != want.KeyTag || ds[0].Algorithm != want.Algorithm || !strings.EqualFold(ds[0].Digest, want.Digest) {
			return fmt.Errorf("the parent serves %v, want %v alone", ds, want)
		}
		return nil
	}
	testenv.Within(t, time.Minute, "the parent serves the Ed25519 KSK's DS alone", newDSAlone)
	testenv.Within(t, time.Minute, "the P-256 keys deleted after the algorithm rollover", func() error {
		keys, err := reg.ZoneKeys(ctx)
		if err != nil {
			return err
		}
		for _, zk := range keys {
			if !ed25519(zk.Key) {
				return fmt.Errorf("key %s is not Ed25519", zk.ID)
			}
		}
		if n := deleted() - deletedBefore; n < len(old) {
			return fmt.Errorf("%d of the %d old keys deleted", n, len(old))
		}
		return newDSAlone()
	})
	stopManager()
	<-managed
	stopScan()
	<-scanned
	asked, failures := probe.done()
	if len(failures) > 0 {
		t.Errorf("%d of %d validated answers failed, e.g. %v", len(failures), asked, failures[:min(5, len(failures))])
	}
	// No step before its wait: every key but the zone's first signed only after its
	// DNSKEY had been published for the pre-publication interval; a double-DS KSK was
	// published only after its DS had been served for the DS TTL; and the old
	// algorithm's keys stopped signing only after the new KSK's DS had been.
	entries, _, _ := reg.Audit(ctx, operator, registry.AuditFilter{})
	var steps []string
	for _, e := range entries {
		if strings.HasPrefix(e.Operation, "key.") {
			steps = append(steps, e.Time.Format("15:04:05")+" "+e.Operation+" "+e.Detail)
		}
	}
	t.Logf("key steps:\n%s", strings.Join(steps, "\n"))
	keys, _ = reg.ZoneKeys(ctx)
	var newDSSeen *time.Time
	for _, zk := range keys {
		seen[zk.ID] = *zk.Key
		if zk.Key.SEP() && zk.Key.Timeline.Publish != nil {
			newDSSeen = zk.Key.Timeline.DSSeen
		}
	}
	for id, k := range seen {
		tl := k.Timeline
		if first[id] || tl.Active == nil || tl.Publish == nil {
			continue
		}
		if tl.Active.Sub(*tl.Publish) < policy.DNSKEYTTL.D() {
			t.Errorf("key %s signs %s after its publication", id, tl.Active.Sub(*tl.Publish))
		}
		if k.SEP() && tl.Publish.After(tl.Created) && (tl.DSSeen == nil || tl.Publish.Sub(*tl.DSSeen) < policy.DSTTL.D()) {
			t.Errorf("KSK %s published before its DS had been served for the DS TTL (DS seen %v, published %v)", id, tl.DSSeen, tl.Publish)
		}
	}
	for id := range old {
		retire := seen[id].Timeline.Retire
		switch {
		case newDSSeen == nil:
			t.Errorf("the Ed25519 KSK has no DS seen")
		case retire == nil:
			t.Errorf("old key %s not seen retiring", id)
		case retire.Sub(*newDSSeen) < policy.DSTTL.D():
			t.Errorf("old key %s stops signing %s after the new DS was seen, before the DS TTL", id, retire.Sub(*newDSSeen))
		}
	}
	if err := newDSAlone(); err != nil {
		t.Error(err)
	}
}
