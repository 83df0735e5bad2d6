// Package test holds deviceid's end-to-end tests: a real embedded etcd, the real
// CoreDNS server with the plugins of cmd/coredns, and DNS queries over UDP and TCP.
package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deviceid/deviceid/internal/devpki"
	"github.com/deviceid/deviceid/internal/embedetcd"
	_ "github.com/deviceid/deviceid/internal/plugins" // the server users run

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

const zone = "iot.example."

// The signer logs every enrollment; the tests and benchmarks here make thousands.
func init() { slog.SetDefault(slog.New(slog.DiscardHandler)) }

// pollTimeout bounds every wait for a change to show; generous for a loaded CI machine.
const pollTimeout = 20 * time.Second

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	p, err := embedetcd.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// etcdServer is an embedded etcd that a test can stop and start again on the same
// ports and data.
type etcdServer struct {
	t   testing.TB
	cfg embedetcd.Config
	e   *embed.Etcd
}

func startEtcd(t testing.TB) *etcdServer {
	t.Helper()
	s := &etcdServer{t: t, cfg: embedetcd.Config{
		Dir:       t.TempDir(),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
	}}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *etcdServer) start() {
	s.t.Helper()
	e, err := embedetcd.Start(s.cfg)
	if err != nil {
		s.t.Fatalf("starting etcd: %v", err)
	}
	s.e = e
}

func (s *etcdServer) stop() {
	if s.e != nil {
		s.e.Close()
		s.e = nil
	}
}

// client returns an etcd client, as a provisioning system would use.
func (s *etcdServer) client() *clientv3.Client {
	s.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.cfg.ClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { cli.Close() })
	return cli
}

// testbed starts an etcd and returns it with a client, and a CA for device certificates.
func testbed(t testing.TB) (*etcdServer, *clientv3.Client, *devpki.CA) {
	t.Helper()
	etcd := startEtcd(t)
	ca, err := devpki.NewCA("deviceid test CA")
	if err != nil {
		t.Fatal(err)
	}
	return etcd, etcd.client(), ca
}

// coreDNS is a running CoreDNS server.
type coreDNS struct {
	udp, tcp string
	inst     *caddy.Instance
}

// startCoreDNS starts CoreDNS with the given Corefile and stops it when the test ends.
func startCoreDNS(t testing.TB, corefile string) *coreDNS {
	t.Helper()
	caddy.Quiet = true
	dnsserver.Quiet = true
	i, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("starting CoreDNS: %v", err)
	}
	srv := i.Servers()[0]
	c := &coreDNS{udp: srv.LocalAddr().String(), tcp: srv.Addr().String(), inst: i}
	t.Cleanup(func() { c.inst.ShutdownCallbacks(); c.inst.Stop() })
	return c
}

// reload replaces the server's configuration as the reload plugin does: the new
// instance starts on the same listeners while the old one still serves.
func (c *coreDNS) reload(t testing.TB, corefile string) {
	t.Helper()
	i, err := c.inst.Restart(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("reloading CoreDNS: %v", err)
	}
	c.inst = i
}

// exchange sends one query over net ("udp" or "tcp") and returns the reply.
func (c *coreDNS) exchange(t testing.TB, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, false)
	addr := c.udp
	if network == "tcp" {
		addr = c.tcp
	}
	client := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := client.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// query sends one query over UDP.
func (c *coreDNS) query(t testing.TB, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return c.exchange(t, "udp", name, qtype)
}

// eventually polls f until it returns nil or pollTimeout passes.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %s: %v", what, pollTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tlsaSet returns the TLSA records of an answer as "usage selector matching data" strings.
func tlsaSet(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if t, ok := rr.(*dns.TLSA); ok {
			out = append(out, fmt.Sprintf("%d %d %d %s", t.Usage, t.Selector, t.MatchingType, t.Certificate))
		}
	}
	return out
}

// device is a device key with a certificate from the test CA.
type device struct {
	name string
	key  *ecdsa.PrivateKey
	cert []byte // DER
}

func newDevice(t testing.TB, ca *devpki.CA, name string, notAfter time.Time) *device {
	t.Helper()
	key, err := devpki.NewDeviceKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := ca.Issue(name+"._device."+strings.TrimSuffix(zone, "."), key.Public(), notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return &device{name: name, key: key, cert: der}
}

func (d *device) spki() []byte {
	c, err := x509.ParseCertificate(d.cert)
	if err != nil {
		panic(err)
	}
	return c.RawSubjectPublicKeyInfo
}

// record returns the TLSA rdata strings the device's certificate should publish.
func (d *device) ee() string {
	sum := sha256.Sum256(d.spki())
	return "3 1 1 " + hex.EncodeToString(sum[:])
}
func (d *device) discovery() string { return "4 0 0 " + hex.EncodeToString(d.cert) }
func (d *device) revoked() string {
	sum := sha256.Sum256(d.spki())
	return "255 1 1 " + hex.EncodeToString(sum[:])
}

// credentialJSON writes one credential as a provisioning system would, from the
// documented schema (DESIGN.md §3), not from this project's Go types.
func credentialJSON(d *device, status string) string {
	revokedAt := "null"
	if status == "revoked" {
		revokedAt = `"2026-11-01T00:00:00Z"`
	}
	return fmt.Sprintf(`{"cert": %q, "status": %q, "revoked_at": %s, "reason": ""}`,
		base64.StdEncoding.EncodeToString(d.cert), status, revokedAt)
}

func deviceJSON(credentials ...string) string {
	return fmt.Sprintf(`{"version": 1, "credentials": [%s]}`, strings.Join(credentials, ", "))
}

func put(t testing.TB, cli *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func deviceKey(name string) string { return "/deviceid/iot.example/device/" + name }

// metric returns the value of the first sample of a Prometheus metric whose line
// starts with prefix (name and labels), scraped over HTTP from addr.
func metric(addr, prefix string) (string, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			return f[len(f)-1], nil
		}
	}
	return "", fmt.Errorf("no metric %s", prefix)
}

// proxy forwards TCP connections to a target until cut, which closes every
// connection and refuses new ones until restored: an etcd that is unreachable for
// the server while it still runs for everyone else.
type proxy struct {
	target string
	l      net.Listener
	mu     sync.Mutex
	open   bool
	conns  []net.Conn
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{target: target, l: l, open: true}
	t.Cleanup(func() { l.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if !p.open {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go func() { io.Copy(u, c); u.Close() }()
		go func() { io.Copy(c, u); c.Close() }()
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = false
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.open = true
	p.mu.Unlock()
}

func tlsKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	return tls.LoadX509KeyPair(certFile, keyFile)
}

func tlsConfig(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots}
}
