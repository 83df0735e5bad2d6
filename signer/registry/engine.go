package registry

// The registry's one write engine, in the spirit of etcd's concurrency.STM: a change
// is a function from what it read to what it writes. The engine owns the rest — the
// reads, the compare-and-swap, retries with backoff, the conflict metrics — and the
// invariants: every check (the change's own, then the quota) passes before any side
// effect (a lease, a write), and every write carries its audit entry in the same
// transaction. This file is the only one that calls etcd's Txn.

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxAttempts bounds the retries of one change against concurrent writers; between
// attempts a writer waits a random while that grows, so that contenders spread out.
const maxAttempts = 50

// A txn is one change: the keys it reads, and decide, which computes what to write
// from what it read. decide runs again on every attempt, so it writes nothing itself;
// what it hands back to its caller (the record it made) is the last attempt's.
type txn struct {
	keys   []string
	decide func(snapshot) (*plan, error)
	// from, when set, is taken as what the keys hold instead of reading them: a
	// snapshot a scan read, or a guess.
	from *snapshot
	// guess: from is a guess (that the keys are absent); a change refused on it, or a
	// transaction that finds it wrong, reads and decides again without counting a
	// conflict: a first enrollment of a new device then costs one transaction.
	guess bool
	// once: no retry; a conflict returns errConflicted (the caller's reads beside
	// keys no longer hold).
	once bool
}

// A plan is what a change writes; nil means nothing to write.
type plan struct {
	ops   []clientv3.Op
	audit AuditEntry // required with every write
	// charge, when set, is called once, after every check of the change passed and
	// before anything is written; what it took is given back when the change ends
	// without a write (refused on a later attempt, or conflicted out).
	charge func() (refund func(), err error)
	// leased, when set, is put under a new etcd lease granted once the change passed
	// every check (a refused request grants none). When its key is one of the keys
	// read, the lease of the value it replaces is revoked after the write, so a key
	// holds one lease however often it is written.
	leased *leasedPut
}

// leasedPut is a key put under a lease of ttl.
type leasedPut struct {
	key, value string
	ttl        time.Duration
}

// commit runs a change until it is written, refused, or has lost maxAttempts races,
// and returns the snapshot its write compared (what the keys held when written).
// Every attempt is one etcd round trip: a failed transaction returns what the keys
// hold now, and the next attempt decides from that.
func (r *Registry) commit(ctx context.Context, t txn) (snapshot, error) {
	// A member without a leader refuses at once rather than queue the write: during a
	// quorum loss nothing is proposed, so nothing is applied when quorum returns.
	ctx = clientv3.WithRequireLeader(ctx)
	var snap snapshot
	if t.from != nil {
		snap = *t.from
	} else {
		var err error
		if snap, err = r.read(ctx, t.keys, 0); err != nil {
			return snap, unavailable(err, false)
		}
	}
	onGuess := t.guess
	var lease clientv3.LeaseID
	var refund func() // of the quota charged
	written := false
	defer func() {
		if written {
			return
		}
		if lease != 0 { // a lease granted for nothing would live out its TTL
			r.revokeLease(ctx, lease)
		}
		if refund != nil {
			refund()
		}
	}()
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if attempt > 0 && !onGuess {
			txnConflicts.Inc()
			wait := time.Duration(mrand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
			select {
			case <-ctx.Done():
				return snap, ctx.Err()
			case <-time.After(wait):
			}
		}
		p, err := t.decide(snap)
		if err != nil && onGuess {
			// Refused on a guess (the tenant's record is there, just not read): read.
			if snap, err = r.read(ctx, t.keys, 0); err != nil {
				return snap, unavailable(err, false)
			}
			onGuess = false
			attempt-- // not a race lost
			continue
		}
		if err != nil || p == nil {
			return snap, err
		}
		if p.audit.Operation == "" {
			return snap, errors.New("registry: a change without its audit entry") // a bug, never written
		}
		if refund == nil && p.charge != nil {
			if refund, err = p.charge(); err != nil {
				return snap, err
			}
		}
		ops := append(p.ops[:len(p.ops):len(p.ops)], r.auditOp(p.audit))
		if p.leased != nil {
			if lease == 0 {
				granted, err := r.Client.Grant(ctx, int64(p.leased.ttl/time.Second)+1)
				if err != nil {
					return snap, unavailable(err, true)
				}
				lease = granted.ID
			}
			ops = append(ops, clientv3.OpPut(p.leased.key, p.leased.value, clientv3.WithLease(lease)))
		}
		cmps := make([]clientv3.Cmp, len(t.keys))
		elses := make([]clientv3.Op, len(t.keys))
		for i, k := range t.keys {
			cmps[i] = clientv3.Compare(clientv3.ModRevision(k), "=", snap.revs[i])
			elses[i] = clientv3.OpGet(k)
		}
		start := time.Now()
		resp, err := r.Client.Txn(ctx).If(cmps...).Then(ops...).Else(elses...).Commit()
		txnSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			return snap, unavailable(err, true)
		}
		if resp.Succeeded {
			written = true
			if p.leased != nil {
				for i, k := range t.keys {
					if k == p.leased.key && snap.leases[i] != 0 {
						r.revokeLease(ctx, clientv3.LeaseID(snap.leases[i]))
					}
				}
			}
			return snap, nil
		}
		if t.once {
			return snap, errConflicted
		}
		// Someone else wrote first (or the guess was wrong): start again from what is there now.
		snap = snapshotOf(resp.Responses)
		if onGuess {
			onGuess = false
			attempt--
		}
	}
	return snap, errConflicted
}

// pruneAudit deletes entries of the audit trail: the retention's deletes, the one
// write that carries no audit entry of its own (it would add to what it removes).
// Every op must be a delete within the trail; it returns how many keys went.
func (r *Registry) pruneAudit(ctx context.Context, deletes []clientv3.Op) (int64, error) {
	prefix := r.signerKey(kindAudit, "")
	end := clientv3.GetPrefixRangeEnd(prefix)
	for _, op := range deletes {
		k, e := string(op.KeyBytes()), string(op.RangeBytes())
		if !op.IsDelete() || !strings.HasPrefix(k, prefix) || e != "" && (e <= k || e > end) {
			return 0, fmt.Errorf("registry: pruning %q outside the audit trail", k) // a bug, never written
		}
	}
	resp, err := r.Client.Txn(clientv3.WithRequireLeader(ctx)).Then(deletes...).Commit()
	if err != nil {
		return 0, unavailable(err, true)
	}
	var n int64
	for _, rr := range resp.Responses {
		n += rr.GetResponseDeleteRange().Deleted
	}
	return n, nil
}

// revokeLease ends a lease the registry no longer needs, even when ctx has ended; a
// failure only lets the lease live out its TTL.
func (r *Registry) revokeLease(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r.Client.Revoke(rctx, id)
}

// unavailable says what a failed etcd request means for the caller: with no leader
// nothing was written; a write that timed out may still be applied by etcd, and
// retrying the same request is safe (every operation is idempotent).
func unavailable(err error, write bool) error {
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader) || strings.Contains(err.Error(), rpctypes.ErrNoLeader.Error()):
		return fmt.Errorf("etcd has no leader (quorum lost?); nothing was written: %w", err)
	case write && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrTimeout)):
		return fmt.Errorf("etcd did not confirm the write in time; it may still be applied, and retrying the same request is safe: %w", err)
	}
	return err
}

// snapshot is what one read found at keys: values (nil when absent), revisions and
// leases (0 for none).
type snapshot struct {
	values [][]byte
	revs   []int64
	leases []int64
}

// absent is the snapshot of n keys that do not exist.
func absent(n int) snapshot {
	return snapshot{values: make([][]byte, n), revs: make([]int64, n), leases: make([]int64, n)}
}

// read gets keys at one revision (rev, or the latest when 0): a plain Get for one
// key, one read-only transaction for several.
func (r *Registry) read(ctx context.Context, keys []string, rev int64) (snapshot, error) {
	if len(keys) == 1 {
		resp, err := r.Client.Get(ctx, keys[0], clientv3.WithRev(rev))
		if err != nil {
			return snapshot{}, err
		}
		return snapshotOf([]*etcdserverpb.ResponseOp{{Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: (*etcdserverpb.RangeResponse)(resp)}}}), nil
	}
	gets := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		gets[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
	}
	resp, err := r.Client.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return snapshot{}, err
	}
	return snapshotOf(resp.Responses), nil
}

func snapshotOf(responses []*etcdserverpb.ResponseOp) snapshot {
	s := absent(len(responses))
	for i, r := range responses {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			s.values[i], s.revs[i], s.leases[i] = kvs[0].Value, kvs[0].ModRevision, kvs[0].Lease
		}
	}
	return s
}
