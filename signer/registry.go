package signer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Errors a caller can tell apart.
var (
	ErrNotFound      = errors.New("no such device")
	ErrInvalid       = errors.New("invalid request")
	ErrBadReason     = fmt.Errorf("%w: not an RFC 5280 revocation reason", ErrInvalid)
	ErrNoSuchKey     = errors.New("the device has no credential with that key")
	ErrRevokedKey    = errors.New("this key was revoked for the device; enroll a new key")
	errConflicted    = errors.New("the record kept changing; try again")
	errStoredInvalid = errors.New("the stored record is invalid")
)

// invalid marks err as the caller's mistake.
func invalid(err error) error { return fmt.Errorf("%w: %w", ErrInvalid, err) }

// Reasons are the RFC 5280 §5.3.1 CRLReason names accepted for a revocation.
var Reasons = []string{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
}

// maxAttempts bounds the retries of one update against concurrent writers; between
// attempts a writer waits a random while that grows, so that contenders spread out.
const maxAttempts = 50

// Registry reads and writes the device records of one zone in etcd. Every write is
// one transaction that compares the record's revision, retried when another writer
// got there first, so concurrent writers never lose an update.
type Registry struct {
	Client *clientv3.Client
	Prefix string
	Zone   string
}

// ZonePrefix is the etcd prefix of the zone's records, P/<zone>/.
func (r *Registry) ZonePrefix() string { return record.ZonePrefix(r.Prefix, r.Zone) }

// Get returns a device's record and the revision it was last changed at.
func (r *Registry) Get(ctx context.Context, device string) (*record.Device, int64, error) {
	device, err := record.DeviceName(device)
	if err != nil {
		return nil, 0, invalid(err)
	}
	d, rev, err := r.get(ctx, record.DeviceKey(r.Prefix, r.Zone, device))
	if err == nil && d == nil {
		err = ErrNotFound
	}
	return d, rev, err
}

// get reads a key: a nil device and revision 0 when absent.
func (r *Registry) get(ctx context.Context, key string) (*record.Device, int64, error) {
	resp, err := r.Client.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	d, err := record.ParseDevice(resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", errStoredInvalid, err)
	}
	return d, resp.Kvs[0].ModRevision, nil
}

// change computes a device's new record from the one read (nil when there is none)
// and the values of the side keys read with it (nil when absent). It returns the new
// record (nil to delete it) and operations to commit in the same transaction.
type change func(d *record.Device, side [][]byte) (*record.Device, []clientv3.Op, error)

// update is the registry's one read-modify-write: it reads the device's record and the
// side keys, applies change, and writes the result in a transaction that compares the
// revisions it read. When another writer got there first, the failed transaction
// returns what is there now, and the next attempt starts from that: one etcd round trip
// per attempt. With assumeAbsent the first attempt guesses that none of the keys exist
// and reads nothing: a first enrollment of a new device costs one transaction, and a
// wrong guess is not counted as a conflict.
func (r *Registry) update(ctx context.Context, device string, assumeAbsent bool, side []string, f change) (*record.Device, error) {
	device, err := record.DeviceName(device)
	if err != nil {
		return nil, invalid(err)
	}
	if _, err := record.DeviceOwner(device, r.Zone); err != nil {
		return nil, invalid(err)
	}
	// A member without a leader refuses at once rather than queue the write: during a
	// quorum loss nothing is proposed, so nothing is applied when quorum returns.
	ctx = clientv3.WithRequireLeader(ctx)
	keys := append([]string{record.DeviceKey(r.Prefix, r.Zone, device)}, side...)
	snap := snapshot{values: make([][]byte, len(keys)), revs: make([]int64, len(keys))}
	if !assumeAbsent {
		if snap, err = r.read(ctx, keys); err != nil {
			return nil, unavailable(err, false)
		}
	}
	guessed := assumeAbsent // the last attempt failed on a guess, not a race
	for attempt := range maxAttempts {
		if attempt > 0 && guessed {
			guessed = false
		} else if attempt > 0 {
			txnConflicts.Inc()
			wait := time.Duration(mrand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
			}
		}
		var old *record.Device
		if snap.values[0] != nil {
			if old, err = record.ParseDevice(snap.values[0]); err != nil {
				return nil, fmt.Errorf("%w: %w", errStoredInvalid, err)
			}
		}
		updated, ops, err := f(old, snap.values[1:])
		if err != nil {
			return nil, err
		}
		var op clientv3.Op
		if updated == nil {
			if snap.values[0] == nil && len(ops) == 0 {
				return nil, nil // deleting what is not there: done
			}
			op = clientv3.OpDelete(keys[0])
		} else {
			if err := updated.Validate(); err != nil {
				return nil, invalid(err)
			}
			after, err := json.Marshal(updated)
			if err != nil {
				return nil, err
			}
			if bytes.Equal(snap.values[0], after) && len(ops) == 0 {
				return updated, nil // idempotent: nothing to write
			}
			op = clientv3.OpPut(keys[0], string(after))
		}
		cmps := make([]clientv3.Cmp, len(keys))
		elses := make([]clientv3.Op, len(keys))
		for i, k := range keys {
			cmps[i] = clientv3.Compare(clientv3.ModRevision(k), "=", snap.revs[i])
			elses[i] = clientv3.OpGet(k)
		}
		start := time.Now()
		resp, err := r.Client.Txn(ctx).If(cmps...).Then(append([]clientv3.Op{op}, ops...)...).Else(elses...).Commit()
		txnSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			return nil, unavailable(err, true)
		}
		if resp.Succeeded {
			return updated, nil
		}
		// Someone else wrote first (or the guess was wrong): start again from what is there now.
		snap = snapshotOf(resp.Responses)
	}
	return nil, errConflicted
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

// snapshot is what one read found at keys: values (nil when absent) and revisions.
type snapshot struct {
	values [][]byte
	revs   []int64
}

// read gets keys at one revision: a plain Get for one key, one read-only
// transaction for several.
func (r *Registry) read(ctx context.Context, keys []string) (snapshot, error) {
	if len(keys) == 1 {
		resp, err := r.Client.Get(ctx, keys[0])
		if err != nil {
			return snapshot{}, err
		}
		return snapshotOf([]*etcdserverpb.ResponseOp{{Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: (*etcdserverpb.RangeResponse)(resp)}}}), nil
	}
	gets := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		gets[i] = clientv3.OpGet(k)
	}
	resp, err := r.Client.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return snapshot{}, err
	}
	return snapshotOf(resp.Responses), nil
}

func snapshotOf(responses []*etcdserverpb.ResponseOp) snapshot {
	s := snapshot{values: make([][]byte, len(responses)), revs: make([]int64, len(responses))}
	for i, r := range responses {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			s.values[i], s.revs[i] = kvs[0].Value, kvs[0].ModRevision
		}
	}
	return s
}

// change1 adapts a change of the record alone.
func change1(f func(*record.Device) (*record.Device, error)) change {
	return func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
		d, err := f(d)
		return d, nil, err
	}
}

// Revoke marks a device's credentials for the key whose SPKI has the SHA-256 digest
// spkiSHA256 revoked (all its credentials when it is nil), with an RFC 5280 reason.
// Revoking what is revoked changes nothing.
func (r *Registry) Revoke(ctx context.Context, device string, spkiSHA256 []byte, reason string, at time.Time) (*record.Device, error) {
	if reason == "" {
		reason = "unspecified"
	}
	if !slices.Contains(Reasons, reason) {
		return nil, fmt.Errorf("%w: %q", ErrBadReason, reason)
	}
	if spkiSHA256 != nil && len(spkiSHA256) != sha256.Size {
		return nil, invalid(errors.New("the key's SHA-256 digest is not 32 bytes (64 hex digits)"))
	}
	at = at.UTC().Truncate(time.Second)
	d, err := r.update(ctx, device, false, nil, change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		found := false
		for i := range d.Credentials {
			c := &d.Credentials[i]
			if sum := sha256.Sum256(c.SPKI); spkiSHA256 != nil && !bytes.Equal(sum[:], spkiSHA256) {
				continue
			}
			found = true
			if c.Status != record.StatusRevoked {
				c.Status, c.RevokedAt, c.Reason = record.StatusRevoked, &at, reason
			}
		}
		if !found && spkiSHA256 != nil {
			return nil, ErrNoSuchKey
		}
		return d, nil
	}))
	if err == nil {
		revocations.Inc()
	}
	return d, err
}

// Delete removes a device's record, an invalid one too; ErrNotFound when there is none.
func (r *Registry) Delete(ctx context.Context, device string) error {
	device, err := record.DeviceName(device)
	if err != nil {
		return invalid(err)
	}
	resp, err := r.Client.Delete(clientv3.WithRequireLeader(ctx), record.DeviceKey(r.Prefix, r.Zone, device))
	if err != nil {
		return unavailable(err, true)
	}
	if resp.Deleted == 0 {
		return ErrNotFound
	}
	return nil
}

// List returns up to limit device names after the name after (in key order), and
// the name to pass as after for the next page ("" at the end).
func (r *Registry) List(ctx context.Context, after string, limit int) ([]string, string, error) {
	entries, next, err := r.list(ctx, after, limit, true)
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	return names, next, err
}

// Entry is one listed device: its record, or why the stored record is invalid.
type Entry struct {
	Name   string
	Device *record.Device
	Err    error
}

// ListRecords is List with the records.
func (r *Registry) ListRecords(ctx context.Context, after string, limit int) ([]Entry, string, error) {
	return r.list(ctx, after, limit, false)
}

func (r *Registry) list(ctx context.Context, after string, limit int, keysOnly bool) ([]Entry, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	prefix := record.DeviceKey(r.Prefix, r.Zone, "")
	from := prefix
	if after != "" {
		from = prefix + after + "\x00"
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(int64(limit))}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	resp, err := r.Client.Get(ctx, from, opts...)
	if err != nil {
		return nil, "", err
	}
	entries := make([]Entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e := Entry{Name: string(kv.Key[len(prefix):])}
		if !keysOnly {
			e.Device, e.Err = record.ParseDevice(kv.Value)
		}
		entries = append(entries, e)
	}
	next := ""
	if resp.More && len(entries) > 0 {
		next = entries[len(entries)-1].Name
	}
	return entries, next, nil
}

// PutCA publishes the CA certificate under P/<zone>/ca/<aki> for discovery.
func (r *Registry) PutCA(ctx context.Context, ca *CA) error {
	key := record.CAKey(r.Prefix, r.Zone, ca.AKI())
	_, err := r.Client.Put(ctx, key, string(ca.PEM()))
	return err
}
