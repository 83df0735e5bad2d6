package deviceid

import (
	"encoding/binary"
	"sync"

	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// Records are kept in DNS wire form, ready to be copied into an answer: the owner
// name is a compression pointer to the question name, which starts at offset 12 of
// every message, so the answer keeps the query's case. The query path is a lookup
// and a few copies.

// ownerPointer is a compression pointer to offset 12, the question name.
var ownerPointer = []byte{0xC0, 0x0C}

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

// appendRecord appends a record to a packed RRset, the form in which the store keeps a
// name's records: for each record its expiry (Unix ns, 0 for none), then its wire form
// at the question (atQuestion).
func appendRecord(rr []byte, until int64, wire []byte) []byte {
	return append(binary.BigEndian.AppendUint64(rr, uint64(until)), wire...)
}

// eachRecord calls f for each record of a packed RRset.
func eachRecord(rr []byte, f func(until int64, wire []byte)) {
	for len(rr) > 0 {
		n := 8 + 12 + int(binary.BigEndian.Uint16(rr[8+10:]))
		f(int64(binary.BigEndian.Uint64(rr)), rr[8:n])
		rr = rr[n:]
	}
}

// allCurrent reports whether every record of rr is published at now (Unix ns).
func allCurrent(rr []byte, now int64) bool {
	ok := true
	eachRecord(rr, func(until int64, _ []byte) { ok = ok && (until == 0 || now < until) })
	return ok
}

// currentRecords returns the records of rr published at now.
func currentRecords(rr []byte, now int64) []byte {
	var out []byte
	eachRecord(rr, func(until int64, wire []byte) {
		if until == 0 || now < until {
			out = appendRecord(out, until, wire)
		}
	})
	return out
}

// answerBuf is the memory of one answer: the message, and room for the query name in
// wire form, the signatures of a proof of nonexistence and its NSEC. It comes from a
// pool, not the query goroutine's stack: the server starts each query on a small stack,
// and arrays on it made the stack grow (and be copied) at the write of every answer.
type answerBuf struct {
	msg   []byte
	name  [256]byte
	sigs  [4 * sigSize]byte
	rdata [280]byte
}

// bufPool holds answer buffers; an answer is written before its buffer is reused.
var bufPool = sync.Pool{New: func() any { return &answerBuf{msg: make([]byte, 0, 4096)} }}

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

// packet is an answer assembled from bytes: the header and question, then records
// appended to buf, the answer section's before the authority section's.
type packet struct {
	ab       *answerBuf
	buf      []byte
	question int // where the question ends
	an, ns   uint16
	rcode    int
	tc       bool
}

// query is what an answer depends on besides the question: read from the query's
// message (ServeDNS) or from its bytes (the fast path).
type query struct {
	id      uint16
	opcode  int
	rd, cd  bool
	qtype   uint16
	wire    []byte // the question name in wire form, lower case; nil: packed from qname
	opt     bool   // the query has an OPT record
	udpSize uint16 // its UDP size, lowered to max_udp_size
	optTTL  uint32 // its extended RCODE, version and flags
	tcp     bool
}

// queryOf reads q from state's message (its OPT lowered to max_udp_size already).
func queryOf(state request.Request) query {
	r := state.Req
	q := query{id: r.Id, opcode: r.Opcode, rd: r.RecursionDesired, cd: r.CheckingDisabled,
		qtype: state.QType(), tcp: state.Proto() == "tcp"}
	if o := r.IsEdns0(); o != nil {
		q.opt, q.udpSize, q.optTTL = true, o.UDPSize(), o.Hdr.Ttl
	}
	return q
}

// do and co are the query's DNSSEC OK and Compact Answers OK flags (RFC 9824).
func (q *query) do() bool { return q.opt && q.optTTL&(1<<15) != 0 }
func (q *query) co() bool { return q.opt && q.optTTL&(1<<14) != 0 }

// size is the largest answer: the client's buffer over UDP (512 without EDNS), 64 KiB
// over TCP, as request.Request.Size.
func (q *query) size() int {
	if q.tcp {
		return dns.MaxMsgSize
	}
	return max(int(q.udpSize), dns.MinMsgSize)
}

// start begins the answer to a query with question: the header is filled in by seal.
func (p *packet) start(question dns.Question) error {
	p.ab = bufPool.Get().(*answerBuf)
	buf := p.ab.msg[:cap(p.ab.msg)]
	off, err := dns.PackDomainName(question.Name, buf, 12, nil, false)
	if err != nil {
		return err
	}
	buf = binary.BigEndian.AppendUint16(buf[:off], question.Qtype)
	p.buf = binary.BigEndian.AppendUint16(buf, question.Qclass)
	p.question = len(p.buf)
	return nil
}

// startWire begins the answer to a query whose question (name, type, class) is
// question in wire form, as the query has it.
func (p *packet) startWire(question []byte) {
	p.ab = bufPool.Get().(*answerBuf)
	p.buf = append(p.ab.msg[:12], question...)
	p.question = len(p.buf)
}

// truncate drops the records and sets TC: ask again over TCP.
func (p *packet) truncate() {
	p.buf = p.buf[:p.question]
	p.an, p.ns, p.tc = 0, 0, true
}

func (p *packet) release() {
	if p.ab != nil {
		p.ab.msg = p.buf[:0]
		bufPool.Put(p.ab)
		p.ab = nil
	}
}

// seal fills in the header and adds the OPT record. An answer larger than the
// client's buffer (over UDP at most max_udp_size, which the query's OPT has been
// lowered to) goes out with TC and no records: a partial RRset would be of no use,
// and a retry over TCP gets the whole answer.
func (p *packet) seal(q *query, origin string) {
	// OPT: root owner, UDP size, extended RCODE 0, version 0, the DO and CO flags of the
	// query, no options: 11 bytes.
	optLen := 0
	if q.opt {
		optLen = 11
	}
	if len(p.buf)+optLen > q.size() {
		p.truncate()
		udpTruncated.WithLabelValues(origin).Inc()
	}
	flags := uint16(1<<15|uint16(q.opcode)<<11|1<<10) | uint16(p.rcode&0xF) // QR, opcode, AA, RCODE
	if p.tc {
		flags |= 1 << 9
	}
	if q.rd {
		flags |= 1 << 8
	}
	if q.cd {
		flags |= 1 << 4
	}
	buf := p.buf
	binary.BigEndian.PutUint16(buf[0:], q.id)
	binary.BigEndian.PutUint16(buf[2:], flags)
	binary.BigEndian.PutUint16(buf[4:], 1) // QDCOUNT
	binary.BigEndian.PutUint16(buf[6:], p.an)
	binary.BigEndian.PutUint16(buf[8:], p.ns)
	binary.BigEndian.PutUint16(buf[10:], 0)
	if q.opt {
		buf = append(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, dns.TypeOPT)
		buf = binary.BigEndian.AppendUint16(buf, q.udpSize)
		buf = binary.BigEndian.AppendUint32(buf, q.optTTL&0xC000)
		buf = append(buf, 0, 0)
		binary.BigEndian.PutUint16(buf[10:], 1)
	}
	p.buf = buf
}

// send writes the sealed answer. When no other plugin wraps the writer, or only
// *prometheus* (which needs the RCODE and the size, both set here), the bytes go out
// as they are; otherwise they are unpacked and written as a message, so that plugins
// such as log and cache see the answer as usual.
func (p *packet) send(w dns.ResponseWriter) error {
	switch rw := w.(type) {
	case *request.ScrubWriter:
		_, err := rw.Write(p.buf)
		return err
	case *metrics.Recorder:
		if sw, ok := rw.ResponseWriter.(*request.ScrubWriter); ok {
			n, err := sw.Write(p.buf)
			rw.Rcode, rw.Len = p.rcode, rw.Len+n
			return err
		}
	}
	m := new(dns.Msg)
	if err := m.Unpack(p.buf); err != nil {
		return err
	}
	return w.WriteMsg(m)
}

// Type bitmaps of the NSEC records (RFC 4034 section 4.1.2), window 0.
var (
	bitmapTLSA   = []byte{0, 7, 0, 0, 0, 0, 0, 0x03, 0x08}                                // RRSIG NSEC TLSA
	bitmapEmpty  = []byte{0, 6, 0, 0, 0, 0, 0, 0x03}                                      // RRSIG NSEC
	bitmapNXNAME = []byte{0, 17, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80} // RRSIG NSEC NXNAME
)

// appendNSEC appends the RDATA of the NSEC at name (wire form): the next name
// \000.name (RFC 9824) and the types at name; tlsa false lists no TLSA.
func appendNSEC(b, name []byte, tlsa bool) []byte {
	b = append(append(b, 1, 0), name...)
	if tlsa {
		return append(b, bitmapTLSA...)
	}
	return append(b, bitmapEmpty...)
}
