package test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
)

// The independent validators of the end-to-end tests: unbound, a validating
// resolver, with our zone as a stub zone; delv, BIND's validating lookup tool,
// querying our server directly; and Knot Resolver (kresd), forwarding to a
// non-validating unbound. Each trusts only the DS it is given.

// zoneKey is a generated key pair: its file base name, or its PKCS#11 URI for a key
// in SoftHSM, and its DS.
type zoneKey struct {
	base, uri string
	ds        *dns.DS
}

// genHSMZoneKey makes a KSK (ECDSA P-256) in the test's SoftHSM token.
func genHSMZoneKey(t testing.TB, h *testenv.HSM, object string) zoneKey {
	t.Helper()
	k, err := pkcs11key.Generate(h.URI(object), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dk, err := dnskey.FromECDSA(zone, k.Public().(*ecdsa.PublicKey), true)
	if err != nil {
		t.Fatal(err)
	}
	return zoneKey{uri: h.URI(object), ds: dk.ToDS(dns.SHA256)}
}

func genZoneKey(t testing.TB, dir string, alg uint8, sep bool) zoneKey {
	t.Helper()
	base, k, err := dnskey.Generate(dir, zone, alg, sep)
	if err != nil {
		t.Fatal(err)
	}
	return zoneKey{base: base, ds: k.ToDS(dns.SHA256)}
}

// dnsPort returns a loopback port free for both UDP and TCP: the validators reach
// CoreDNS over both on one port.
func dnsPort(t testing.TB) int {
	t.Helper()
	for range 20 {
		p := testenv.FreePort(t)
		if c, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			c.Close()
			return p
		}
	}
	t.Fatal("no free port for UDP and TCP")
	return 0
}

// signedCorefile serves the test zone on port over etcd at endpoint, signed with keys,
// with TTL 60.
func signedCorefile(port int, endpoint string, keys ...zoneKey) string {
	return signedCorefileTTL(port, endpoint, 60, keys...)
}

func signedCorefileTTL(port int, endpoint string, ttl int, keys ...zoneKey) string {
	return signedCorefileWith(port, endpoint, ttl, nil, keys...)
}

// signedCorefileWith is signedCorefileTTL with more lines in the deviceid block.
func signedCorefileWith(port int, endpoint string, ttl int, extra []string, keys ...zoneKey) string {
	lines := extra
	for _, k := range keys {
		if k.uri != "" {
			lines = append(lines, fmt.Sprintf("key pkcs11 %q", k.uri))
		} else {
			lines = append(lines, "key file "+k.base)
		}
	}
	return fmt.Sprintf(`iot.example:%d {
    bind 127.0.0.1
    deviceid {
        endpoint %s
        ns ns1.iot.example.
        ttl %d
        %s
    }
}`, port, endpoint, ttl, strings.Join(lines, "\n        "))
}

// startUnbound runs unbound on a free port with iot.example as a stub zone at
// 127.0.0.1@dnsPort, trusting the given DS records, and returns its address. Answers
// are cached for a second at most, so a change in the zone is seen at once.
func startUnbound(t testing.TB, port int, anchors ...*dns.DS) string {
	t.Helper()
	return startUnboundStubs(t, map[string][]int{zone: {port}}, 1, anchors...)
}

// startUnboundStubs runs unbound with stub zones (name → the loopback ports of its
// servers), trusting anchors; cacheMaxTTL 0 caches as the TTLs say. With no anchors
// it only iterates, judging nothing: the upstream of a validator that forwards.
func startUnboundStubs(t testing.TB, stubs map[string][]int, cacheMaxTTL int, anchors ...*dns.DS) string {
	t.Helper()
	dir := t.TempDir()
	listen := dnsPort(t)
	modules := "validator iterator"
	if len(anchors) == 0 {
		modules = "iterator"
	}
	var ta strings.Builder
	for _, ds := range anchors {
		fmt.Fprintf(&ta, "    trust-anchor: %q\n", fmt.Sprintf("%s DS %d %d %d %s", ds.Hdr.Name, ds.KeyTag, ds.Algorithm, ds.DigestType, ds.Digest))
	}
	conf := fmt.Sprintf(`server:
    interface: 127.0.0.1
    port: %d
    do-daemonize: no
    use-syslog: no
    logfile: ""
    username: ""
    chroot: ""
    directory: %q
    pidfile: ""
    do-not-query-localhost: no
    module-config: %q
    qname-minimisation: no
    val-log-level: 2
%s%sremote-control:
    control-enable: no
`, listen, dir, modules, cacheLimits(cacheMaxTTL), ta.String()+stubZones(stubs))
	confFile := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "unbound", dir, "unbound", "-d", "-c", confFile)
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	testenv.Eventually(t, "unbound answers", func() error {
		_, err := resolve(addr, "udp", zone, dns.TypeSOA)
		return err
	})
	return addr
}

// startKresd runs Knot Resolver on a free port, forwarding every query to the
// resolver at forwardTo (host:port) and validating the answers itself from anchors
// alone, not the root's, and returns its address. In forwarding mode kresd still
// validates, and asks its upstream for the DS as for any name: the upstream must
// iterate (a stub rule per zone would send the DS query to the child's servers).
func startKresd(t testing.TB, forwardTo string, anchors ...*dns.DS) string {
	t.Helper()
	dir := t.TempDir()
	listen := dnsPort(t)
	host, port, err := net.SplitHostPort(forwardTo)
	if err != nil {
		t.Fatal(err)
	}
	var ta strings.Builder
	for _, ds := range anchors {
		fmt.Fprintf(&ta, "trust_anchors.add('%s DS %d %d %d %s')\n", ds.Hdr.Name, ds.KeyTag, ds.Algorithm, ds.DigestType, ds.Digest)
	}
	// min_ttl 0: kresd keeps records 5 s at least by default, longer than the
	// rollover test's TTLs. No root to prime or trust: every query is forwarded.
	// bogus_log: a line per bogus answer, in the log printed on failure.
	conf := fmt.Sprintf(`net.listen('127.0.0.1', %d, { kind = 'dns' })
cache.open(10 * MB, 'lmdb://%s')
cache.min_ttl(0)
modules.unload('priming')
modules.load('bogus_log')
trust_anchors.remove('.')
%spolicy.add(policy.all(policy.FORWARD('%s@%s')))
`, listen, filepath.Join(dir, "cache"), ta.String(), host, port)
	confFile := filepath.Join(dir, "kresd.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "knot-resolver", dir, "kresd", "-n", "-c", confFile, dir)
	addr := fmt.Sprintf("127.0.0.1:%d", listen)
	testenv.Eventually(t, "kresd answers", func() error {
		_, err := resolve(addr, "udp", zone, dns.TypeSOA)
		return err
	})
	return addr
}

// startDaemon runs a daemon (from the Debian package pkg) in the foreground with its
// output in dir, stops it when the test ends, and prints the output's tail then if
// the test failed.
func startDaemon(t testing.TB, pkg, dir, name string, args ...string) {
	t.Helper()
	logFile, err := os.Create(filepath.Join(dir, filepath.Base(name)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s (Debian package %s): %v", name, pkg, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("%s %v log (tail):\n%s", name, args, tail(string(b), 100))
		}
	})
}

func cacheLimits(maxTTL int) string {
	if maxTTL == 0 {
		return ""
	}
	return fmt.Sprintf("    cache-max-ttl: %d\n    cache-max-negative-ttl: %d\n", maxTTL, maxTTL)
}

func stubZones(stubs map[string][]int) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(stubs)) {
		fmt.Fprintf(&b, "stub-zone:\n    name: %q\n", name)
		for _, p := range stubs[name] {
			fmt.Fprintf(&b, "    stub-addr: 127.0.0.1@%d\n", p)
		}
	}
	return b.String()
}

// resolve asks the server at addr with DO set and a 1232-byte buffer, and asks again
// over TCP when the answer is truncated, as a stub resolver does.
func resolve(addr, network, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, true)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err == nil && r.Truncated && network == "udp" {
		return resolve(addr, "tcp", name, qtype)
	}
	return r, err
}

// delv runs delv against our server with the DS as its only trust anchor and returns
// its output.
func delv(t testing.TB, port int, ds *dns.DS, name string, qtype uint16) string {
	t.Helper()
	anchors := filepath.Join(t.TempDir(), "anchors.conf")
	content := fmt.Sprintf("trust-anchors {\n  %s static-ds %d %d %d \"%s\";\n};\n", ds.Hdr.Name, ds.KeyTag, ds.Algorithm, ds.DigestType, ds.Digest)
	if err := os.WriteFile(anchors, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("delv", "@127.0.0.1", "-p", fmt.Sprint(port), "-a", anchors, "+root="+zone,
		name, dns.TypeToString[qtype]).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "resolution failed") {
		t.Fatalf("delv %s %s (Debian package bind9-dnsutils): %v\n%s", name, dns.TypeToString[qtype], err, out)
	}
	return string(out)
}

// signedZone runs etcd and CoreDNS serving the zone signed by a new KSK (a CSK) with
// the zone TTL given, and returns them, the key and CoreDNS's port.
func signedZone(t testing.TB, ttl int) (*testenv.Etcd, *testenv.CoreDNS, zoneKey, int) {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	ksk := genZoneKey(t, t.TempDir(), dns.ECDSAP256SHA256, true)
	port := dnsPort(t)
	c := testenv.StartCoreDNS(t, signedCorefileTTL(port, etcd.URL(), ttl, ksk))
	waitLoaded(t, c)
	return etcd, c, ksk, port
}
