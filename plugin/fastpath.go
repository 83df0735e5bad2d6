package deviceid

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// The fast path (the fastpath option) answers, on UDP sockets of its own beside the
// server's (SO_REUSEPORT, the kernel steered to them), the queries whose answers the
// compact index holds ready: it reads and writes packets in batches and answers each
// with a lookup and a copy, without the server's goroutine, unpacking and plugin chain
// per query. Every packet it does not answer goes to the server's chain through a DNS
// server of the miekg/dns package reading from the fast path, as if the server had
// read it: the plugins before deviceid, log and prometheus among them, see it as usual.

// socketWait bounds how long the fast path waits for the server's UDP sockets.
const socketWait = 5 * time.Second

// fastBatch is how many packets one system call reads or writes.
const fastBatch = 64

// handOverQueue bounds the packets waiting for the chain per address; beyond it they
// are dropped, as a full socket buffer drops them.
const handOverQueue = 1024

// fastAllowed are the plugins a block with the fast path may hold: the ones that do not
// need to see every query (the fast path's answers do not pass them), or see only the
// queries the fast path hands over (nsid: queries with the NSID option; any: ANY;
// chaos: class CH).
var fastAllowed = []string{"any", "cancel", "chaos", "deviceid", "errors", "file", "metadata", "nsid", "prometheus", "whoami"}

// fastClaims are the addresses with a fast path in the configuration being set up (a
// server has one UDP writer decorator: one block per address may have it).
var fastClaims struct {
	sync.Mutex
	instance any // the configuration's caddy context
	addrs    map[string]bool
}

// claimFastPath claims the addresses of conf for its block's fast path.
func claimFastPath(instance any, conf *dnsserver.Config) error {
	fastClaims.Lock()
	defer fastClaims.Unlock()
	if fastClaims.instance != instance {
		fastClaims.instance, fastClaims.addrs = instance, make(map[string]bool)
	}
	for _, h := range conf.ListenHosts {
		a := net.JoinHostPort(h, conf.Port)
		if fastClaims.addrs[a] {
			return fmt.Errorf("fastpath: another block on %s has it already: one block per address may", a)
		}
		fastClaims.addrs[a] = true
	}
	return nil
}

// fastPaths is the fast path of one deviceid block: one per address the block's
// server listens on.
type fastPaths struct {
	d       *Deviceid
	sockets int // per address; 0: one per core
	prev    func(*dnsserver.Server) dns.DecorateWriter
	conf    *dnsserver.Config

	mu      sync.Mutex
	stopped bool
	servers []*dnsserver.Server // as the server started them, NumSockets per address
	running []*fastPath
}

// decorate is the server's UDPDecorateWriterFunc, called as each of its UDP sockets
// starts to be served: it learns the server, opens the fast path on the address once
// the address's every socket (NumSockets) is served, counts the answers written on the
// server's own sockets (packets the kernel did not steer to the fast path), and applies
// the decorator set before it. Only a server that starts calls it, so a startup that
// fails leaves nothing waiting.
func (f *fastPaths) decorate(s *dnsserver.Server) dns.DecorateWriter {
	f.mu.Lock()
	f.servers = append(f.servers, s)
	var group []*dnsserver.Server
	for _, o := range f.servers {
		if o.Addr == s.Addr {
			group = append(group, o)
		}
	}
	f.mu.Unlock()
	if len(group) == max(f.conf.NumSockets, 1) {
		go func() {
			if err := f.open(group); err != nil {
				log.Errorf("fastpath on %s not started, the server answers every query itself: %v", s.Addr, err)
			}
		}()
	}
	var inner dns.DecorateWriter
	if f.prev != nil {
		inner = f.prev(s)
	}
	framework := fastPackets.WithLabelValues(s.Addr, "framework")
	return func(w dns.Writer) dns.Writer {
		if inner != nil {
			w = inner(w)
		}
		return countingWriter{w, framework}
	}
}

type countingWriter struct {
	dns.Writer
	n prometheus.Counter
}

func (w countingWriter) Write(b []byte) (int, error) {
	w.n.Inc()
	return w.Writer.Write(b)
}

// check refuses, at the server's startup and before the plugin's own startup work, a
// block whose plugins must see every query.
func (f *fastPaths) check() error {
	for _, h := range f.conf.Handlers() {
		if !slices.Contains(fastAllowed, h.Name()) {
			return plugin.Error(pluginName, fmt.Errorf("fastpath: plugin %s is in the block, and the fast path's answers do not pass it: remove one of them (the plugins a fast path allows: %v)", h.Name(), fastAllowed))
		}
	}
	if len(f.conf.FilterFuncs) > 0 {
		return plugin.Error(pluginName, errors.New("fastpath: the block has a view (a filter on queries), which the fast path's answers do not pass"))
	}
	return nil
}

// open opens the fast path on the address of group (the server's sockets on it), once
// the server has started to read them.
func (f *fastPaths) open(group []*dnsserver.Server) error {
	for deadline := time.Now().Add(socketWait); ; time.Sleep(time.Millisecond) {
		ready := true
		for _, s := range group {
			if _, err := inspect(s); err != nil {
				ready = false
				if !errors.Is(err, errNoSocketYet) {
					return err
				}
			}
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server's UDP sockets not served within %s", socketWait)
		}
	}
	fp, err := f.openAddr(group)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		fp.close()
		return nil
	}
	f.running = append(f.running, fp)
	return nil
}

// stop closes the fast paths' sockets; the server's own go on.
func (f *fastPaths) stop() error {
	f.mu.Lock()
	running := f.running
	f.running, f.servers, f.stopped = nil, nil, true
	f.mu.Unlock()
	for _, fp := range running {
		fp.close()
	}
	return nil
}

// fastPath serves one address.
type fastPath struct {
	d       *Deviceid
	srv     *dnsserver.Server
	below   []string // zones of other blocks on this server below the block's zones
	conns   []*net.UDPConn
	any     bool // bound to every address: answers name their source (IP_PKTINFO)
	handed  *handOverConn
	chain   *dns.Server
	wg      sync.WaitGroup
	fast    prometheus.Counter // answered here
	handOff prometheus.Counter // given to the chain
	dropped prometheus.Counter // not answered: responses, RRL drops, a full queue
}

func (f *fastPaths) openAddr(group []*dnsserver.Server) (*fastPath, error) {
	srv := group[0]
	view, err := inspect(srv)
	if err != nil {
		return nil, err
	}
	if view.proxyProtocol {
		return nil, errors.New("the server reads the PROXY protocol, which the fast path does not")
	}
	if view.opcodes {
		return nil, errors.New("a plugin on this server accepts opcodes other than QUERY and NOTIFY, which the fast path's hand-over does not")
	}
	fp := &fastPath{d: f.d, srv: srv,
		fast:    fastPackets.WithLabelValues(srv.Addr, "fast"),
		handOff: fastPackets.WithLabelValues(srv.Addr, "handed"),
		dropped: fastPackets.WithLabelValues(srv.Addr, "dropped"),
	}
	for _, z := range view.zones {
		for _, o := range f.d.cfg.zones {
			if z != o && matchZone([]string{o}, z) == o {
				fp.below = append(fp.below, z)
			}
		}
	}
	for _, o := range f.d.cfg.zones {
		if view.blocks[o] > 1 {
			return nil, fmt.Errorf("zone %s is served by %d blocks on this address (views): the fast path would bypass their filters", o, view.blocks[o])
		}
	}
	n := f.sockets
	if n == 0 {
		n = runtime.GOMAXPROCS(0)
	}
	for range n {
		pc, err := listenReusePort(view.local.String())
		if err != nil {
			fp.close()
			return nil, err
		}
		fp.conns = append(fp.conns, pc)
		if ua, ok := view.local.(*net.UDPAddr); ok && ua.IP.IsUnspecified() {
			// As miekg/dns does for the server's: an answer leaves from the address
			// its query came to, not from the one the kernel picks.
			fp.any = true
			err6 := ipv6.NewPacketConn(pc).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
			err4 := ipv4.NewPacketConn(pc).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
			if err6 != nil && err4 != nil {
				fp.close()
				return nil, err4
			}
		}
	}
	// The server's sockets joined the group first: the program sends each query to one
	// of the n sockets after them, by its ID.
	if err := steer(fp.conns[0], len(group), n); err != nil {
		fp.close()
		return nil, fmt.Errorf("steering queries to the fast path's sockets: %v", err)
	}
	fp.handed = &handOverConn{in: make(chan handedPacket, handOverQueue), done: make(chan struct{}), out: fp.conns[0],
		sources: make(map[net.Addr][]byte)}
	var decorate dns.DecorateWriter
	if f.prev != nil {
		decorate = f.prev(srv)
	}
	fp.chain = &dns.Server{PacketConn: fp.handed, Net: "udp", TsigSecret: srv.TsigSecret, DecorateWriter: decorate,
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			ctx := context.WithValue(context.Background(), dnsserver.Key{}, srv)
			ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
			srv.ServeDNS(ctx, w, r)
		})}
	fp.wg.Go(func() { fp.chain.ActivateAndServe() })
	for _, c := range fp.conns {
		fp.wg.Go(func() { fp.serve(c) })
	}
	fastSockets.WithLabelValues(srv.Addr).Add(float64(n)) // a reload's old and new overlap
	log.Infof("fast path on %s: %d sockets beside the server's %d", view.local, n, len(group))
	return fp, nil
}

func (fp *fastPath) close() {
	if fp.handed != nil { // it opened
		fastSockets.WithLabelValues(fp.srv.Addr).Sub(float64(len(fp.conns)))
	}
	for _, c := range fp.conns {
		c.Close()
	}
	if fp.handed != nil {
		fp.handed.Close()
	}
	fp.wg.Wait()
}

// serve reads queries from c in batches, answers what it can and hands the rest over,
// until c is closed.
func (fp *fastPath) serve(c *net.UDPConn) {
	pc := ipv4.NewPacketConn(c)
	in := make([]ipv4.Message, fastBatch)
	out := make([]ipv4.Message, fastBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, dns.MinMsgSize+1)}
		out[i].Buffers = [][]byte{make([]byte, 0, maxMaxUDPSize)}
		if fp.any {
			in[i].OOB = make([]byte, oobSize)
		}
	}
	var name [256]byte
	local := c.LocalAddr()
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // a socket error: not a spin
			continue
		}
		now := fp.d.now()
		k, handed, dropped := 0, 0, 0
		for i := range in[:n] {
			m := &in[i]
			b := m.Buffers[0][:m.N]
			resp, verdict := fp.answer(b, m.Addr, local, out[k].Buffers[0][:0], &name, now)
			switch verdict {
			case fastAnswer:
				out[k].Buffers[0], out[k].Addr = resp, m.Addr
				if fp.any {
					out[k].OOB = answerSource(m.OOB[:m.NN])
				}
				k++
			case fastDrop:
				dropped++
			case fastHandOver:
				var oob []byte
				if fp.any {
					oob = answerSource(m.OOB[:m.NN])
				}
				if fp.handed.put(b, m.Addr, oob) {
					handed++
				} else {
					dropped++
				}
			}
		}
		fp.fast.Add(float64(k))
		fp.handOff.Add(float64(handed))
		fp.dropped.Add(float64(dropped))
		for sent := 0; sent < k; {
			w, err := pc.WriteBatch(out[sent:k], 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				w = max(w, 1) // that answer's address was refused: skip it
			}
			sent += w
		}
	}
}

type fastVerdict uint8

const (
	fastAnswer   fastVerdict = iota // resp is the answer
	fastHandOver                    // the chain answers
	fastDrop                        // nothing is sent (as the server would send nothing)
)

// answer answers the query in b from addr, into resp, or says who does. A panic in it
// is logged and the packet handed to the chain (which recovers its own and answers
// SERVFAIL), as the server keeps a panic in a plugin from ending the process.
func (fp *fastPath) answer(b []byte, addr, local net.Addr, resp []byte, name *[256]byte, now time.Time) (out []byte, verdict fastVerdict) {
	defer func() {
		if r := recover(); r != nil {
			log.Errorf("fast path: recovered from a panic answering a query from %s: %v", addr, r)
			out, verdict = nil, fastHandOver
		}
	}()
	if len(b) >= 3 && b[2]&0x80 != 0 {
		return nil, fastDrop // a response: the server ignores it too
	}
	q, question, qname, ok := fastQuery(b, name)
	if !ok {
		return nil, fastHandOver
	}
	d := fp.d
	origin := matchZone(d.cfg.zones, qname)
	if origin == "" || matchZone(fp.below, qname) != "" {
		return nil, fastHandOver
	}
	switch q.qtype {
	case dns.TypeANY, dns.TypeAXFR, dns.TypeIXFR, dns.TypeNXNAME, dns.TypeDS:
		return nil, fastHandOver // answered by other plugins, refused, or routed by the server
	}
	if q.opt && q.udpSize > d.cfg.maxUDPSize {
		q.udpSize = d.cfg.maxUDPSize // as ServeDNS lowers it
	}
	z := d.zones[origin]
	if qname == z.origin {
		return fp.apex(b, addr, local, resp)
	}
	do := z.signer != nil && q.do()
	var p packet
	defer p.release()
	p.startWire(question)
	// The name as the query has it, lower-cased: fastQuery let only letters, digits,
	// '-' and '_' in, and no length octet (at most 63) is an upper-case letter.
	q.wire = p.ab.name[:len(question)-4]
	for i, c := range question[:len(question)-4] {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		q.wire[i] = c
	}
	// Rate limiting comes first, as in ServeDNS: a response over the limit does nothing
	// else. One within it is counted once answered, so that a query handed over is
	// counted by the chain alone.
	ns := now.UnixNano()
	counted := false
	if d.rrl != nil && !d.rrl.wouldAnswer(addr, ns) {
		if v := d.rrl.check(addr, ns); v != rrlAnswer {
			if !d.limit(&p, v, origin, addr, now) {
				return nil, fastDrop
			}
			p.seal(&q, origin)
			return append(resp, p.buf...), fastAnswer
		}
		counted = true // the bucket refilled meanwhile
	}
	if err := z.answer(&p, &q, qname, do, true, now); err != nil {
		return nil, fastHandOver // and errors: the chain answers and logs as always
	}
	if d.rrl != nil && !counted {
		if v := d.rrl.check(addr, ns); v != rrlAnswer { // spent meanwhile by another query
			if !d.limit(&p, v, origin, addr, now) {
				return nil, fastDrop
			}
		}
	}
	p.seal(&q, origin)
	return append(resp, p.buf...), fastAnswer
}

// apex answers a query for the apex as ServeDNS does, written by the server's
// ScrubWriter into resp: the apex's answers are messages, made ahead but not packed.
func (fp *fastPath) apex(b []byte, addr, local net.Addr, resp []byte) ([]byte, fastVerdict) {
	r := new(dns.Msg)
	if r.Unpack(b) != nil {
		return nil, fastHandOver
	}
	cw := &captureWriter{local: local, remote: addr, buf: resp}
	w := request.NewScrubWriter(r, cw)
	rcode, _ := fp.d.ServeDNS(context.Background(), w, r)
	if !plugin.ClientWrite(rcode) { // as the server's errorFunc
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		state := request.Request{W: w, Req: r}
		state.SizeAndDo(m)
		w.WriteMsg(m)
	}
	if !cw.written {
		return nil, fastDrop
	}
	return cw.buf, fastAnswer
}

// captureWriter is a dns.ResponseWriter that keeps the answer's bytes.
type captureWriter struct {
	local, remote net.Addr
	buf           []byte
	written       bool
}

func (w *captureWriter) LocalAddr() net.Addr  { return w.local }
func (w *captureWriter) RemoteAddr() net.Addr { return w.remote }
func (w *captureWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(w.buf[:cap(w.buf)])
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *captureWriter) Write(b []byte) (int, error) {
	w.buf, w.written = append(w.buf[:0], b...), true
	return len(b), nil
}
func (w *captureWriter) Close() error        { return nil }
func (w *captureWriter) TsigStatus() error   { return nil }
func (w *captureWriter) TsigTimersOnly(bool) {}
func (w *captureWriter) Hijack()             {}

// fastQuery reads from a packet a query the fast path may answer: a QUERY with one
// question (a name of letters, digits, '-' and '_', uncompressed, class IN) and no other
// record but an OPT (version 0, no extended RCODE, no options but cookies and padding,
// which no answer depends on), nothing after it, at most 512 bytes (what the server
// reads). qname is lower case in name's memory; ok false: the chain has it.
func fastQuery(b []byte, name *[256]byte) (q query, question []byte, qname string, ok bool) {
	if len(b) < 12 || len(b) > dns.MinMsgSize {
		return
	}
	flags := binary.BigEndian.Uint16(b[2:])
	if flags>>11&0xF != dns.OpcodeQuery || binary.BigEndian.Uint16(b[4:]) != 1 ||
		binary.BigEndian.Uint16(b[6:]) != 0 || binary.BigEndian.Uint16(b[8:]) != 0 {
		return
	}
	ar := binary.BigEndian.Uint16(b[10:])
	if ar > 1 {
		return
	}
	off, n := 12, 0
	for {
		if off >= len(b) {
			return
		}
		l := int(b[off])
		off++
		if l == 0 {
			break
		}
		if l > 63 || off+l > len(b) || off-12+l > 254 {
			return
		}
		for _, c := range b[off : off+l] {
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			case 'A' <= c && c <= 'Z':
				c += 'a' - 'A'
			default:
				return
			}
			name[n] = c
			n++
		}
		name[n] = '.'
		n++
		off += l
	}
	if n == 0 || off+4 > len(b) || binary.BigEndian.Uint16(b[off+2:]) != dns.ClassINET {
		return
	}
	q = query{id: binary.BigEndian.Uint16(b), rd: flags&(1<<8) != 0, cd: flags&(1<<4) != 0,
		qtype: binary.BigEndian.Uint16(b[off:])}
	question = b[12 : off+4]
	off += 4
	if ar == 1 {
		if off+11 > len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != dns.TypeOPT {
			return
		}
		q.opt, q.udpSize, q.optTTL = true, binary.BigEndian.Uint16(b[off+3:]), binary.BigEndian.Uint32(b[off+5:])
		if q.optTTL>>16 != 0 { // an extended RCODE or version: the server answers (BADVERS)
			return
		}
		end := off + 11 + int(binary.BigEndian.Uint16(b[off+9:]))
		if end > len(b) {
			return
		}
		for o := off + 11; o < end; {
			if o+4 > end {
				return
			}
			code, l := binary.BigEndian.Uint16(b[o:]), int(binary.BigEndian.Uint16(b[o+2:]))
			if (code != dns.EDNS0COOKIE && code != dns.EDNS0PADDING) || o+4+l > end {
				return
			}
			o += 4 + l
		}
		off = end
	}
	if off != len(b) {
		return
	}
	return q, question, string(name[:n]), true
}

// handOverConn is the packet connection the chain's DNS server reads the handed-over
// queries from; its answers go out on a fast path socket, from the address the query
// came to when the socket is bound to every address.
type handOverConn struct {
	in   chan handedPacket
	done chan struct{}
	once sync.Once
	out  *net.UDPConn

	mu      sync.Mutex
	sources map[net.Addr][]byte // by the client's address as read: the answer's source
}

type handedPacket struct {
	b, oob []byte
	addr   net.Addr
}

// put queues a copy of b, or reports false when the queue is full or closed.
func (c *handOverConn) put(b []byte, addr net.Addr, oob []byte) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.in <- handedPacket{slices.Clone(b), oob, addr}:
		return true
	default:
		return false
	}
}

func (c *handOverConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-c.in:
		if p.oob != nil {
			c.mu.Lock()
			if len(c.sources) >= handOverQueue { // answers the chain never wrote
				clear(c.sources)
			}
			c.sources[p.addr] = p.oob
			c.mu.Unlock()
		}
		return copy(b, p.b), p.addr, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *handOverConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	oob := c.sources[addr]
	delete(c.sources, addr)
	c.mu.Unlock()
	if oob == nil {
		return c.out.WriteTo(b, addr)
	}
	ua, _ := addr.(*net.UDPAddr)
	n, _, err := c.out.WriteMsgUDP(b, oob, ua)
	return n, err
}

func (c *handOverConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}
func (c *handOverConn) LocalAddr() net.Addr              { return c.out.LocalAddr() }
func (c *handOverConn) SetDeadline(time.Time) error      { return nil }
func (c *handOverConn) SetReadDeadline(time.Time) error  { return nil }
func (c *handOverConn) SetWriteDeadline(time.Time) error { return nil }

// oobSize holds the control message of either family that says where a packet came to.
var oobSize = max(len(ipv4.NewControlMessage(ipv4.FlagDst|ipv4.FlagInterface)), len(ipv6.NewControlMessage(ipv6.FlagDst|ipv6.FlagInterface)))

// answerSource returns the control message that sends an answer from the address its
// query came to, as the query's control message oob says (nil: the kernel picks), as
// miekg/dns's correctSource.
func answerSource(oob []byte) []byte {
	var cm6 ipv6.ControlMessage
	if cm6.Parse(oob) == nil && cm6.Dst != nil && cm6.Dst.To4() == nil {
		return (&ipv6.ControlMessage{Src: cm6.Dst}).Marshal()
	}
	var cm4 ipv4.ControlMessage
	if cm4.Parse(oob) == nil && cm4.Dst != nil {
		return (&ipv4.ControlMessage{Src: cm4.Dst}).Marshal()
	}
	if cm6.Dst != nil {
		return (&ipv4.ControlMessage{Src: cm6.Dst}).Marshal()
	}
	return nil
}
