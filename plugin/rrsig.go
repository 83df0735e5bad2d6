package deviceid

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"slices"
	"sync"

	"github.com/miekg/dns"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// signRRset fills in sig (header, type covered, labels, original TTL, signature) over
// rrset with key k, as dns.RRSIG.Sign does: the signed data is the RRSIG RDATA without
// its signature followed by the RRset in canonical form and order (RFC 4034 sections
// 3.1.8.1, 6.2 and 6.3). It is here because proofs of nonexistence are signed on
// every query, and dns.RRSIG.Sign spends a third as much as the signature itself on
// copies, a 4 KB buffer and reflection-based ASN.1. The RRsets signed here have no
// wildcard owners; of the types with names in their RDATA it has NS and SOA.
func signRRset(k *key, sig *dns.RRSIG, rrset []dns.RR) (err error) {
	h := rrset[0].Header()
	sig.Hdr = dns.RR_Header{Name: h.Name, Rrtype: dns.TypeRRSIG, Class: h.Class, Ttl: h.Ttl}
	sig.TypeCovered = h.Rrtype
	sig.Labels = uint8(dns.CountLabel(h.Name))
	sig.OrigTtl = h.Ttl
	sig.SignerName = dns.CanonicalName(sig.SignerName) // as signed (section 3.1.7)
	sig.Signature = ""

	bp := signBufPool.Get().(*[]byte)
	data := (*bp)[:0]
	defer func() { *bp = data[:0]; signBufPool.Put(bp) }()

	// The RRSIG RDATA up to the signature (RFC 4034 section 3.1).
	data = binary.BigEndian.AppendUint16(data, sig.TypeCovered)
	data = append(data, sig.Algorithm, sig.Labels)
	data = binary.BigEndian.AppendUint32(data, sig.OrigTtl)
	data = binary.BigEndian.AppendUint32(data, sig.Expiration)
	data = binary.BigEndian.AppendUint32(data, sig.Inception)
	data = binary.BigEndian.AppendUint16(data, sig.KeyTag)
	if data, err = appendName(data, sig.SignerName); err != nil {
		return err
	}
	prefix := len(data)

	// The records, each packed in canonical form, sorted by RDATA, without duplicates.
	var ends [8]int
	end := ends[:0]
	for _, rr := range rrset {
		if data, err = appendPacked(data, canonical(rr, h.Ttl)); err != nil {
			return err
		}
		end = append(end, len(data))
	}
	if len(end) > 1 {
		data = sortRecords(data, prefix, records(data, prefix, end))
	}

	signature := make([]byte, sigSize)
	if err := signData(k, data, signature); err != nil {
		return err
	}
	sig.Signature = base64.StdEncoding.EncodeToString(signature)
	return nil
}

var signBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendName appends a domain name, uncompressed.
func appendName(buf []byte, name string) ([]byte, error) {
	buf = slices.Grow(buf, 256)
	off, err := dns.PackDomainName(name, buf[:cap(buf)], len(buf), nil, false)
	return buf[:off], err
}

// appendPacked appends rr packed without name compression.
func appendPacked(buf []byte, rr dns.RR) ([]byte, error) {
	n := dns.Len(rr)
	buf = slices.Grow(buf, n)
	off, err := dns.PackRR(rr, buf[len(buf):len(buf)+n], 0, nil, false)
	return buf[:len(buf)+off], err
}

// canonical returns a copy of rr with its owner name and any domain names in its
// RDATA in lower case, and the given TTL. (A copy also because dns.PackRR writes the
// RDLENGTH into the record it packs, and records are shared between queries.)
func canonical(rr dns.RR, ttl uint32) dns.RR {
	rr = dns.Copy(rr)
	h := rr.Header()
	h.Name, h.Ttl = dns.CanonicalName(h.Name), ttl
	switch x := rr.(type) {
	case *dns.NS:
		x.Ns = dns.CanonicalName(x.Ns)
	case *dns.SOA:
		x.Ns, x.Mbox = dns.CanonicalName(x.Ns), dns.CanonicalName(x.Mbox)
	}
	return rr
}

// records splits the packed records in data[start:], record i ending at end[i].
func records(data []byte, start int, end []int) [][]byte {
	recs := make([][]byte, len(end))
	for i := range end {
		recs[i] = data[start:end[i]]
		start = end[i]
	}
	return recs
}

// rdataAt is where the RDATA of a packed record (owner name uncompressed) starts.
func rdataAt(rec []byte) int {
	i := 0
	for i < len(rec) && rec[i] != 0 {
		i += 1 + int(rec[i])
	}
	return i + 1 + 10 // the root label, then type, class, TTL and RDLENGTH
}

// sortRecords orders the packed records recs, which lie in data[start:], by their
// RDATA, dropping duplicates, and returns data with them in that order. All records
// share owner, type, class and TTL, so their RDATA starts at the same offset.
func sortRecords(data []byte, start int, recs [][]byte) []byte {
	at := rdataAt(recs[0])
	slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[at:], b[at:]) })
	recs = slices.CompactFunc(recs, bytes.Equal)
	sorted := make([]byte, 0, len(data)-start)
	for _, r := range recs {
		sorted = append(sorted, r...)
	}
	return append(data[:start], sorted...)
}

// rawECDSAInto turns an ASN.1 ECDSA P-256 signature into r || s, 32 octets each
// (RFC 6605), written into out (64 octets).
func rawECDSAInto(out, der []byte) error {
	var r, s []byte
	in, seq := cryptobyte.String(der), cryptobyte.String(nil)
	if !in.ReadASN1(&seq, asn1.SEQUENCE) || !seq.ReadASN1Integer(&r) || !seq.ReadASN1Integer(&s) {
		return errors.New("malformed ECDSA signature")
	}
	clear(out[:64])
	if !fitRight(out[:32], r) || !fitRight(out[32:64], s) {
		return errors.New("ECDSA signature is not P-256")
	}
	return nil
}

// fitRight copies the big-endian integer v into dst, right-aligned, and reports
// whether it fits.
func fitRight(dst, v []byte) bool {
	v = bytes.TrimLeft(v, "\x00")
	if len(v) > len(dst) {
		return false
	}
	copy(dst[len(dst)-len(v):], v)
	return true
}
