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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reasons are the RFC 5280 §5.3.1 CRLReason names accepted for a revocation.
var Reasons = []string{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
}

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
		p, d, err := r.plan(w, l, s)
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

// plan decides a device write from what its keys hold: the new record (nil when
// deleted or refused) and what to write (nil: nothing). It only computes.
func (r *Registry) plan(w write, l writeLayout, s snapshot) (*plan, *record.Device, error) {
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
		charge: func() error { return r.Quotas.charge(w.actor, tenantOf(before, updated), l.device, cost, r.now) }}
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
	w.change = revokeChange(spkiSHA256, reason, r.now())
	d, err := r.update(ctx, w)
	if err == nil {
		revocations.Inc()
	}
	return d, err
}

// revokeChange revokes the credentials of the key with that SPKI digest (all of
// them when nil) at now.
func revokeChange(spkiSHA256 []byte, reason string, now time.Time) change {
	return change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		found := false
		for i := range d.Credentials {
			if sum := sha256.Sum256(d.Credentials[i].SPKI); spkiSHA256 != nil && !bytes.Equal(sum[:], spkiSHA256) {
				continue
			}
			found = true
			revoke(&d.Credentials[i], reason, now)
		}
		if !found && spkiSHA256 != nil {
			return nil, ErrNoSuchKey
		}
		return d, nil
	})
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
	_, err = r.update(ctx, write{actor: actor, operation: "device.delete", device: device,
		change: func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				return nil, nil, ErrNotFound
			}
			return nil, []clientv3.Op{clientv3.OpDelete(r.codeKey(device)), clientv3.OpDelete(r.signerKey(kindTransfer, device))}, nil
		}})
	if errors.Is(err, ErrStoredInvalid) && actor.Operator {
		// A record that does not parse has no tenant: only the operator removes it.
		return r.deleteInvalid(ctx, actor, device, key)
	}
	return err
}

// deleteInvalid removes a record that does not parse, with its audit entry.
func (r *Registry) deleteInvalid(ctx context.Context, actor Actor, device, key string) error {
	// Once: what was found invalid is deleted, not what another writer put there since.
	_, err := r.commit(ctx, txn{keys: []string{key}, once: true, decide: func(s snapshot) (*plan, error) {
		if s.values[0] == nil {
			return nil, ErrNotFound
		}
		ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(r.codeKey(device)), clientv3.OpDelete(r.signerKey(kindTransfer, device))}
		if tenant := storedTenant(s.values[0]); tenant != "" {
			ops = append(ops, clientv3.OpDelete(r.indexKey(tenant, device)))
		}
		return &plan{ops: ops, audit: AuditEntry{Actor: actor.ID, Operation: "device.delete", Device: device, Detail: "invalid record"}}, nil
	}})
	return err
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
	_, err := r.commit(ctx, r.putCA(c))
	return err
}

func (r *Registry) putCA(c *ca.CA) txn {
	key := record.CAKey(r.Prefix, r.Zone, c.AKI())
	value := c.PEM()
	return txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		if bytes.Equal(s.values[0], value) {
			return nil, nil
		}
		return &plan{ops: []clientv3.Op{clientv3.OpPut(key, string(value))},
			audit: AuditEntry{Actor: "signer", Operation: "ca.publish", Detail: "CA " + c.AKI()}}, nil
	}}
}
