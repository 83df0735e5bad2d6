package deviceid

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// signAheadTick is how often the background signer visits every name to renew
// signatures and withdraw records that have expired: one shard at a time, so that a
// visit never holds the CPU from queries for more than a moment. A load and a
// reload wake it for a full pass.
const signAheadTick = 10 * time.Second

// signBatch bounds the entries copied out of a shard at a time.
const signBatch = 4096

// entrySigs are the signatures of one entry: the TLSA RRset's, then the NSEC's.
type entrySigs struct {
	inc, exp uint32
	sigs     []byte // 2 × nz signatures
}

// into writes the signatures into entry e.
func (es *entrySigs) into(e entry, nz int) {
	binary.BigEndian.PutUint32(e[hdrInc:], es.inc)
	binary.BigEndian.PutUint32(e[hdrExp:], es.exp)
	copy(e[len(e)-2*nz*sigSize:], es.sigs)
}

// signAhead runs the zone's background signer until ctx ends: after a full load it
// signs every name that exists; from then on it renews signatures spread over each
// quarter of their validity and withdraws records that expire. Its goroutines yield
// after every signature, so that queries waiting for the CPU go first.
func (z *zone) signAhead(ctx context.Context) {
	t := time.NewTicker(signAheadTick / storeShards)
	defer t.Stop()
	next := 0
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-z.kick:
			full = true
		}
		var err error
		if zd := z.current(); full || zd == nil || !zd.passDone.Load() {
			_, err = z.maintain(z.now())
		} else {
			if next == 0 {
				z.renewApex(zd, z.now())
			}
			_, err = z.maintainShard(zd, next, z.now())
			next = (next + 1) % storeShards
		}
		if err != nil {
			log.Warningf("zone %s: signing ahead failed, serving the signatures there are and retrying in %s: %v", z.origin, renewRetry, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(renewRetry):
			}
		}
	}
}

// maintain makes the signatures that are missing or due at now, on every core, and
// withdraws records that have expired. It returns how many names it signed. The
// first run after a load that leaves nothing unsigned completes the first pass.
func (z *zone) maintain(now time.Time) (int, error) {
	zd := z.current()
	if zd == nil || z.signer == nil {
		return 0, nil
	}
	z.renewApex(zd, now)
	var next, signed atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < storeShards; i = next.Add(1) - 1 {
				n, err := z.maintainShard(zd, int(i), now)
				signed.Add(int64(n))
				if err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return int(signed.Load()), first
	}
	if !zd.passDone.Load() && z.current() == zd {
		zd.passDone.Store(true)
		firstPass.WithLabelValues(z.origin).Set(1)
		log.Infof("zone %s: first signing pass done: %d names signed ahead, %s after the load", z.origin, zd.st.len(), z.now().Sub(zd.loadedAt).Round(time.Millisecond))
	}
	return int(signed.Load()), nil
}

// maintainShard does maintain's work for shard i.
func (z *zone) maintainShard(zd *zoneData, i int, now time.Time) (int, error) {
	ns := now.UnixNano()
	signed := 0
	for {
		var due []entry
		var expired []string
		z.mu.RLock()
		if z.data != zd {
			z.mu.RUnlock()
			return signed, nil
		}
		zd.st.each(i, func(e entry) bool {
			switch {
			case !allCurrent(e.rrset(), ns):
				expired = append(expired, string(e.owner()))
			case z.signer.due(e, ns):
				due = append(due, bytes.Clone(e))
			}
			return len(due)+len(expired) < signBatch
		})
		z.mu.RUnlock()
		for _, owner := range expired {
			z.withdrawExpired(zd, owner, ns)
		}
		for _, e := range due {
			sigs, err := z.makeSigs(e.owner(), e.rrset(), now, false)
			if err != nil {
				return signed, err
			}
			z.storeSigs(zd, e, sigs)
			signed++
			runtime.Gosched()
		}
		if len(due)+len(expired) < signBatch {
			return signed, nil
		}
	}
}

// withdrawExpired drops the records of owner that are no longer published at now,
// and the name with them when none is left.
func (z *zone) withdrawExpired(zd *zoneData, owner string, now int64) {
	z.write.Lock()
	defer z.write.Unlock()
	var rr []byte
	var device bool
	zd.st.view(owner, func(e entry) {
		device = e.flags()&flagDevice != 0
		rr = currentRecords(e.rrset(), now)
	})
	z.put(zd, owner, rr, device, nil)
}

// currentRecords returns the records of rr published at now.
func currentRecords(rr []byte, now int64) []byte {
	var out []byte
	eachRecord(rr, func(until int64, wire []byte) {
		if until == 0 || now < until {
			out = binary.BigEndian.AppendUint64(out, uint64(until))
			out = append(out, wire...)
		}
	})
	return out
}

// renewApex signs again the apex RRsets whose signatures are missing or due; after
// a failure it waits renewRetry before the next try.
func (z *zone) renewApex(zd *zoneData, now time.Time) {
	z.write.Lock()
	defer z.write.Unlock()
	if now.Before(z.apexRetry) {
		return
	}
	old := zd.apex.Load()
	for _, set := range old.sets {
		if set.sigs == nil || now.Sub(set.made) >= z.signer.validity/4 {
			a, err := z.newApex(zd.revision.Load(), old, now)
			if err != nil {
				z.apexRetry = now.Add(renewRetry)
				log.Warningf("zone %s: %v; retrying in %s", z.origin, err, renewRetry)
			}
			zd.apex.Store(a)
			return
		}
	}
}

// signEntry signs the entry of owner now and stores the signatures.
func (z *zone) signEntry(zd *zoneData, owner string, now time.Time) error {
	var e entry
	zd.st.view(owner, func(cur entry) { e = bytes.Clone(cur) })
	if e == nil {
		return nil
	}
	sigs, err := z.makeSigs(e.owner(), e.rrset(), now, false)
	if err != nil {
		return err
	}
	z.storeSigs(zd, e, sigs)
	return nil
}

// makeSigs signs the TLSA RRset rr (when not empty) at owner and the NSEC at owner.
// On the query path the signatures are made by the signing goroutines.
func (z *zone) makeSigs(owner, rr []byte, now time.Time, query bool) (*entrySigs, error) {
	s := z.signer
	nz := s.nz()
	inc, exp := s.times(now)
	es := &entrySigs{inc: inc, exp: exp, sigs: make([]byte, 2*nz*sigSize)}
	sign := s.signSet
	if query {
		sign = s.signNow
	}
	var name [256]byte
	n, err := dns.PackDomainName(string(owner), name[:], 0, nil, false)
	if err != nil {
		return nil, err
	}
	wire := name[:n]
	if len(rr) > 0 {
		var rdatas [][]byte
		var ttl uint32
		eachRecord(rr, func(_ int64, w []byte) {
			ttl = binary.BigEndian.Uint32(w[6:])
			rdatas = append(rdatas, w[12:])
		})
		slices.SortFunc(rdatas, bytes.Compare)
		rdatas = slices.CompactFunc(rdatas, bytes.Equal)
		if err := sign(es.sigs[:nz*sigSize], wire, dns.TypeTLSA, ttl, inc, exp, rdatas); err != nil {
			return nil, err
		}
	}
	nsec := appendNSEC(nil, wire, len(rr) > 0)
	if err := sign(es.sigs[nz*sigSize:], wire, dns.TypeNSEC, z.cfg.ttl, inc, exp, [][]byte{nsec}); err != nil {
		return nil, err
	}
	return es, nil
}

// storeSigs writes sigs into the entry of its owner if it still holds the RRset they
// were made over.
func (z *zone) storeSigs(zd *zoneData, signed entry, sigs *entrySigs) {
	z.mu.RLock()
	defer z.mu.RUnlock()
	if z.data != zd {
		return
	}
	zd.st.modify(string(signed.owner()), func(e entry) {
		if e.flags() == signed.flags() && bytes.Equal(e.rrset(), signed.rrset()) {
			sigs.into(e, zd.st.nz)
		}
	})
}

// carrySigs copies into the new data of a full reload the signatures of the names
// whose RRsets did not change, so that a reload signs only what changed.
func (z *zone) carrySigs(old, zd *zoneData, now time.Time) {
	if old == nil || z.signer == nil {
		return
	}
	ns := now.UnixNano()
	nz := zd.st.nz
	for i := range storeShards {
		sh := &zd.st.shards[i]
		sh.mu.Lock()
		for _, r := range sh.refs {
			z.carryOne(old, sh.entry(r), nz, ns)
		}
		for _, r := range sh.clash {
			z.carryOne(old, sh.entry(r), nz, ns)
		}
		sh.mu.Unlock()
	}
}

func (z *zone) carryOne(old *zoneData, e entry, nz int, now int64) {
	old.st.view(string(e.owner()), func(o entry) {
		if o.signed() && o.flags() == e.flags() && bytes.Equal(o.rrset(), e.rrset()) && z.signer.fresh(o.expiration(), now) {
			copySigs(e, o, nz)
		}
	})
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
