package deviceid

import (
	"errors"
	"net"
	"slices"
	"testing"

	"github.com/deviceid/deviceid/internal/testenv"

	"github.com/coredns/coredns/core/dnsserver"
)

// TestInspectServer: what the fast path reads of a CoreDNS server that it does not
// export is there in this CoreDNS (go.mod): the UDP socket once served, every zone and
// its blocks, no PROXY protocol, no extra opcodes. A CoreDNS whose server changed
// fails here, not at a user's startup.
func TestInspectServer(t *testing.T) {
	iot := &dnsserver.Config{Zone: "iot.example.", Transport: "dns"}
	sub := &dnsserver.Config{Zone: "sub.iot.example.", Transport: "dns"}
	s, err := dnsserver.NewServer("dns://127.0.0.1:0", []*dnsserver.Config{iot, sub})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inspect(s); !errors.Is(err, errNoSocketYet) {
		t.Fatalf("before the server serves UDP: %v, want errNoSocketYet", err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServePacket(pc)
	t.Cleanup(func() { s.Stop() })
	var v serverView
	testenv.Eventually(t, "the server serves UDP", func() error {
		v, err = inspect(s)
		return err
	})
	slices.Sort(v.zones)
	if v.local.String() != pc.LocalAddr().String() || !slices.Equal(v.zones, []string{"iot.example.", "sub.iot.example."}) ||
		v.blocks["iot.example."] != 1 || v.proxyProtocol || v.opcodes {
		t.Errorf("inspect: %+v, want the socket %s and both zones in one block each", v, pc.LocalAddr())
	}
}
