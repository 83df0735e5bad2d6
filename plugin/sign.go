package deviceid

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// renewRetry is how long a failed renewal waits before the next try.
const renewRetry = time.Minute

// inceptionSkew backdates signatures for validators whose clocks run behind.
const inceptionSkew = time.Hour

// signer makes the RRSIGs of one zone. Names that exist are signed ahead of queries
// (signahead.go) and their signatures kept in the store beside their records; proofs
// for names that do not exist are signed on the query path, within a budget, and
// kept in a bounded cache (nxcache.go).
type signer struct {
	origin     string
	validity   time.Duration
	signerName []byte // the origin in wire form, as RRSIGs carry it
	nx         *nxCache
	budget     *budget

	made, failed, hits, misses prometheus.Counter
}

func newSigner(origin string, validity time.Duration, cacheSize int) *signer {
	name := make([]byte, 256)
	n, _ := dns.PackDomainName(origin, name, 0, nil, false)
	return &signer{
		origin: origin, validity: validity, signerName: name[:n],
		nx:     newNXCache(cacheSize, validity),
		budget: &budget{},
		made:   signatures.WithLabelValues(origin),
		failed: signFailures.WithLabelValues(origin),
		hits:   cacheHits.WithLabelValues(origin),
		misses: cacheMisses.WithLabelValues(origin),
	}
}

var hashSeed = maphash.MakeSeed()

// times returns the inception and expiration of signatures made at now.
func (s *signer) times(now time.Time) (inc, exp uint32) {
	return uint32(now.Add(-inceptionSkew).Unix()), uint32(now.Add(s.validity).Unix())
}

// renewAt is when signatures made with inception inc are renewed: at the name's
// own phase within each quarter of the validity, so that names signed together (a
// full load, a bulk import) are renewed spread evenly over the next quarter, not in
// one storm, and each name keeps its place in the cycle from then on.
func (s *signer) renewAt(inc uint32, owner []byte) int64 {
	period := int64(s.validity/4) / 1e9
	made := int64(inc) + int64(inceptionSkew/time.Second)
	phase := int64(maphash.Bytes(hashSeed, owner) % uint64(period))
	return (made - (made+phase)%period + period) * 1e9
}

// due reports whether an entry's signatures must be made (again) at now (Unix ns).
func (s *signer) due(e entry, now int64) bool {
	inc, exp := e.signed()
	if inc == 0 {
		return true
	}
	return now >= s.renewAt(inc, e.owner()) || !fresh(exp, now)
}

// fresh reports whether signatures expiring at exp may still be served at now.
func fresh(exp uint32, now int64) bool {
	return now < (int64(exp)-int64(inceptionSkew/time.Second))*1e9
}

// rrsigRdata appends the RDATA of an RRSIG up to its signature (RFC 4034 section 3.1).
func (s *signer) rrsigRdata(b []byte, k *key, covered uint16, labels uint8, ttl, inc, exp uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, covered)
	b = append(b, k.dnskey.Algorithm, labels)
	b = binary.BigEndian.AppendUint32(b, ttl)
	b = binary.BigEndian.AppendUint32(b, exp)
	b = binary.BigEndian.AppendUint32(b, inc)
	b = binary.BigEndian.AppendUint16(b, k.tag)
	return append(b, s.signerName...)
}

// appendRRSIGs appends the RRSIGs over an RRset of type covered, owner compressed to
// the question name, with the signatures sigs (one per key of ks.zsk) made at inc and exp.
func (s *signer) appendRRSIGs(b []byte, ks *keySet, covered uint16, labels uint8, ttl, inc, exp uint32, sigs []byte) []byte {
	for i, k := range ks.zsk {
		b = append(b, ownerPointer...)
		b = binary.BigEndian.AppendUint16(b, dns.TypeRRSIG)
		b = binary.BigEndian.AppendUint16(b, dns.ClassINET)
		b = binary.BigEndian.AppendUint32(b, ttl)
		b = binary.BigEndian.AppendUint16(b, uint16(18+len(s.signerName)+sigSize))
		b = s.rrsigRdata(b, k, covered, labels, ttl, inc, exp)
		b = append(b, sigs[i*sigSize:(i+1)*sigSize]...)
	}
	return b
}

// signSet writes into out the signatures of the keys of ks.zsk, made at inc and exp,
// over the RRset at owner (wire form, lower case) of type t whose records' RDATA are
// rdatas in canonical order (RFC 4034 sections 3.1.8.1 and 6.3).
func (s *signer) signSet(ks *keySet, out []byte, owner []byte, t uint16, ttl, inc, exp uint32, rdatas [][]byte) error {
	bp := signBufPool.Get().(*[]byte)
	defer signBufPool.Put(bp)
	labels := wireLabels(owner)
	for i, k := range ks.zsk {
		data := s.rrsigRdata((*bp)[:0], k, t, labels, ttl, inc, exp)
		for _, rd := range rdatas {
			data = append(data, owner...)
			data = binary.BigEndian.AppendUint16(data, t)
			data = binary.BigEndian.AppendUint16(data, dns.ClassINET)
			data = binary.BigEndian.AppendUint32(data, ttl)
			data = binary.BigEndian.AppendUint16(data, uint16(len(rd)))
			data = append(data, rd...)
		}
		*bp = data
		if err := signData(k, data, out[i*sigSize:(i+1)*sigSize]); err != nil {
			s.failed.Inc()
			return err
		}
		s.made.Inc()
	}
	return nil
}

// signData signs data with k into out (64 octets).
func signData(k *key, data, out []byte) error {
	if k.dnskey.Algorithm == dns.ED25519 {
		sig, err := k.signer.Sign(rand.Reader, data, crypto.Hash(0))
		if err != nil {
			return err
		}
		if len(sig) != sigSize {
			return fmt.Errorf("Ed25519 signature of %d octets", len(sig))
		}
		copy(out, sig)
		return nil
	}
	digest := sha256.Sum256(data)
	der, err := k.signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return err
	}
	return rawECDSAInto(out, der)
}

// wireLabels counts the labels of a name in wire form (RRSIG Labels field).
func wireLabels(name []byte) uint8 {
	var n uint8
	for i := 0; i < len(name) && name[i] != 0; i += 1 + int(name[i]) {
		n++
	}
	return n
}

// signJob is one signature set made for a query, handed to a signing goroutine. It
// has buffers of its own, so that nothing of the query's (kept on its stack) escapes.
type signJob struct {
	s             *signer
	ks            *keySet
	t             uint16
	ttl, inc, exp uint32
	owner, out    []byte
	rdata         []byte   // the RDATA of the records, one after the other
	rdatas        [][]byte // slices of rdata
	err           error
	done          chan struct{}
}

var (
	signJobs     = make(chan *signJob)
	startSigning sync.Once
	signJobPool  = sync.Pool{New: func() any { return &signJob{done: make(chan struct{}, 1)} }}
)

// signNow is signSet on one of GOMAXPROCS long-lived goroutines. The DNS server runs
// each query on a new goroutine with a small stack; a signature needs a deeper one,
// and growing it on every query (proofs of nonexistence sign on every query) cost a
// fifth as much as the signature itself. A panic becomes an error: the server
// recovers a panic on a query's goroutine, but not on these, which serve every zone.
func (s *signer) signNow(ks *keySet, out, owner []byte, t uint16, ttl, inc, exp uint32, rdatas [][]byte) error {
	startSigning.Do(func() {
		for range runtime.GOMAXPROCS(0) {
			go func() {
				for j := range signJobs {
					j.err = j.run()
					j.done <- struct{}{}
				}
			}()
		}
	})
	j := signJobPool.Get().(*signJob)
	j.s, j.ks, j.t, j.ttl, j.inc, j.exp = s, ks, t, ttl, inc, exp
	j.owner = append(j.owner[:0], owner...)
	j.out = append(j.out[:0], out...)
	j.rdata, j.rdatas = j.rdata[:0], j.rdatas[:0]
	for _, rd := range rdatas {
		j.rdata = append(j.rdata, rd...)
	}
	at := 0
	for _, rd := range rdatas {
		j.rdatas = append(j.rdatas, j.rdata[at:at+len(rd)])
		at += len(rd)
	}
	signJobs <- j
	<-j.done
	copy(out, j.out)
	err := j.err
	j.s, j.ks, j.err = nil, nil, nil
	signJobPool.Put(j)
	return err
}

func (j *signJob) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("signing %s: %v", dns.TypeToString[j.t], r)
		}
	}()
	return j.s.signSet(j.ks, j.out, j.owner, j.t, j.ttl, j.inc, j.exp, j.rdatas)
}
