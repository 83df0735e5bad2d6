package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultCodeLifetime is how long an enrollment code stays usable.
const DefaultCodeLifetime = 24 * time.Hour

// storedCode is what etcd keeps of a code: its hash, never the code.
type storedCode struct {
	SHA256  string    `json:"sha256"`
	Expires time.Time `json:"expires"`
	UsedBy  string    `json:"used_by,omitempty"` // SHA-256 of the key it enrolled, once used
	From    string    `json:"from,omitempty"`    // a transfer code: the losing tenant
}

// IssueCode makes a one-time enrollment code for device, replacing any earlier one,
// and registers the device first when it is not there (for the actor's tenant, or
// for tenant when the operator asks). It returns the code, which is stored only as a
// hash with an etcd lease that ends with its lifetime (granted only once the request
// has passed its checks).
func (r *Registry) IssueCode(ctx context.Context, actor Actor, device, tenant string, lifetime time.Duration) (string, time.Time, error) {
	owner, err := ownerFor(actor, tenant)
	if err != nil {
		return "", time.Time{}, err
	}
	code, value, expires, err := r.newCode(lifetime, "")
	if err != nil {
		return "", time.Time{}, err
	}
	name, err := record.DeviceName(device)
	if err != nil {
		return "", time.Time{}, invalid(err)
	}
	_, err = r.update(ctx, write{actor: actor, operation: "device.code", device: device, owner: owner,
		change: func(d *record.Device, _ [][]byte) (*record.Device, []clientv3.Op, error) {
			if d == nil {
				d = &record.Device{Version: record.Version, Tenant: owner}
			}
			return d, nil, nil
		},
		leaseKey: r.codeKey(name), leaseValue: func() string { return value }, lease: lifetime})
	if err != nil {
		return "", time.Time{}, err
	}
	return code, expires, nil
}

// newCode makes a one-time code and the JSON that stores its hash.
func (r *Registry) newCode(lifetime time.Duration, from string) (code, value string, expires time.Time, err error) {
	if lifetime <= 0 || lifetime > 30*24*time.Hour {
		return "", "", time.Time{}, invalid(errors.New("a code lives from 1 s to 30 days"))
	}
	raw := make([]byte, 20) // 160 bits
	if _, err := rand.Read(raw); err != nil {
		return "", "", time.Time{}, err
	}
	code = base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)
	sum := sha256.Sum256([]byte(code))
	expires = r.now().Add(lifetime).UTC()
	b, _ := json.Marshal(storedCode{SHA256: hex.EncodeToString(sum[:]), Expires: expires, From: from})
	return code, string(b), expires, nil
}

// ownerFor is the tenant a device created by actor belongs to: the actor's own, or
// for the operator the one asked for ("" for the registry's own devices).
func ownerFor(actor Actor, tenant string) (string, error) {
	if actor.Operator {
		if tenant != "" {
			if err := record.CheckTenant(tenant); err != nil {
				return "", invalid(err)
			}
		}
		return tenant, nil
	}
	if tenant != "" && tenant != actor.Tenant {
		return "", fmt.Errorf("%w: a tenant registers devices for itself only", ErrForbidden)
	}
	return actor.Tenant, nil
}

// checkCode parses a device's stored code (nil when it has none) and checks that code
// matches it and that it has not expired at now.
func checkCode(stored []byte, code string, now time.Time) (storedCode, error) {
	var c storedCode
	if stored == nil || json.Unmarshal(stored, &c) != nil {
		return c, ErrBadCode
	}
	sum := sha256.Sum256([]byte(code))
	want, _ := hex.DecodeString(c.SHA256)
	if subtle.ConstantTimeCompare(sum[:], want) != 1 || now.After(c.Expires) {
		return c, ErrBadCode
	}
	return c, nil
}
