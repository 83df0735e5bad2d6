package deviceid

import (
	"errors"
	"net"
	"reflect"
	"sync"
	"unsafe"

	"github.com/coredns/coredns/core/dnsserver"

	"github.com/miekg/dns"
)

// serverView is what the fast path needs to know of the server it runs beside, which
// dnsserver.Server does not export: read here, in the one place that depends on the
// server's fields (CoreDNS as pinned in go.mod; TestInspectServer fails when they
// change).
type serverView struct {
	local         net.Addr       // the UDP socket's address, its port chosen when :0
	zones         []string       // every zone the server serves
	blocks        map[string]int // server blocks by zone (more than one: views)
	proxyProtocol bool           // the server reads the PROXY protocol
	opcodes       bool           // a plugin accepts opcodes beyond QUERY and NOTIFY
}

// field is s's unexported field name, made readable.
func field(s *dnsserver.Server, name string) reflect.Value {
	v := reflect.ValueOf(s).Elem().FieldByName(name)
	if !v.IsValid() {
		return v
	}
	return reflect.NewAt(v.Type(), unsafe.Pointer(v.UnsafeAddr())).Elem()
}

// errNoSocketYet: the server has not started serving UDP yet (it does so in a
// goroutine of its own, maybe after the startup hooks ran).
var errNoSocketYet = errors.New("the server has no UDP socket yet")

func inspect(s *dnsserver.Server) (serverView, error) {
	servers, zones, policy, opcodes, m := field(s, "server"), field(s, "zones"), field(s, "connPolicy"), field(s, "allowedOpcodes"), field(s, "m")
	if !servers.IsValid() || servers.Type() != reflect.TypeFor[[2]*dns.Server]() ||
		!zones.IsValid() || zones.Kind() != reflect.Map || zones.Type().Key().Kind() != reflect.String || zones.Type().Elem().Kind() != reflect.Slice ||
		!policy.IsValid() || policy.Kind() != reflect.Func ||
		!opcodes.IsValid() || opcodes.Kind() != reflect.Map ||
		!m.IsValid() || m.Type() != reflect.TypeFor[sync.Mutex]() {
		return serverView{}, errors.New("this CoreDNS's server is not the one the fast path knows (see go.mod)")
	}
	mu := m.Addr().Interface().(*sync.Mutex) // ServePacket sets the UDP server under it
	mu.Lock()
	udp, _ := servers.Index(1).Interface().(*dns.Server)
	mu.Unlock()
	if udp == nil || udp.PacketConn == nil {
		return serverView{}, errNoSocketYet
	}
	v := serverView{local: udp.PacketConn.LocalAddr(), blocks: make(map[string]int),
		proxyProtocol: !policy.IsNil(), opcodes: opcodes.Len() > 0}
	for it := zones.MapRange(); it.Next(); {
		z := it.Key().String()
		v.zones = append(v.zones, z)
		v.blocks[z] = it.Value().Len()
	}
	return v, nil
}
