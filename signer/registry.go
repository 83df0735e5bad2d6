package signer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"time"

	"github.com/deviceid/deviceid/record"

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

// ActiveCert returns the certificate of the device's active, unexpired credential for
// the key spki, or nil: what a retried enrollment of that key gets back instead of a
// second certificate.
func (r *Registry) ActiveCert(ctx context.Context, device string, spki []byte) []byte {
	d, _, err := r.Get(ctx, device)
	if err != nil {
		return nil
	}
	for _, c := range d.Credentials {
		if c.Status == record.StatusActive && c.Cert != nil && !c.Expired(time.Now()) && bytes.Equal(c.SPKI, spki) {
			return c.Cert
		}
	}
	return nil
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

// update applies change to the device's record (nil when there is none) and writes
// the result if it differs, in a transaction that compares the revision it read and,
// when another writer got there first, returns the record as it is now for the next
// attempt: one etcd round trip per attempt. change returns the new record, or nil to
// delete it. With assumeAbsent the first attempt guesses that there is no record yet
// (an enrollment of a new device) and needs no read at all.
func (r *Registry) update(ctx context.Context, device string, assumeAbsent bool, change func(*record.Device) (*record.Device, error)) (*record.Device, error) {
	return r.updateGuarded(ctx, device, assumeAbsent, nil, change)
}

// guard is more for an update's transaction: comparisons that must hold and
// operations done with the write. When a comparison fails, recheck says whether to
// try again (nil) or give up (an error).
type guard struct {
	cmps    []clientv3.Cmp
	ops     []clientv3.Op
	recheck func(ctx context.Context) error
}

func (r *Registry) updateGuarded(ctx context.Context, device string, assumeAbsent bool, g *guard, change func(*record.Device) (*record.Device, error)) (*record.Device, error) {
	device, err := record.DeviceName(device)
	if err != nil {
		return nil, invalid(err)
	}
	if _, err := record.DeviceOwner(device, r.Zone); err != nil {
		return nil, invalid(err)
	}
	key := record.DeviceKey(r.Prefix, r.Zone, device)
	var old *record.Device
	var rev int64
	if !assumeAbsent {
		if old, rev, err = r.get(ctx, key); err != nil {
			return nil, err
		}
	}
	for attempt := range maxAttempts {
		if attempt > 0 {
			txnConflicts.Inc()
			wait := time.Duration(mrand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(wait):
			}
		}
		var before []byte
		if old != nil {
			before, _ = json.Marshal(old)
		}
		updated, err := change(old)
		if err != nil {
			return nil, err
		}
		var op clientv3.Op
		if updated == nil {
			if old == nil && rev == 0 && !assumeAbsent {
				return nil, nil // deleting what is not there: done
			}
			op = clientv3.OpDelete(key)
		} else {
			if err := updated.Validate(); err != nil {
				return nil, invalid(err)
			}
			after, err := json.Marshal(updated)
			if err != nil {
				return nil, err
			}
			if old != nil && bytes.Equal(before, after) {
				return updated, nil // idempotent: nothing to write
			}
			op = clientv3.OpPut(key, string(after))
		}
		cmps, ops := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}, []clientv3.Op{op}
		if g != nil {
			cmps, ops = append(cmps, g.cmps...), append(ops, g.ops...)
		}
		start := time.Now()
		resp, err := r.Client.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(key)).Commit()
		txnSeconds.Observe(time.Since(start).Seconds())
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			return updated, nil
		}
		if g != nil {
			if err := g.recheck(ctx); err != nil {
				return nil, err
			}
		}
		// Someone else wrote first: start again from what is there now.
		assumeAbsent = false
		old, rev = nil, 0
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			if old, err = record.ParseDevice(kvs[0].Value); err != nil {
				return nil, fmt.Errorf("%w: %w", errStoredInvalid, err)
			}
			rev = kvs[0].ModRevision
		}
	}
	return nil, errConflicted
}

// Enroll adds an active credential to a device, creating the device if needed. A
// credential for a key the device already has active changes nothing; a key that was
// revoked is refused. The device's other credentials stay until they expire, unless
// supersede names keys (SPKIs) to revoke in the same write with reason "superseded".
func (r *Registry) Enroll(ctx context.Context, device string, cred record.Credential, supersede ...[]byte) (*record.Device, error) {
	change, err := enrollChange(cred, supersede)
	if err != nil {
		return nil, err
	}
	return r.update(ctx, device, true, change)
}

// enrollChange returns the change that adds cred (active) to a device record.
func enrollChange(cred record.Credential, supersede [][]byte) (func(*record.Device) (*record.Device, error), error) {
	cred.Status = record.StatusActive
	probe := record.Device{Version: record.Version, Credentials: []record.Credential{cred}}
	if err := probe.Validate(); err != nil { // fills SPKI and not_after from the certificate
		return nil, invalid(err)
	}
	cred = probe.Credentials[0]
	return func(d *record.Device) (*record.Device, error) {
		if d == nil {
			d = &record.Device{Version: record.Version}
		}
		for _, c := range d.Credentials {
			if bytes.Equal(c.SPKI, cred.SPKI) {
				if c.Status == record.StatusRevoked {
					return nil, ErrRevokedKey
				}
				if bytes.Equal(c.Cert, cred.Cert) {
					return d, nil
				}
			}
		}
		now := time.Now().UTC().Truncate(time.Second)
		for i := range d.Credentials {
			c := &d.Credentials[i]
			for _, old := range supersede {
				if bytes.Equal(c.SPKI, old) && c.Status == record.StatusActive && !bytes.Equal(old, cred.SPKI) {
					c.Status, c.RevokedAt, c.Reason = record.StatusRevoked, &now, "superseded"
				}
			}
		}
		if len(d.Credentials) >= record.MaxCredentials {
			return nil, invalid(fmt.Errorf("the device has %d credentials already, the most a record holds", len(d.Credentials)))
		}
		d.Credentials = append(d.Credentials, cred)
		return d, nil
	}, nil
}

// Revoke marks a device's credentials for the key spki revoked (all its credentials
// when spki is nil), with an RFC 5280 reason. Revoking what is revoked changes nothing.
func (r *Registry) Revoke(ctx context.Context, device string, spki []byte, reason string, at time.Time) (*record.Device, error) {
	if reason == "" {
		reason = "unspecified"
	}
	if !slices.Contains(Reasons, reason) {
		return nil, fmt.Errorf("%w: %q", ErrBadReason, reason)
	}
	at = at.UTC().Truncate(time.Second)
	d, err := r.update(ctx, device, false, func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		found := false
		for i := range d.Credentials {
			c := &d.Credentials[i]
			if spki != nil && !bytes.Equal(c.SPKI, spki) {
				continue
			}
			found = true
			if c.Status != record.StatusRevoked {
				c.Status, c.RevokedAt, c.Reason = record.StatusRevoked, &at, reason
			}
		}
		if !found && spki != nil {
			return nil, ErrNoSuchKey
		}
		return d, nil
	})
	if err == nil {
		revocations.Inc()
	}
	return d, err
}

// Delete removes a device's record. Deleting a device that is not there succeeds.
func (r *Registry) Delete(ctx context.Context, device string) error {
	_, err := r.update(ctx, device, false, func(*record.Device) (*record.Device, error) { return nil, nil })
	return err
}

// List returns up to limit device names after the name after (in key order), and
// the name to pass as after for the next page ("" at the end).
func (r *Registry) List(ctx context.Context, after string, limit int) ([]string, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	prefix := record.DeviceKey(r.Prefix, r.Zone, "")
	from := prefix
	if after != "" {
		from = prefix + after + "\x00"
	}
	resp, err := r.Client.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
		clientv3.WithLimit(int64(limit)), clientv3.WithKeysOnly())
	if err != nil {
		return nil, "", err
	}
	names := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		names = append(names, string(kv.Key[len(prefix):]))
	}
	next := ""
	if resp.More && len(names) > 0 {
		next = names[len(names)-1]
	}
	return names, next, nil
}

// PutCA publishes the CA certificate under P/<zone>/ca/<aki> for discovery.
func (r *Registry) PutCA(ctx context.Context, ca *CA) error {
	key := record.CAKey(r.Prefix, r.Zone, ca.AKI())
	_, err := r.Client.Put(ctx, key, string(ca.PEM()))
	return err
}
