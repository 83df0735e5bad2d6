package testenv

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ServeDNS serves handler over UDP and TCP on one free loopback port until the test
// ends, and returns its address.
func ServeDNS(t testing.TB, handler dns.Handler) string {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil { // the port is taken over TCP: another
			pc.Close()
			continue
		}
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: l, Handler: handler}} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go srv.ActivateAndServe()
			<-started
			t.Cleanup(func() { srv.Shutdown() })
		}
		return pc.LocalAddr().String()
	}
	t.Fatal("no free loopback port for both UDP and TCP")
	return ""
}

// RelayDNS serves a DNS relay to upstream on a free loopback port and returns its
// address: each query goes upstream over the network it came on, and the answer back
// after rewrite changes it (nil: as it is); a rewrite that returns false drops it.
func RelayDNS(t testing.TB, upstream string, rewrite func(*dns.Msg) bool) string {
	t.Helper()
	return ServeDNS(t, dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		network := "udp"
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			network = "tcp"
		}
		resp, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(q, upstream)
		if err != nil || rewrite != nil && !rewrite(resp) {
			return
		}
		w.WriteMsg(resp)
	}))
}

// StretchTTLs writes the largest TTL RFC 2181 allows into every record of m but its
// OPT, as an on-path attacker can: the TTL in a record's header is not signed.
func StretchTTLs(m *dns.Msg) {
	for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range section {
			if rr.Header().Rrtype != dns.TypeOPT {
				rr.Header().Ttl = 1<<31 - 1
			}
		}
	}
}

// PackQuery packs a query with ID 0x1234 for name and qtype with the changes of edit,
// as a client would (miekg/dns, names compressed where they can be).
func PackQuery(t testing.TB, name string, qtype uint16, edit func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	m.Compress = true
	if edit != nil {
		edit(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing %v: %v", m, err)
	}
	return b
}

// WithEDNS is an edit of PackQuery adding an OPT of size with DO and CO, and options.
func WithEDNS(size uint16, do, co bool, opts ...dns.EDNS0) func(*dns.Msg) {
	return func(m *dns.Msg) {
		m.SetEdns0(size, do)
		o := m.IsEdns0()
		o.SetCo(co)
		o.Option = append(o.Option, opts...)
	}
}
