package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// IndexReport is what Reindex found and fixed; entries are "tenant/device".
type IndexReport struct {
	Devices int      `json:"devices"`           // device records read
	Added   []string `json:"added"`             // entries the index lacked
	Removed []string `json:"removed"`           // entries of a device that is gone or has another tenant
	Changed []string `json:"changed,omitempty"` // devices written meanwhile: their fix was not made; run again
	// UnknownTenants are records that name a tenant that does not exist ("tenant/device"):
	// indexed all the same; create the tenant or assign the device.
	UnknownTenants []string `json:"unknown_tenants,omitempty"`
}

// Reindex makes the tenant index agree with the device records: one entry for each
// device that names a tenant, none for any other. The registry's own writes keep the
// index; records put into etcd by other means (README: writing device records) are
// missing from it, so their tenant's lists miss them and the tenant could be deleted
// while they exist. Each fix is a transaction that compares the device record's
// revision, with its audit entry (index.repair), so it is safe beside running
// signers; with dryRun nothing is written. It holds the index of the zone in memory
// (tens of bytes per device).
func (r *Registry) Reindex(ctx context.Context, actor Actor, dryRun bool) (IndexReport, error) {
	rep := IndexReport{Added: []string{}, Removed: []string{}}
	if !actor.Operator {
		return rep, fmt.Errorf("%w: only the registry operator repairs the index", ErrForbidden)
	}
	ctx = clientv3.WithRequireLeader(ctx)
	indexBase := r.signerKey(kindIndex, "")
	index := map[string][]string{} // device → the tenants the index lists it under
	err := r.scan(ctx, indexBase, true, func(key string, _ []byte, _ int64) error {
		if tenant, device, ok := strings.Cut(key, "/"); ok {
			index[device] = append(index[device], tenant)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	tenants := map[string]bool{}
	err = r.scan(ctx, r.signerKey(kindTenant, ""), true, func(name string, _ []byte, _ int64) error {
		tenants[name] = true
		return nil
	})
	if err != nil {
		return rep, err
	}

	// fix commits ops with the audit entry if the device's record is still at rev (0:
	// still absent).
	fix := func(device string, rev int64, detail string, ops ...clientv3.Op) error {
		if dryRun {
			return nil
		}
		// Once, from the revision the scan read: a record written meanwhile is left
		// for the next run.
		from := absent(1)
		from.revs[0] = rev
		_, err := r.commit(ctx, txn{keys: []string{record.DeviceKey(r.Prefix, r.Zone, device)}, from: &from, once: true,
			decide: func(snapshot) (*plan, error) {
				return &plan{ops: ops, audit: AuditEntry{Actor: actor.ID, Operation: "index.repair", Device: device, Detail: detail}}, nil
			}})
		if errors.Is(err, errConflicted) {
			rep.Changed = append(rep.Changed, device)
			return nil
		}
		return err
	}
	remove := func(device string, rev int64, stale []string) error {
		for _, tenant := range stale {
			rep.Removed = append(rep.Removed, tenant+"/"+device)
			if err := fix(device, rev, "removed from "+tenant, clientv3.OpDelete(r.indexKey(tenant, device))); err != nil {
				return err
			}
		}
		return nil
	}

	err = r.scan(ctx, record.DeviceKey(r.Prefix, r.Zone, ""), false, func(device string, value []byte, rev int64) error {
		rep.Devices++
		listed := index[device]
		delete(index, device)
		d, err := record.ParseDevice(value)
		if err != nil {
			return nil // its tenant is unknown: left as it is (the plugin logs the record)
		}
		if err := remove(device, rev, slices.DeleteFunc(slices.Clone(listed), func(t string) bool { return t == d.Tenant })); err != nil {
			return err
		}
		if d.Tenant == "" || slices.Contains(listed, d.Tenant) {
			return nil
		}
		if !tenants[d.Tenant] {
			rep.UnknownTenants = append(rep.UnknownTenants, d.Tenant+"/"+device)
		}
		rep.Added = append(rep.Added, d.Tenant+"/"+device)
		return fix(device, rev, "added to "+d.Tenant, clientv3.OpPut(r.indexKey(d.Tenant, device), ""))
	})
	if err != nil {
		return rep, err
	}
	// What is left is listed for devices that are not there.
	for _, device := range slices.Sorted(maps.Keys(index)) {
		if err := remove(device, 0, index[device]); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// scan calls fn for every key under prefix (the key without the prefix), a page at
// a time, with its value (nil with keysOnly) and its revision.
func (r *Registry) scan(ctx context.Context, prefix string, keysOnly bool, fn func(key string, value []byte, rev int64) error) error {
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		resp, err := r.Client.Get(ctx, from, opts...)
		if err != nil {
			return unavailable(err, false)
		}
		for _, kv := range resp.Kvs {
			if err := fn(strings.TrimPrefix(string(kv.Key), prefix), kv.Value, kv.ModRevision); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
