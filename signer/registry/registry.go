// Package registry is the core of deviceid's signer: the device records of one zone in
// etcd, which the CoreDNS plugin serves, and everything that changes them — the
// lifecycle, tenants and their tokens, enrollment and transfer codes, services,
// enrollment (with package ca), search, the audit trail, the tenant index and the
// quotas (docs/design.md). It never speaks HTTP: package httpapi is its HTTPS shell,
// and the CLI uses it directly too. Its errors are in errors.go.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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
	Now    func() time.Time // nil: time.Now
	// Quotas bound the writes of tenants and devices; nil: no bound.
	Quotas *Quotas

	// tenantsSeen holds the tenant records last read by a write (key → seenKey), for the
	// next first enrollment's guess: the common case, a tenant's new device, is then one
	// transaction.
	tenantsSeen sync.Map
}

// seenKey is a value read from etcd and its revision.
type seenKey struct {
	value []byte
	rev   int64
}

func (r *Registry) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// signerKey is the key of one of the signer's own records, P/_signer/<zone>/<kind>/<name>:
// outside P/<zone>/, which the DNS side reads, so it is never served or logged as an
// invalid record.
func (r *Registry) signerKey(kind, name string) string {
	return strings.TrimSuffix(r.Prefix, "/") + "/_signer/" + strings.TrimSuffix(record.Zone(r.Zone), ".") + "/" + kind + "/" + name
}

// Kinds of the signer's own records.
const (
	kindCode     = "code"           // a device's enrollment code
	kindTransfer = "transfer"       // a device's pending transfer
	kindTenant   = "tenant"         // a tenant
	kindToken    = "token"          // a tenant's API token
	kindIndex    = "tenant-devices" // <tenant>/<device>: the devices of a tenant
	kindAudit    = "audit"          // the audit trail
)

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
		return nil, 0, fmt.Errorf("%w: %w", ErrStoredInvalid, err)
	}
	return d, resp.Kvs[0].ModRevision, nil
}

// change computes a device's new record from the one read (nil when there is none)
// and the values of the side keys read with it (nil when absent). It returns the new
// record (nil to delete it) and operations to commit in the same transaction.
type change func(d *record.Device, side [][]byte) (*record.Device, []clientv3.Op, error)

// write is one change of a device's record, by an actor, as one transaction.
type write struct {
	actor     Actor
	operation string // what the audit trail calls it: "device.suspend", ...
	device    string
	// assumeAbsent guesses that none of the keys exist on the first attempt, which
	// then reads nothing: a first enrollment of a new device costs one transaction,
	// and a wrong guess is not counted as a conflict.
	assumeAbsent bool
	side         []string // other keys read with the record and compared when writing
	// owner is the tenant a record created or transferred by this write belongs to;
	// its tenant record is read and compared, and must be enabled.
	owner string
	// othersDevice: the change itself decides about a device another tenant holds (a
	// transfer, by its code; a registration, which answers that the name is taken),
	// instead of the write answering "not found".
	othersDevice bool
	change       change
	detail       string // for the audit trail: the reason of a revocation, the key, ...
	// service: device names a service (_8883._tcp.mqtt.acme) whose record is changed.
	service bool
	// leaseKey, when set, is put with leaseValue's value under an etcd lease of
	// lease granted once the change has passed every check (a refused request grants
	// none); the lease of the value it replaces is revoked once the write is done, so a
	// key holds one lease however often it is written.
	leaseKey   string
	leaseValue func() string
	lease      time.Duration
}

// recordKey checks the name of a device (or a service) and returns its etcd key and
// its canonical name.
func (r *Registry) recordKey(service bool, name string) (string, string, error) {
	if service {
		name, err := record.ServiceName(name)
		if err == nil {
			_, err = record.ServiceOwner(name, r.Zone)
		}
		if err != nil {
			return "", "", invalid(err)
		}
		return record.ServiceKey(r.Prefix, r.Zone, name), name, nil
	}
	name, err := record.DeviceName(name)
	if err == nil {
		_, err = record.DeviceOwner(name, r.Zone)
	}
	if err != nil {
		return "", "", invalid(err)
	}
	return record.DeviceKey(r.Prefix, r.Zone, name), name, nil
}

// update is the registry's one read-modify-write: it reads the device's record and the
// side keys, checks that the actor may change it, applies the change, and writes the
// result, the tenant index and the audit entry in a transaction that compares the
// revisions it read. A change is never written without its audit entry: both are in
// the same transaction, built here. When another writer got there first, the failed
// transaction returns what is there now, and the next attempt starts from that: one
// etcd round trip per attempt.
func (r *Registry) update(ctx context.Context, w write) (*record.Device, error) {
	key, device, err := r.recordKey(w.service, w.device)
	if err != nil {
		return nil, err
	}
	// A member without a leader refuses at once rather than queue the write: during a
	// quorum loss nothing is proposed, so nothing is applied when quorum returns.
	ctx = clientv3.WithRequireLeader(ctx)
	keys := append([]string{key}, w.side...)
	// The devices above a multi-label name are read and compared too: a name below
	// another tenant's device is refused (check).
	ancestorsAt := len(keys)
	if !w.service {
		keys = append(keys, r.ancestorKeys(device)...)
	}
	ancestorsEnd := len(keys)
	ownerAt := -1
	if w.owner != "" {
		ownerAt = len(keys)
		keys = append(keys, r.signerKey(kindTenant, w.owner))
	}
	leaseAt := -1
	if w.leaseKey != "" {
		leaseAt = len(keys)
		keys = append(keys, w.leaseKey)
	}
	snap := snapshot{values: make([][]byte, len(keys)), revs: make([]int64, len(keys)), leases: make([]int64, len(keys))}
	if !w.assumeAbsent {
		if snap, err = r.read(ctx, keys); err != nil {
			return nil, unavailable(err, false)
		}
	} else if ownerAt >= 0 {
		// The guess takes the owner's record as last seen: when it changed since, the
		// transaction fails and returns it, as for any wrong guess.
		if seen, ok := r.tenantsSeen.Load(keys[ownerAt]); ok {
			kv := seen.(seenKey)
			snap.values[ownerAt], snap.revs[ownerAt] = kv.value, kv.rev
		}
	}
	guessed := w.assumeAbsent // the last attempt failed on a guess, not a race
	var lease *clientv3.LeaseGrantResponse
	written, charged := false, false
	for attempt := range maxAttempts {
		onGuess := attempt == 0 && w.assumeAbsent
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
				return nil, fmt.Errorf("%w: %w", ErrStoredInvalid, err)
			}
		}
		// A tenant sees only its own devices: another's is "not found", so that
		// probing names tells a tenant nothing.
		if old != nil && !w.actor.Operator && w.actor.Tenant != "" && old.Tenant != w.actor.Tenant && !w.othersDevice {
			return nil, ErrNotFound
		}
		var before *record.Device
		if old != nil {
			before = old.Clone()
		}
		updated, ops, err := w.change(old, snap.values[1:])
		if err == nil && updated != nil {
			err = w.check(before, updated, snap.values, ownerAt)
		}
		if err == nil && updated != nil && (before == nil || before.Tenant != updated.Tenant) {
			err = w.checkAncestors(updated, snap.values[ancestorsAt:ancestorsEnd])
		}
		if err != nil && onGuess {
			// Refused on a guess (the tenant's record is there, just not read): read.
			if snap, err = r.read(ctx, keys); err != nil {
				return nil, unavailable(err, false)
			}
			guessed = true
			continue
		}
		if err != nil {
			return nil, err
		}
		var op clientv3.Op
		cost := auditCost
		if updated == nil {
			if snap.values[0] == nil && len(ops) == 0 {
				return nil, nil // deleting what is not there: done
			}
			op = clientv3.OpDelete(keys[0])
		} else {
			after, err := json.Marshal(updated)
			if err != nil {
				return nil, err
			}
			if err := checkSize(before, updated, len(snap.values[0]), len(after), r.now()); err != nil {
				return nil, err
			}
			if bytes.Equal(snap.values[0], after) && len(ops) == 0 && w.leaseKey == "" {
				return updated, nil // idempotent: nothing to write
			}
			op = clientv3.OpPut(keys[0], string(after))
			cost += len(after)
		}
		if !charged {
			if err := r.Quotas.charge(w.actor, tenantOf(before, updated), device, cost, r.now); err != nil {
				return nil, err
			}
			charged = true
		}
		entry := AuditEntry{Actor: w.actor.ID, ActorTenant: w.actor.Tenant, Operation: w.operation,
			Before: Summarize(before), After: Summarize(updated), Detail: w.detail}
		if w.service {
			entry.Service = device
		} else {
			entry.Device = device
			ops = append(ops, r.indexOps(device, before, updated)...)
		}
		ops = append(ops, r.auditOp(entry))
		if w.leaseKey != "" {
			if lease == nil {
				if lease, err = r.Client.Grant(ctx, int64(w.lease/time.Second)+1); err != nil {
					return nil, unavailable(err, true)
				}
				defer func() {
					if !written { // a lease granted for nothing would live out its TTL
						r.revokeLease(ctx, lease.ID)
					}
				}()
			}
			ops = append(ops, clientv3.OpPut(w.leaseKey, w.leaseValue(), clientv3.WithLease(lease.ID)))
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
			written = true
			if leaseAt >= 0 && snap.leases[leaseAt] != 0 {
				r.revokeLease(ctx, clientv3.LeaseID(snap.leases[leaseAt]))
			}
			if ownerAt >= 0 && snap.values[ownerAt] != nil {
				r.tenantsSeen.Store(keys[ownerAt], seenKey{snap.values[ownerAt], snap.revs[ownerAt]})
			}
			return updated, nil
		}
		// Someone else wrote first (or the guess was wrong): start again from what is there now.
		snap = snapshotOf(resp.Responses)
	}
	return nil, errConflicted
}

// check applies the rules every new record obeys: the schema's, and that a device
// given to a tenant (created or transferred) goes to the write's owner, which is
// enabled, and never by a tenant to another.
func (w *write) check(before, updated *record.Device, values [][]byte, ownerAt int) error {
	if err := updated.Validate(); err != nil {
		return invalid(err)
	}
	if (before == nil || before.Tenant != updated.Tenant) && updated.Tenant != "" {
		if updated.Tenant != w.owner || ownerAt < 0 {
			return fmt.Errorf("%w: the device would belong to tenant %q", ErrForbidden, updated.Tenant)
		}
		if err := enabledTenant(updated.Tenant, values[ownerAt]); err != nil {
			return err
		}
	}
	if !w.actor.Operator && w.actor.Tenant != "" && updated.Tenant != w.actor.Tenant {
		return fmt.Errorf("%w: a tenant cannot give a device to another tenant; start a transfer", ErrForbidden)
	}
	return nil
}

// auditCost is what a write costs a quota besides its record: the audit entry and
// the index, about.
const auditCost = 512

// tenantOf is the tenant of a record after a write, or before it.
func tenantOf(before, after *record.Device) string {
	if after != nil {
		return after.Tenant
	}
	if before != nil {
		return before.Tenant
	}
	return ""
}

// revokeLease ends a lease the registry no longer needs, even when ctx has ended; a
// failure only lets the lease live out its TTL.
func (r *Registry) revokeLease(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	r.Client.Revoke(rctx, id)
}

// checkSize refuses a record that DNS could not read back (record.MaxRecordSize), and
// a write that grows a record, without revoking any of its keys, beyond the size at
// which every key could still be revoked: revoking must always remain possible.
func checkSize(before, updated *record.Device, oldSize, size int, now time.Time) error {
	if size > record.MaxRecordSize {
		return fmt.Errorf("%w: the record would be %d bytes, more than the %d a record holds; revoke or delete old keys", ErrConflict, size, record.MaxRecordSize)
	}
	if size <= oldSize || before != nil && Summarize(updated).Active < Summarize(before).Active {
		return nil
	}
	if n := revokedSize(updated, now); n > record.MaxRecordSize {
		return fmt.Errorf("%w: with every key revoked the record would be %d bytes, more than the %d a record holds; revoke or delete old keys", ErrConflict, n, record.MaxRecordSize)
	}
	return nil
}

// revokedSize is the size of d's record with every key revoked.
func revokedSize(d *record.Device, now time.Time) int {
	all := d.Clone()
	for i := range all.Credentials {
		revoke(&all.Credentials[i], "cessationOfOperation", now) // the longest reason
	}
	b, _ := json.Marshal(all)
	return len(b)
}

// ancestorKeys are the record keys of the devices above a multi-label device name:
// c.b.a → b.a, a.
func (r *Registry) ancestorKeys(device string) []string {
	var keys []string
	for rest := device; ; {
		_, parent, ok := strings.Cut(rest, ".")
		if !ok {
			return keys
		}
		keys = append(keys, record.DeviceKey(r.Prefix, r.Zone, parent))
		rest = parent
	}
}

// checkAncestors refuses to create a device below another tenant's device: its name
// would sit in the other tenant's part of the zone (x.sensor7 below sensor7). The
// operator may.
func (w *write) checkAncestors(updated *record.Device, ancestors [][]byte) error {
	if w.actor.Operator {
		return nil
	}
	for _, v := range ancestors {
		if v == nil {
			continue
		}
		if tenant := storedTenant(v); tenant != updated.Tenant {
			return fmt.Errorf("%w: the name is below a device of another tenant", ErrConflict)
		}
	}
	return nil
}

// storedTenant reads the tenant of a stored record, even of one that is invalid
// otherwise ("" when it has none or is not JSON).
func storedTenant(value []byte) string {
	var d struct {
		Tenant string `json:"tenant"`
	}
	json.Unmarshal(value, &d)
	return d.Tenant
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
	s := snapshot{values: make([][]byte, len(responses)), revs: make([]int64, len(responses)), leases: make([]int64, len(responses))}
	for i, r := range responses {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			s.values[i], s.revs[i], s.leases[i] = kvs[0].Value, kvs[0].ModRevision, kvs[0].Lease
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
func (r *Registry) Revoke(ctx context.Context, actor Actor, device string, spkiSHA256 []byte, reason string) (*record.Device, error) {
	return r.revoke(ctx, write{actor: actor, operation: "device.revoke", device: device}, spkiSHA256, reason)
}

// revoke is Revoke for the record w names.
func (r *Registry) revoke(ctx context.Context, w write, spkiSHA256 []byte, reason string) (*record.Device, error) {
	if reason == "" {
		reason = "unspecified"
	}
	if !slices.Contains(Reasons, reason) {
		return nil, fmt.Errorf("%w: %q", ErrBadReason, reason)
	}
	if spkiSHA256 != nil && len(spkiSHA256) != sha256.Size {
		return nil, invalid(errors.New("the key's SHA-256 digest is not 32 bytes (64 hex digits)"))
	}
	detail := "all keys, reason " + reason
	if spkiSHA256 != nil {
		detail = "key " + hex.EncodeToString(spkiSHA256) + ", reason " + reason
	}
	w.detail = detail
	w.change = change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		found := false
		for i := range d.Credentials {
			if sum := sha256.Sum256(d.Credentials[i].SPKI); spkiSHA256 != nil && !bytes.Equal(sum[:], spkiSHA256) {
				continue
			}
			found = true
			revoke(&d.Credentials[i], reason, r.now())
		}
		if !found && spkiSHA256 != nil {
			return nil, ErrNoSuchKey
		}
		return d, nil
	})
	d, err := r.update(ctx, w)
	if err == nil {
		revocations.Inc()
	}
	return d, err
}

// revoke marks an active credential revoked at now with reason; a revoked one stays as it was.
func revoke(c *record.Credential, reason string, now time.Time) {
	if c.Status != record.StatusRevoked {
		at := now.UTC().Truncate(time.Second)
		c.Status, c.RevokedAt, c.Reason = record.StatusRevoked, &at, reason
	}
}

// Delete removes a device's record (an invalid one too, by the operator), its pending
// enrollment and transfer codes and its place in the tenant index; ErrNotFound when
// there is none.
func (r *Registry) Delete(ctx context.Context, actor Actor, device string) error {
	device, err := record.DeviceName(device)
	if err != nil {
		return invalid(err)
	}
	key := record.DeviceKey(r.Prefix, r.Zone, device)
	found := false
	_, err = r.update(ctx, write{actor: actor, operation: "device.delete", device: device,
		change: func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				return nil, nil, ErrNotFound
			}
			found = true
			return nil, []clientv3.Op{clientv3.OpDelete(r.codeKey(device)), clientv3.OpDelete(r.signerKey(kindTransfer, device))}, nil
		}})
	if errors.Is(err, ErrStoredInvalid) && actor.Operator {
		// A record that does not parse has no tenant: only the operator removes it.
		return r.deleteInvalid(ctx, actor, device, key)
	}
	if err == nil && !found {
		err = ErrNotFound
	}
	return err
}

// deleteInvalid removes a record that does not parse, with its audit entry.
func (r *Registry) deleteInvalid(ctx context.Context, actor Actor, device, key string) error {
	got, err := r.Client.Get(ctx, key)
	if err != nil {
		return unavailable(err, false)
	}
	if len(got.Kvs) == 0 {
		return ErrNotFound
	}
	ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(r.codeKey(device)), clientv3.OpDelete(r.signerKey(kindTransfer, device)),
		r.auditOp(AuditEntry{Actor: actor.ID, Operation: "device.delete", Device: device, Detail: "invalid record"})}
	if tenant := storedTenant(got.Kvs[0].Value); tenant != "" {
		ops = append(ops, clientv3.OpDelete(r.indexKey(tenant, device)))
	}
	resp, err := r.Client.Txn(clientv3.WithRequireLeader(ctx)).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", got.Kvs[0].ModRevision)).Then(ops...).Commit()
	if err != nil {
		return unavailable(err, true)
	}
	if !resp.Succeeded {
		return errConflicted
	}
	return nil
}

// CAs returns the CA certificates published under P/<zone>/ca/: the signer's own and
// those an operator keeps after a rotation until their last certificate expires. An
// invalid record is left out (the plugin logs it as it loads).
func (r *Registry) CAs(ctx context.Context) ([]*x509.Certificate, error) {
	prefix := record.CAKey(r.Prefix, r.Zone, "")
	resp, err := r.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err, false)
	}
	var cas []*x509.Certificate
	for _, kv := range resp.Kvs {
		if c, err := record.ParseCA(strings.TrimPrefix(string(kv.Key), prefix), kv.Value); err == nil {
			cas = append(cas, c)
		}
	}
	return cas, nil
}

// PutCA publishes the CA certificate under P/<zone>/ca/<aki> for discovery, with its
// audit entry (actor "signer"); a CA published as it is already is left alone, so a
// signer's every start writes nothing.
func (r *Registry) PutCA(ctx context.Context, c *ca.CA) error {
	key := record.CAKey(r.Prefix, r.Zone, c.AKI())
	value := string(c.PEM())
	got, err := r.Client.Get(ctx, key)
	if err != nil {
		return unavailable(err, false)
	}
	rev := int64(0)
	if len(got.Kvs) > 0 {
		if string(got.Kvs[0].Value) == value {
			return nil
		}
		rev = got.Kvs[0].ModRevision
	}
	resp, err := r.Client.Txn(clientv3.WithRequireLeader(ctx)).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, value), r.auditOp(AuditEntry{Actor: "signer", Operation: "ca.publish", Detail: "CA " + c.AKI()})).Commit()
	if err != nil {
		return unavailable(err, true)
	}
	if !resp.Succeeded {
		return errConflicted
	}
	return nil
}
