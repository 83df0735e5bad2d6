package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultTransferLifetime is how long a transfer code stays usable.
const DefaultTransferLifetime = 7 * 24 * time.Hour

// Register reserves a device name for a tenant (the actor's own, or tenant when the
// operator asks), with no key yet, and sets its attributes. Registering a name the
// tenant holds already only sets the attributes given (nil: leaves them).
func (r *Registry) Register(ctx context.Context, actor Actor, device, tenant string, attrs map[string]string) (*record.Device, error) {
	owner, err := ownerFor(actor, tenant)
	if err != nil {
		return nil, err
	}
	if err := record.CheckAttributes(attrs); err != nil {
		return nil, invalid(err)
	}
	return r.update(ctx, write{actor: actor, operation: "device.register", device: device, owner: owner, othersDevice: true,
		change: registerChange(owner, attrs)})
}

// registerChange creates the record of a device for owner, or sets the attributes of
// the owner's device of that name (nil attrs: left as they are).
func registerChange(owner string, attrs map[string]string) change {
	return change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			d = &record.Device{Version: record.Version, Tenant: owner}
		} else if d.Tenant != owner {
			return nil, fmt.Errorf("%w: the name is registered", ErrConflict)
		}
		if attrs != nil {
			d.Attributes = maps.Clone(attrs)
		}
		return d, nil
	})
}

// SetAttributes replaces a device's attributes.
func (r *Registry) SetAttributes(ctx context.Context, actor Actor, device string, attrs map[string]string) (*record.Device, error) {
	if err := record.CheckAttributes(attrs); err != nil {
		return nil, invalid(err)
	}
	return r.update(ctx, write{actor: actor, operation: "device.attributes", device: device,
		change: attributesChange(attrs)})
}

// attributesChange replaces a device's attributes.
func attributesChange(attrs map[string]string) change {
	return change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		d.Attributes = maps.Clone(attrs)
		if len(d.Attributes) == 0 {
			d.Attributes = nil
		}
		return d, nil
	})
}

// SetSuspended suspends a device (DNS stops publishing its active keys; revoked ones
// stay published as revoked) or resumes it.
func (r *Registry) SetSuspended(ctx context.Context, actor Actor, device string, suspended bool) (*record.Device, error) {
	op := map[bool]string{true: "device.suspend", false: "device.resume"}[suspended]
	return r.update(ctx, write{actor: actor, operation: op, device: device,
		change: suspendChange(suspended)})
}

// suspendChange suspends or resumes a device.
func suspendChange(suspended bool) change {
	return change1(func(d *record.Device) (*record.Device, error) {
		if d == nil {
			return nil, ErrNotFound
		}
		d.State = ""
		if suspended {
			d.State = record.StateSuspended
		}
		return d, nil
	})
}

// StartTransfer makes a one-time transfer code for a device of the actor's tenant,
// replacing an earlier one. The gaining tenant completes the transfer with it.
func (r *Registry) StartTransfer(ctx context.Context, actor Actor, device string, lifetime time.Duration) (string, time.Time, error) {
	name, err := record.DeviceName(device)
	if err != nil {
		return "", time.Time{}, invalid(err)
	}
	var code, value string
	var expires time.Time
	_, err = r.update(ctx, write{actor: actor, operation: "transfer.start", device: device,
		change: func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				return nil, nil, ErrNotFound
			}
			if d.Tenant == "" {
				return nil, nil, invalid(errors.New("the device belongs to no tenant; register it for one"))
			}
			var err error
			if code, value, expires, err = r.newCode(lifetime, d.Tenant); err != nil {
				return nil, nil, err
			}
			return d, nil, nil
		},
		leaseKey: r.signerKey(kindTransfer, name), leaseValue: func() string { return value }, lease: lifetime})
	if err != nil {
		return "", time.Time{}, err
	}
	return code, expires, nil
}

// CancelTransfer withdraws a device's pending transfer code.
func (r *Registry) CancelTransfer(ctx context.Context, actor Actor, device string) error {
	name, err := record.DeviceName(device)
	if err != nil {
		return invalid(err)
	}
	key := r.signerKey(kindTransfer, name)
	_, err = r.update(ctx, write{actor: actor, operation: "transfer.cancel", device: device, side: []string{key},
		change: func(d *record.Device, side [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				return nil, nil, ErrNotFound
			}
			if side[0] == nil {
				return nil, nil, fmt.Errorf("%w: no transfer of %s is pending", ErrNotFound, name)
			}
			return d, []clientv3.Op{clientv3.OpDelete(key)}, nil
		}})
	return err
}

// AcceptTransfer moves a device to the gaining tenant (the actor's own, or tenant
// when the operator asks) with the code its current tenant made. With keepKeys its
// keys stay active; otherwise they are revoked with reason affiliationChanged. The
// code and any pending enrollment code are used up in the same transaction.
func (r *Registry) AcceptTransfer(ctx context.Context, actor Actor, device, tenant, code string, keepKeys bool) (*record.Device, error) {
	gaining, err := ownerFor(actor, tenant)
	if err != nil {
		return nil, err
	}
	if gaining == "" {
		return nil, invalid(errors.New("say which tenant gains the device"))
	}
	name, err := record.DeviceName(device)
	if err != nil {
		return nil, invalid(err)
	}
	key := r.signerKey(kindTransfer, name)
	return r.update(ctx, write{actor: actor, operation: "transfer.accept", device: device, side: []string{key},
		owner: gaining, othersDevice: true, detail: keysDetail(keepKeys),
		change: func(d *record.Device, side [][]byte) (*record.Device, []clientv3.Op, error) {
			c, err := checkCode(side[0], code, r.now())
			if err != nil || d == nil || c.From != d.Tenant {
				return nil, nil, ErrBadTransferCode
			}
			if d.Tenant == gaining {
				return nil, nil, invalid(errors.New("the device belongs to that tenant already"))
			}
			return d, r.move(d, name, gaining, keepKeys), nil
		}})
}

// move gives d to tenant: with keepKeys its keys stay active, otherwise they are
// revoked with reason affiliationChanged. It returns the deletions of the device's
// pending transfer and enrollment codes, made for the losing tenant, for the same
// transaction.
func (r *Registry) move(d *record.Device, name, tenant string, keepKeys bool) []clientv3.Op {
	d.Tenant = tenant
	if !keepKeys {
		for i := range d.Credentials {
			revoke(&d.Credentials[i], "affiliationChanged", r.now())
		}
	}
	return []clientv3.Op{clientv3.OpDelete(r.signerKey(kindTransfer, name)), clientv3.OpDelete(r.codeKey(name))}
}

// Assign gives a device to a tenant by the registry operator's decision, with no
// transfer code: a device from before tenants (which has none) is adopted, and a
// dispute between tenants is settled, as a domain registry does. With keepKeys its
// keys stay active; otherwise they are revoked with reason affiliationChanged. Pending
// enrollment and transfer codes are used up in the same transaction, since they were
// made for the losing tenant. Assigning a device to the tenant it has changes nothing.
func (r *Registry) Assign(ctx context.Context, actor Actor, device, tenant string, keepKeys bool) (*record.Device, error) {
	if !actor.Operator {
		return nil, fmt.Errorf("%w: only the registry operator assigns devices", ErrForbidden)
	}
	if tenant == "" {
		return nil, invalid(errors.New("say which tenant gains the device"))
	}
	if err := record.CheckTenant(tenant); err != nil {
		return nil, invalid(err)
	}
	name, err := record.DeviceName(device)
	if err != nil {
		return nil, invalid(err)
	}
	return r.update(ctx, write{actor: actor, operation: "device.assign", device: device, owner: tenant, detail: keysDetail(keepKeys),
		change: func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				return nil, nil, ErrNotFound
			}
			if d.Tenant == tenant {
				return d, nil, nil
			}
			return d, r.move(d, name, tenant, keepKeys), nil
		}})
}

// keysDetail tells the audit trail what a change of tenant did to the keys.
func keysDetail(keepKeys bool) string {
	if keepKeys {
		return "keys kept"
	}
	return "keys revoked (affiliationChanged)"
}

// Reasons are the RFC 5280 §5.3.1 CRLReason names accepted for a revocation.
var Reasons = []string{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
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
	_, err := r.commit(ctx, txn{keys: []string{key}, decide: func(s snapshot) (*plan, error) {
		if s.values[0] == nil {
			return nil, ErrNotFound
		}
		if _, err := record.ParseDevice(s.values[0]); err == nil {
			// Another writer made it valid meanwhile: not what the operator saw.
			return nil, fmt.Errorf("%w: the record was written meanwhile and is valid now; look at it again", ErrConflict)
		}
		ops := []clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(r.codeKey(device)), clientv3.OpDelete(r.signerKey(kindTransfer, device))}
		if tenant := storedTenant(s.values[0]); tenant != "" {
			ops = append(ops, clientv3.OpDelete(r.indexKey(tenant, device)))
		}
		return &plan{ops: ops, audit: AuditEntry{Actor: actor.ID, Operation: "device.delete", Device: device, Detail: "invalid record"}}, nil
	}})
	return err
}
