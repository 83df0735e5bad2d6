package deviceid

import (
	"bytes"
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// signAheadTick is how often the background signer visits every name to renew
// signatures and withdraw records that have expired: one shard at a time, so that a
// visit never holds the CPU from queries for more than a moment. A load and a
// reload wake it for a full pass.
const signAheadTick = 10 * time.Second

// signBatch bounds the entries copied out of a shard at a time.
const signBatch = 4096

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
		ks := zd.apex.Load().keys
		for _, e := range due {
			sigs, err := z.makeSigs(ks, e.owner(), e.rrset(), now, false)
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
			a, err := z.newApex(zd.revision.Load(), old, old.keys, now)
			if err != nil {
				z.apexRetry = now.Add(renewRetry)
				log.Warningf("zone %s: %v; retrying in %s", z.origin, err, renewRetry)
			}
			z.storeApex(zd, a)
			return
		}
	}
}

// carrySigs copies into the new data of a full reload the signatures of the names
// whose RRsets did not change, so that a reload signs only what changed.
func (z *zone) carrySigs(old, zd *zoneData, now time.Time) {
	if old == nil || z.signer == nil || !sameZSK(old.apex.Load().keys, zd.apex.Load().keys) {
		return // signatures by other keys are not carried
	}
	ns := now.UnixNano()
	zd.st.modifyAll(func(e entry) {
		old.st.view(string(e.owner()), func(o entry) {
			if inc, exp := o.signed(); inc != 0 && o.flags() == e.flags() && bytes.Equal(o.rrset(), e.rrset()) && fresh(exp, ns) {
				e.setSigs(o.sigs())
			}
		})
	})
}
