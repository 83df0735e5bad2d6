// Package registry is the core of deviceid's signer: the device records of one zone in
// etcd, which the CoreDNS plugin serves, and everything that changes them — the
// lifecycle, tenants and their tokens, enrollment and transfer codes, services,
// enrollment (with package ca), search, the audit trail, the tenant index and the
// quotas (docs/design.md). It never speaks HTTP: package httpapi is its HTTPS shell,
// and the CLI uses it directly too. Its errors are in errors.go.
package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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

// Clock is the registry's time now (Now, or the system's clock): what a device's
// condition is judged at.
func (r *Registry) Clock() time.Time { return r.now() }

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

// storedTenant reads the tenant of a stored record, even of one that is invalid
// otherwise ("" when it has none or is not JSON).
func storedTenant(value []byte) string {
	var d struct {
		Tenant string `json:"tenant"`
	}
	json.Unmarshal(value, &d)
	return d.Tenant
}

// codeKey is where a device's enrollment code lives.
func (r *Registry) codeKey(device string) string { return r.signerKey(kindCode, device) }

// Tenant is one of the service providers the registry serves, stored at
// P/_signer/<zone>/tenant/<name>.
type Tenant struct {
	Name     string    `json:"name"`
	Disabled bool      `json:"disabled"`
	Created  time.Time `json:"created"`
}

// parseTenant reads the stored record of tenant name (nil: there is none).
func parseTenant(name string, stored []byte) (*Tenant, error) {
	if stored == nil {
		return nil, fmt.Errorf("%w %q", ErrNoTenant, name)
	}
	var t Tenant
	if err := json.Unmarshal(stored, &t); err != nil {
		return nil, fmt.Errorf("%w: tenant %q: %w", ErrStoredInvalid, name, err)
	}
	return &t, nil
}

// enabledTenant checks the stored tenant record of name.
func enabledTenant(name string, stored []byte) error {
	var t Tenant
	if stored == nil || json.Unmarshal(stored, &t) != nil {
		return fmt.Errorf("%w %q", ErrNoTenant, name)
	}
	if t.Disabled {
		return fmt.Errorf("%w: %q", ErrTenantDisabled, name)
	}
	return nil
}

// indexKey is the key that lists device under tenant in the tenant index.
func (r *Registry) indexKey(tenant, device string) string {
	return r.signerKey(kindIndex, tenant+"/"+device)
}

// ChangedAfter returns how many of the zone's records etcd changed after revision rev
// (deletions are not counted: etcd keeps no key for them), and etcd's revision now.
// A DNS server whose SOA serial is rev has yet to serve those changes.
func (r *Registry) ChangedAfter(ctx context.Context, rev int64) (int, int64, error) {
	resp, err := r.Client.Get(ctx, r.ZonePrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMinModRev(rev+1))
	if err != nil {
		return 0, 0, err
	}
	return len(resp.Kvs), resp.Header.Revision, nil
}
