package deviceid

import (
	"context"
	"fmt"
	"hash/maphash"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// renewRetry is how long a failed renewal waits before the next try.
const renewRetry = time.Minute

// inceptionSkew backdates signatures for validators whose clocks run behind.
const inceptionSkew = time.Hour

// signer makes and caches the RRSIGs of one zone. Each RRset is signed on first use
// and cached; a signature that has lived a quarter of its validity is made again in
// the background the next time it is used, so the query path signs only what it sees
// for the first time (or after eviction).
type signer struct {
	origin   string
	keys     *keySet
	validity time.Duration
	// Positive answers and NODATA proofs of names that exist, and proofs of names that
	// do not exist, are cached apart: random names must not evict device signatures.
	exist, nonexist *sigCache

	made, failed, hits, misses prometheus.Counter
}

func newSigner(origin string, keys *keySet, validity time.Duration, cacheSize int) *signer {
	return &signer{
		origin: origin, keys: keys, validity: validity,
		exist:    newSigCache(cacheSize),
		nonexist: newSigCache(max(cacheSize/4, 1)),
		made:     signatures.WithLabelValues(origin),
		failed:   signFailures.WithLabelValues(origin),
		hits:     cacheHits.WithLabelValues(origin),
		misses:   cacheMisses.WithLabelValues(origin),
	}
}

// signMode says what an RRset's signatures are for, and so what of them to keep.
type signMode uint8

const (
	forAnswer    signMode = iota // the answer section: owner is the question name
	forNSEC                      // an NSEC at the question name: keep the packed NSEC too
	forAuthority                 // the SOA in the authority section: owner is the apex
	forMessage                   // an apex answer assembled as a message: keep the records
)

// sigs are the RRSIGs over one RRset, packed for an answer. The cache holds many: they
// keep little besides bytes, which the garbage collector need not scan.
type sigs struct {
	n       uint16       // how many RRSIGs
	wire    []byte       // the RRSIGs packed; owner compressed to the question name but forAuthority
	set     []byte       // forNSEC: the NSEC packed the same way
	rrs     []dns.RR     // forMessage: the RRSIGs as records
	refresh atomic.Int64 // Unix ns after which they are made again, in the background
	expire  int64        // Unix ns of the earliest RRSIG expiration
	busy    atomic.Bool
}

var hashSeed = maphash.MakeSeed()

// rrsetKey identifies an RRset by its owner, type and packed records.
func rrsetKey(owner string, t uint16, packed ...[]byte) uint64 {
	var h maphash.Hash
	h.SetSeed(hashSeed)
	h.WriteString(owner)
	h.WriteByte(byte(t >> 8))
	h.WriteByte(byte(t))
	for _, p := range packed {
		h.Write(p)
	}
	return h.Sum64()
}

// signed returns the RRSIGs over the RRset that build makes (owner in lower case),
// from cache c under key k.
func (s *signer) signed(c *sigCache, k uint64, mode signMode, now time.Time, build func() []dns.RR) (*sigs, error) {
	k = k*31 + uint64(mode) // one RRset is kept once for each use: they keep different parts
	ns := now.UnixNano()
	if e := c.get(k); e != nil && ns < e.expire-int64(inceptionSkew) {
		s.hits.Inc()
		if ns > e.refresh.Load() && e.busy.CompareAndSwap(false, true) {
			go func() {
				rrset := build()
				if fresh, err := s.sign(rrset, mode, now); err == nil {
					c.put(k, fresh)
				} else {
					// The cached signatures stay valid for a while yet (an HSM that went
					// away may come back): try again in a minute, not on every query.
					e.refresh.Store(now.Add(renewRetry).UnixNano())
					e.busy.Store(false)
					log.Warningf("zone %s: renewing the signatures of %s %s failed, serving the cached ones (valid until %s): %v",
						s.origin, rrset[0].Header().Name, dns.TypeToString[rrset[0].Header().Rrtype], time.Unix(0, e.expire).UTC().Format(time.RFC3339), err)
				}
			}()
		}
		return e, nil
	}
	s.misses.Inc()
	e, err := s.sign(build(), mode, now)
	if err != nil {
		return nil, err
	}
	c.put(k, e)
	return e, nil
}

// signJob is one call of signNow, handed to a signing goroutine.
type signJob struct {
	s     *signer
	rrset []dns.RR
	mode  signMode
	now   time.Time
	e     *sigs
	err   error
	done  chan struct{}
}

var (
	signJobs     = make(chan *signJob)
	startSigning sync.Once
	signJobPool  = sync.Pool{New: func() any { return &signJob{done: make(chan struct{}, 1)} }}
)

// sign makes the RRSIGs over rrset on one of GOMAXPROCS long-lived goroutines. The DNS
// server runs each query on a new goroutine with a small stack; a signature needs a
// deeper one, and growing it on every query (proofs of nonexistence sign on every
// query) cost a fifth as much as the signature itself.
func (s *signer) sign(rrset []dns.RR, mode signMode, now time.Time) (*sigs, error) {
	startSigning.Do(func() {
		for range runtime.GOMAXPROCS(0) {
			go func() {
				for j := range signJobs {
					j.e, j.err = j.s.signRecovering(j.rrset, j.mode, j.now)
					j.done <- struct{}{}
				}
			}()
		}
	})
	j := signJobPool.Get().(*signJob)
	j.s, j.rrset, j.mode, j.now = s, rrset, mode, now
	signJobs <- j
	<-j.done
	e, err := j.e, j.err
	*j = signJob{done: j.done}
	signJobPool.Put(j)
	return e, err
}

// signRecovering is signNow with a panic turned into an error: the server recovers a
// panic on a query's goroutine, but not on these, which serve every zone.
func (s *signer) signRecovering(rrset []dns.RR, mode signMode, now time.Time) (e *sigs, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("signing %s %s: %v", rrset[0].Header().Name, dns.TypeToString[rrset[0].Header().Rrtype], r)
		}
	}()
	return s.signNow(rrset, mode, now)
}

// signNow makes the RRSIGs over rrset with the keys for its type.
func (s *signer) signNow(rrset []dns.RR, mode signMode, now time.Time) (*sigs, error) {
	h := rrset[0].Header()
	inception, expiration := now.Add(-inceptionSkew), now.Add(s.validity)
	e := &sigs{expire: expiration.UnixNano()}
	e.refresh.Store(now.Add(s.validity / 4).UnixNano())
	for _, k := range s.keys.signers(h.Rrtype) {
		sig := &dns.RRSIG{
			Algorithm:  k.dnskey.Algorithm,
			Inception:  uint32(inception.Unix()),
			Expiration: uint32(expiration.Unix()),
			KeyTag:     k.tag,
			SignerName: s.origin,
		}
		sigRdata, rdatas, err := signRRset(k, sig, rrset)
		if err != nil {
			s.failed.Inc()
			return nil, err
		}
		s.made.Inc()
		e.n++
		switch mode {
		case forMessage:
			e.rrs = append(e.rrs, sig)
		case forAuthority:
			e.wire = append(e.wire, packRR(sig)...)
		default:
			e.wire = append(e.wire, atQuestion(dns.TypeRRSIG, h.Class, h.Ttl, sigRdata)...)
		}
		if mode == forNSEC && e.set == nil {
			for _, rdata := range rdatas {
				e.set = append(e.set, atQuestion(h.Rrtype, h.Class, h.Ttl, rdata)...)
			}
		}
	}
	return e, nil
}

// withSigs returns copies of rrset and its signatures with owner name qname, for
// answers assembled as messages.
func withSigs(rrset []dns.RR, e *sigs, qname string) []dns.RR {
	out := make([]dns.RR, 0, len(rrset)+len(e.rrs))
	for _, rr := range append(rrset[:len(rrset):len(rrset)], e.rrs...) {
		rr = dns.Copy(rr)
		rr.Header().Name = qname
		out = append(out, rr)
	}
	return out
}

// sweep drops expired signatures every half minute and reports the earliest
// expiration in use, until ctx ends.
func (s *signer) sweep(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		earliest := s.exist.sweep(now)
		if e := s.nonexist.sweep(now); e != 0 && (earliest == 0 || e < earliest) {
			earliest = e
		}
		if earliest != 0 {
			signatureExpiry.WithLabelValues(s.origin).Set(float64(earliest-now) / 1e9)
		}
	}
}

// sigCache is a bounded map of signatures. When full it drops an arbitrary entry
// (Go's map iteration order is random): no bookkeeping on the query path, and a
// dropped entry costs one signature.
type sigCache struct {
	mu   sync.RWMutex
	m    map[uint64]*sigs
	size int
}

func newSigCache(size int) *sigCache {
	return &sigCache{m: make(map[uint64]*sigs), size: size}
}

func (c *sigCache) get(k uint64) *sigs {
	c.mu.RLock()
	e := c.m[k]
	c.mu.RUnlock()
	return e
}

func (c *sigCache) put(k uint64, e *sigs) {
	c.mu.Lock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.size {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = e
	c.mu.Unlock()
}

// sweep drops expired entries and returns the earliest expiration left (0 if none).
// It scans under the read lock, so queries go on meanwhile, and deletes after.
func (c *sigCache) sweep(now int64) int64 {
	var earliest int64
	var expired []uint64
	c.mu.RLock()
	for k, e := range c.m {
		if now >= e.expire-int64(inceptionSkew) {
			expired = append(expired, k)
		} else if earliest == 0 || e.expire < earliest {
			earliest = e.expire
		}
	}
	c.mu.RUnlock()
	c.mu.Lock()
	for _, k := range expired {
		if e := c.m[k]; e != nil && now >= e.expire-int64(inceptionSkew) { // not replaced since
			delete(c.m, k)
		}
	}
	c.mu.Unlock()
	return earliest
}
