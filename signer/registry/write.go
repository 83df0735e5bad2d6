package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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

// update is the registry's one change of a device's (or a service's) record: it
// reads the record and the side keys, checks that the actor may change it, applies the
// change, and writes the result with the tenant index and the audit entry through the
// write engine (engine.go).
func (r *Registry) update(ctx context.Context, w write) (*record.Device, error) {
	key, device, err := r.recordKey(w.service, w.device)
	if err != nil {
		return nil, err
	}
	l := r.layout(w, key, device)
	var result *record.Device
	t := txn{keys: l.keys, decide: func(s snapshot) (*plan, error) {
		p, d, err := r.planWrite(w, l, s)
		result = d
		return p, err
	}}
	if w.assumeAbsent {
		guess := absent(len(l.keys))
		if l.ownerAt >= 0 {
			// The guess takes the owner's record as last seen: when it changed since, the
			// transaction fails and returns it, as for any wrong guess.
			if seen, ok := r.tenantsSeen.Load(l.keys[l.ownerAt]); ok {
				kv := seen.(seenKey)
				guess.values[l.ownerAt], guess.revs[l.ownerAt] = kv.value, kv.rev
			}
		}
		t.from, t.guess = &guess, true
	}
	snap, err := r.commit(ctx, t)
	if err != nil {
		return nil, err
	}
	if l.ownerAt >= 0 && snap.values[l.ownerAt] != nil {
		r.tenantsSeen.Store(l.keys[l.ownerAt], seenKey{snap.values[l.ownerAt], snap.revs[l.ownerAt]})
	}
	return result, nil
}

// writeLayout is where a device write finds what it read: the record first, then the
// side keys, the records of the devices above it, its owner's tenant record and the
// leased key (-1: not read).
type writeLayout struct {
	keys                      []string
	device                    string // the canonical name
	ancestorsAt, ancestorsEnd int
	ownerAt, leaseAt          int
}

func (r *Registry) layout(w write, key, device string) writeLayout {
	l := writeLayout{keys: append([]string{key}, w.side...), device: device, ownerAt: -1, leaseAt: -1}
	// The devices above a multi-label name are read and compared too: a name below
	// another tenant's device is refused (checkAncestors).
	l.ancestorsAt = len(l.keys)
	if !w.service {
		l.keys = append(l.keys, r.ancestorKeys(device)...)
	}
	l.ancestorsEnd = len(l.keys)
	if w.owner != "" {
		l.ownerAt = len(l.keys)
		l.keys = append(l.keys, r.signerKey(kindTenant, w.owner))
	}
	if w.leaseKey != "" {
		l.leaseAt = len(l.keys)
		l.keys = append(l.keys, w.leaseKey)
	}
	return l
}

// planWrite decides a device write from what its keys hold: the new record (nil when
// deleted or refused) and what to write (nil: nothing). It only computes.
func (r *Registry) planWrite(w write, l writeLayout, s snapshot) (*plan, *record.Device, error) {
	var old *record.Device
	if s.values[0] != nil {
		var err error
		if old, err = record.ParseDevice(s.values[0]); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrStoredInvalid, err)
		}
	}
	// A tenant sees only its own devices: another's is "not found", so that probing
	// names tells a tenant nothing.
	if old != nil && !w.actor.Operator && w.actor.Tenant != "" && old.Tenant != w.actor.Tenant && !w.othersDevice {
		return nil, nil, ErrNotFound
	}
	var before *record.Device
	if old != nil {
		before = old.Clone()
	}
	updated, ops, err := w.change(old, s.values[1:])
	if err == nil && updated != nil {
		err = w.check(before, updated, s.values, l.ownerAt)
	}
	if err == nil && updated != nil && (before == nil || before.Tenant != updated.Tenant) {
		err = w.checkAncestors(updated, s.values[l.ancestorsAt:l.ancestorsEnd])
	}
	if err != nil {
		return nil, nil, err
	}
	var op clientv3.Op
	cost := auditCost
	if updated == nil {
		if s.values[0] == nil && len(ops) == 0 {
			return nil, nil, nil // deleting what is not there: done
		}
		op = clientv3.OpDelete(l.keys[0])
	} else {
		after, err := json.Marshal(updated)
		if err != nil {
			return nil, nil, err
		}
		if err := checkSize(before, updated, len(s.values[0]), len(after), r.now()); err != nil {
			return nil, nil, err
		}
		if bytes.Equal(s.values[0], after) && len(ops) == 0 && w.leaseKey == "" {
			return nil, updated, nil // idempotent: nothing to write
		}
		op = clientv3.OpPut(l.keys[0], string(after))
		cost += len(after)
	}
	p := &plan{ops: append([]clientv3.Op{op}, ops...),
		audit: AuditEntry{Actor: w.actor.ID, ActorTenant: w.actor.Tenant, Operation: w.operation,
			Before: Summarize(before), After: Summarize(updated), Detail: w.detail},
		charge: func() (func(), error) {
			return r.Quotas.charge(w.actor, tenantOf(before, updated), l.device, cost, r.now)
		}}
	if w.service {
		p.audit.Service = l.device
	} else {
		p.audit.Device = l.device
		p.ops = append(p.ops, r.indexOps(l.device, before, updated)...)
	}
	if w.leaseKey != "" {
		p.leased = &leasedPut{key: w.leaseKey, value: w.leaseValue(), ttl: w.lease}
	}
	return p, updated, nil
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

// change1 adapts a change of the record alone.
func change1(f func(*record.Device) (*record.Device, error)) change {
	return func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
		d, err := f(d)
		return d, nil, err
	}
}

// revoke marks an active credential revoked at now with reason; a revoked one stays as it was.
func revoke(c *record.Credential, reason string, now time.Time) {
	if c.Status != record.StatusRevoked {
		at := now.UTC().Truncate(time.Second)
		c.Status, c.RevokedAt, c.Reason = record.StatusRevoked, &at, reason
	}
}

// indexOps keeps the tenant index in step with a device's change of tenant.
func (r *Registry) indexOps(device string, before, after *record.Device) []clientv3.Op {
	var was, is string
	if before != nil {
		was = before.Tenant
	}
	if after != nil {
		is = after.Tenant
	}
	if was == is {
		return nil
	}
	var ops []clientv3.Op
	if was != "" {
		ops = append(ops, clientv3.OpDelete(r.indexKey(was, device)))
	}
	if is != "" {
		ops = append(ops, clientv3.OpPut(r.indexKey(is, device), ""))
	}
	return ops
}
