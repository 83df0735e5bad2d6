// Package test holds deviceid's end-to-end tests: a real embedded etcd, the real
// CoreDNS server with the plugins of cmd/coredns, and DNS queries over UDP and TCP.
package test

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/deviceid/deviceid/cmd/coredns/plugins" // the server users run
	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const zone = "iot.example."

// The signer logs every enrollment; the tests and benchmarks here make thousands.
func init() { slog.SetDefault(slog.New(slog.DiscardHandler)) }

// testbed starts an etcd and returns it with a client, and a CA for device certificates.
func testbed(t testing.TB) (*testenv.Etcd, *clientv3.Client, *testenv.CA) {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	return etcd, etcd.Client(), testenv.NewTestCA(t, "deviceid test CA")
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

func newDevice(t testing.TB, ca *testenv.CA, name string, notAfter time.Time) *device {
	t.Helper()
	key, err := testenv.NewDeviceKey()
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
// documented schema (docs/design.md), not from this project's Go types.
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

func deviceKey(name string) string { return "/deviceid/iot.example/device/" + name }

// proxy forwards TCP connections to a target until cut, which closes every
// connection and refuses new ones until restored: an etcd that is unreachable for
// the server while it still runs for everyone else.
type proxy struct {
	target string
	l      net.Listener
	mu     sync.Mutex
	open   bool
	conns  []net.Conn
	read   atomic.Int64 // bytes from the target to the clients
}

// counting counts the bytes written through it.
type counting struct {
	w io.Writer
	n *atomic.Int64
}

func (c counting) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
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
		go func() { io.Copy(counting{c, &p.read}, u); c.Close() }()
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

// prober asks queries in the background, a steady stream and not a flood, counting
// them and keeping what failed, until stopped.
type prober struct {
	asked    atomic.Int64
	mu       sync.Mutex
	failures []string
	stop     chan struct{}
	wg       sync.WaitGroup
}

// startProber calls ask with 0, 1, 2, ... every pause; ask returns how many queries it
// sent and a description of each that failed.
func startProber(pause time.Duration, ask func(i int) (int, []string)) *prober {
	p := &prober{stop: make(chan struct{})}
	p.wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			n, failed := ask(i)
			p.asked.Add(int64(n))
			p.mu.Lock()
			p.failures = append(p.failures, failed...)
			p.mu.Unlock()
			time.Sleep(pause)
		}
	})
	return p
}

// done stops the prober and returns how many queries it asked and what failed.
func (p *prober) done() (int64, []string) {
	close(p.stop)
	p.wg.Wait()
	return p.asked.Load(), p.failures
}
