package deviceid

import (
	"encoding/binary"
	"encoding/hex"
	"sync"

	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// packedRR is one record of a device's RRset in DNS wire form, ready to be copied
// into an answer: its owner name is a compression pointer to the question name,
// which starts at offset 12 of every message, so the answer keeps the query's case.
// Packing at load time leaves the query path a lookup and a few copies.
type packedRR struct {
	wire  []byte // 0xC00C | type | class | TTL | RDLENGTH | RDATA
	until int64  // Unix nanoseconds after which it is not published; 0: never
}

// current reports whether the record is published at now (Unix ns).
func (p *packedRR) current(now int64) bool { return p.until == 0 || now < p.until }

// ownerPointer is a compression pointer to offset 12, the question name.
var ownerPointer = []byte{0xC0, 0x0C}

// packTLSA packs a published TLSA record.
func packTLSA(p record.Published) packedRR {
	rdata := append([]byte{p.Usage, p.Selector, p.MatchingType}, p.Data...)
	return packedRR{wire: atQuestion(dns.TypeTLSA, dns.ClassINET, p.TTL, rdata), until: p.Until}
}

// atQuestion is a record with its owner name compressed to the question name.
func atQuestion(rrtype, class uint16, ttl uint32, rdata []byte) []byte {
	w := make([]byte, 0, 12+len(rdata))
	w = append(w, ownerPointer...)
	w = binary.BigEndian.AppendUint16(w, rrtype)
	w = binary.BigEndian.AppendUint16(w, class)
	w = binary.BigEndian.AppendUint32(w, ttl)
	w = binary.BigEndian.AppendUint16(w, uint16(len(rdata)))
	return append(w, rdata...)
}

func packAll(pub []record.Published) []packedRR {
	out := make([]packedRR, len(pub))
	for i, p := range pub {
		out[i] = packTLSA(p)
	}
	return out
}

// tlsa returns the record as a dns.TLSA at owner, for tests and tools.
func (p packedRR) tlsa(owner string) *dns.TLSA {
	rdata := p.wire[12:]
	return &dns.TLSA{
		Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTLSA, Class: dns.ClassINET,
			Ttl: binary.BigEndian.Uint32(p.wire[6:10])},
		Usage: rdata[0], Selector: rdata[1], MatchingType: rdata[2],
		Certificate: hex.EncodeToString(rdata[3:]),
	}
}

// bufPool holds answer buffers; an answer is written before its buffer is reused.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// packRR packs rr as it stands, owner name uncompressed. It packs a copy: dns.PackRR
// writes the RDLENGTH into the record it packs, and records are shared between queries.
func packRR(rr dns.RR) []byte {
	c := dns.Copy(rr)
	buf := make([]byte, dns.Len(c))
	off, err := dns.PackRR(c, buf, 0, nil, false)
	if err != nil {
		panic(err) // our own records, made from checked data
	}
	return buf[:off]
}

// writePacked writes rep: the records of rep.answer published at now and their
// signatures in the answer section, rep.authority in the authority section.
// When no other plugin wraps the writer, the bytes go out as they are; otherwise they
// are unpacked and written as a message, so that plugins such as log, cache and
// prometheus see the answer as usual.
func writePacked(w dns.ResponseWriter, state request.Request, rep reply, now int64) error {
	r := state.Req
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := (*bp)[:12]

	flags := uint16(1<<15|uint16(r.Opcode)<<11|1<<10) | uint16(rep.rcode&0xF) // QR, opcode, AA, RCODE
	if r.RecursionDesired {
		flags |= 1 << 8
	}
	if r.CheckingDisabled {
		flags |= 1 << 4
	}
	binary.BigEndian.PutUint16(buf[0:], r.Id)
	binary.BigEndian.PutUint16(buf[4:], 1) // QDCOUNT

	q := r.Question[0]
	buf = buf[:cap(buf)]
	off, err := dns.PackDomainName(q.Name, buf, 12, nil, false)
	if err != nil {
		return err
	}
	buf = binary.BigEndian.AppendUint16(buf[:off], q.Qtype)
	buf = binary.BigEndian.AppendUint16(buf, q.Qclass)
	question := len(buf)

	var answers uint16
	for i := range rep.answer {
		if rep.answer[i].current(now) {
			buf = append(buf, rep.answer[i].wire...)
			answers++
		}
	}
	if rep.answerSigs != nil {
		buf = append(buf, rep.answerSigs.wire...)
		answers += rep.answerSigs.n
	}
	buf = append(buf, rep.authority...)
	nAuthority := rep.nAuthority

	// OPT: root owner, UDP size, extended RCODE 0, version 0, the DO and CO flags of the
	// query, no options: 11 bytes.
	o := r.IsEdns0()
	optLen := 0
	if o != nil {
		optLen = 11
	}
	if len(buf)+optLen > state.Size() { // the client's buffer; TCP: 64 KiB
		buf = buf[:question]
		answers, nAuthority = 0, 0
		flags |= 1 << 9 // TC: ask again over TCP
	}
	binary.BigEndian.PutUint16(buf[2:], flags)
	binary.BigEndian.PutUint16(buf[6:], answers)
	binary.BigEndian.PutUint16(buf[8:], nAuthority)
	binary.BigEndian.PutUint16(buf[10:], 0)
	if o != nil {
		buf = append(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, dns.TypeOPT)
		buf = binary.BigEndian.AppendUint16(buf, o.UDPSize())
		buf = binary.BigEndian.AppendUint32(buf, o.Hdr.Ttl&0xC000)
		buf = append(buf, 0, 0)
		binary.BigEndian.PutUint16(buf[10:], 1)
	}
	*bp = buf[:0]

	if sw, ok := w.(*request.ScrubWriter); ok {
		_, err := sw.Write(buf)
		return err
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf); err != nil {
		return err
	}
	return w.WriteMsg(m)
}
