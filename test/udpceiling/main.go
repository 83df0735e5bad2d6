// Command udpceiling is the load runs' ceiling without a DNS server: it answers every
// DNS query on a UDP socket with a pre-packed answer (the query's ID and question copied
// into a fixed answer: one A record, and an OPT record when the query has one), either a
// packet at a time (ReadFrom and WriteTo, as a plain Go server reads) or in batches of
// 64 (recvmmsg and sendmmsg through golang.org/x/net/ipv4, as deviceid's fast path
// reads). make bench measures both, pinned to core 0 beside whoami, so that the fast
// path's figure can be set against what Go and the kernel allow on one core.
//
//	udpceiling -addr 127.0.0.1:5306 -mode plain|batch [-pprof 127.0.0.1:6060]
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"

	"golang.org/x/net/ipv4"
)

const batch = 64

func main() {
	addr := flag.String("addr", "127.0.0.1:5306", "UDP address to answer on")
	mode := flag.String("mode", "batch", "plain: a packet a system call; batch: 64 packets a system call (recvmmsg/sendmmsg)")
	pprofAddr := flag.String("pprof", "", "address for net/http/pprof (none when empty)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { log.Println(http.ListenAndServe(*pprofAddr, nil)) }()
	}
	c, err := net.ListenPacket("udp4", *addr)
	if err != nil {
		log.Fatal(err)
	}
	uc := c.(*net.UDPConn)
	switch *mode {
	case "plain":
		plain(uc)
	case "batch":
		batched(uc)
	default:
		log.Fatalf("-mode %q: want plain or batch", *mode)
	}
}

// The answer after the question: a compressed pointer to the question's name, type A,
// class IN, TTL 3600, 192.0.2.1; then, for a query with EDNS, an OPT record
// (1232 bytes, the DO bit as asked).
var (
	answerRR = []byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, 1}
	optRR    = []byte{0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0}
)

// answer writes into out the answer to query q, or returns false for a packet that is
// no query of one question.
func answer(q, out []byte) ([]byte, bool) {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil, false
	}
	off := 12
	for off < len(q) && q[off] != 0 {
		off += int(q[off]) + 1
	}
	off += 5 // the root label, type and class
	if off > len(q) {
		return nil, false
	}
	out = append(out[:0], q[:off]...)
	out[2] = 0x84 | q[2]&0x01 // QR, AA, RD as asked
	out[3] = 0
	binary.BigEndian.PutUint16(out[6:], 1)  // ANCOUNT
	binary.BigEndian.PutUint16(out[8:], 0)  // NSCOUNT
	binary.BigEndian.PutUint16(out[10:], 0) // ARCOUNT
	out = append(out, answerRR...)
	if binary.BigEndian.Uint16(q[10:]) == 1 && off+11 <= len(q) && binary.BigEndian.Uint16(q[off+1:]) == 41 {
		binary.BigEndian.PutUint16(out[10:], 1)
		out = append(out, optRR...)
		out[len(out)-4] = q[off+7] & 0x80 // DO
	}
	return out, true
}

func plain(c *net.UDPConn) {
	in, out := make([]byte, 1500), make([]byte, 0, 1500)
	for {
		n, from, err := c.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if a, ok := answer(in[:n], out); ok {
			c.WriteToUDPAddrPort(a, from)
		}
	}
}

func batched(c *net.UDPConn) {
	pc := ipv4.NewPacketConn(c)
	in, out := make([]ipv4.Message, batch), make([]ipv4.Message, batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1500)}
		out[i].Buffers = [][]byte{make([]byte, 0, 65536)}
	}
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		k := 0
		for i := range in[:n] {
			if a, ok := answer(in[i].Buffers[0][:in[i].N], out[k].Buffers[0]); ok {
				out[k].Buffers[0], out[k].Addr = a, in[i].Addr
				k++
			}
		}
		for sent := 0; sent < k; {
			w, err := pc.WriteBatch(out[sent:k], 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				w = max(w, 1)
			}
			sent += w
		}
	}
}
