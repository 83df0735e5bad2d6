package testenv

import (
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
)

// CoreDNS is a running CoreDNS server in this process. The test package must
// blank-import cmd/coredns/plugins, which installs the plugin list of bin/coredns.
type CoreDNS struct {
	UDP, TCP string // listening addresses
	inst     *caddy.Instance
}

// StartCoreDNS starts CoreDNS with a Corefile and stops it when the test ends.
func StartCoreDNS(t testing.TB, corefile string) *CoreDNS {
	t.Helper()
	c, err := TryStartCoreDNS(t, corefile)
	if err != nil {
		t.Fatalf("starting CoreDNS: %v", err)
	}
	return c
}

// TryStartCoreDNS is StartCoreDNS for a Corefile that may be refused.
func TryStartCoreDNS(t testing.TB, corefile string) (*CoreDNS, error) {
	caddy.Quiet = true
	dnsserver.Quiet = true
	i, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		return nil, err
	}
	srv := i.Servers()[0]
	c := &CoreDNS{UDP: srv.LocalAddr().String(), TCP: srv.Addr().String(), inst: i}
	t.Cleanup(c.Stop)
	return c, nil
}

// Stop stops the server before the test ends (a replica that goes down).
func (c *CoreDNS) Stop() {
	c.inst.ShutdownCallbacks()
	c.inst.Stop()
}

// Reload replaces the server's configuration as the reload plugin does: the new
// instance starts on the same listeners while the old one still serves.
func (c *CoreDNS) Reload(t testing.TB, corefile string) {
	t.Helper()
	if err := c.TryReload(corefile); err != nil {
		t.Fatalf("reloading CoreDNS: %v", err)
	}
}

// TryReload is Reload for a Corefile that may be refused: then the old
// configuration goes on serving.
func (c *CoreDNS) TryReload(corefile string) error {
	i, err := c.inst.Restart(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		return err
	}
	c.inst = i
	return nil
}

// Exchange sends one query over network ("udp" or "tcp") and returns the reply.
func (c *CoreDNS) Exchange(t testing.TB, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(4096, false)
	addr := c.UDP
	if network == "tcp" {
		addr = c.TCP
	}
	client := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := client.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// Query sends one query over UDP.
func (c *CoreDNS) Query(t testing.TB, name string, qtype uint16) *dns.Msg {
	t.Helper()
	return c.Exchange(t, "udp", name, qtype)
}
