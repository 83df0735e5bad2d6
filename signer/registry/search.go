package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Filter selects devices; empty fields select all.
type Filter struct {
	Tenant     string
	State      string            // active or suspended
	Prefix     string            // of the device name
	Attributes map[string]string // every one must match
	After      string            // the last name of the previous page
	Limit      int               // 1 to MaxPage; DefaultPage when 0
}

// Entry is one listed device: its record, or why the stored record is invalid.
type Entry struct {
	Name   string
	Device *record.Device
	Err    error
}

// maxScan bounds the records one page reads when filters skip most of them; the
// page is then shorter than Limit and Next says where to go on.
const maxScan = 5000

// Check validates the filter.
func (f *Filter) Check() error {
	if f.Tenant != "" {
		if err := record.CheckTenant(f.Tenant); err != nil {
			return invalid(err)
		}
	}
	switch f.State {
	case "", record.StateActive, record.StateSuspended:
	default:
		return invalid(fmt.Errorf("state %q is not %q or %q", f.State, record.StateActive, record.StateSuspended))
	}
	for k := range f.Attributes {
		if err := record.CheckAttributeKey(k); err != nil {
			return invalid(err)
		}
	}
	_, err := pageSize(f.Limit)
	return err
}

// Every list is read a page at a time: at most MaxPage entries, DefaultPage unless
// asked.
const (
	DefaultPage = 100
	MaxPage     = 1000
)

// pageSize is the size of a page asked for as limit (0: the default).
func pageSize(limit int) (int, error) {
	if limit < 0 || limit > MaxPage {
		return 0, invalid(fmt.Errorf("limit is not a number from 1 to %d", MaxPage))
	}
	if limit == 0 {
		return DefaultPage, nil
	}
	return limit, nil
}

// ParseLimit reads a list's limit parameter ("": 0, the default).
func ParseLimit(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n == 0 {
		n = -1
	}
	_, err = pageSize(n)
	return n, err
}

func (f *Filter) matches(e Entry) bool {
	if e.Device == nil {
		return f.Tenant == "" && f.State == "" && len(f.Attributes) == 0 // invalid records: the operator's unfiltered list
	}
	d := e.Device
	if f.Tenant != "" && d.Tenant != f.Tenant {
		return false
	}
	state := record.StateActive
	if d.Suspended() {
		state = record.StateSuspended
	}
	if f.State != "" && state != f.State {
		return false
	}
	for k, v := range f.Attributes {
		if got, ok := d.Attributes[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Search returns a page of the devices that match f, in name order, and the name to
// pass as After for the next page ("" at the end). A tenant actor sees only its own.
// Each page is read at one etcd revision, and the next starts after the last name
// seen, so paging under concurrent writes never repeats a device nor skips one that
// existed throughout.
func (r *Registry) Search(ctx context.Context, actor Actor, f Filter) ([]Entry, string, error) {
	return r.search(ctx, actor, f, false)
}

// Services returns a page of the services that match f (tenant, name prefix, paging)
// as Search does for devices. A tenant sees its own.
func (r *Registry) Services(ctx context.Context, actor Actor, f Filter) ([]Entry, string, error) {
	return r.search(ctx, actor, f, true)
}

func (r *Registry) search(ctx context.Context, actor Actor, f Filter, services bool) ([]Entry, string, error) {
	if !actor.Operator {
		f.Tenant = actor.Tenant
	}
	if err := f.Check(); err != nil {
		return nil, "", err
	}
	f.Limit, _ = pageSize(f.Limit)
	// A tenant's devices are read through the tenant index; the others, and services
	// (a few per tenant, with no index), by range.
	base := record.DeviceKey(r.Prefix, r.Zone, "")
	viaIndex := f.Tenant != "" && !services
	switch {
	case services:
		base = record.ServiceKey(r.Prefix, r.Zone, "")
	case viaIndex:
		base = r.indexKey(f.Tenant, "")
	}
	from, end := base+f.Prefix, clientv3.GetPrefixRangeEnd(base+f.Prefix)
	if f.After != "" && base+f.After+"\x00" > from {
		from = base + f.After + "\x00"
	}
	out := []Entry{}
	var rev int64
	for scanned := 0; scanned < maxScan; {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(min(f.Limit, 500)))}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		if viaIndex {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		resp, err := r.Client.Get(ctx, from, opts...)
		if err != nil {
			return nil, "", err
		}
		rev = resp.Header.Revision
		entries := make([]Entry, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			entries[i].Name = strings.TrimPrefix(string(kv.Key), base)
			if !viaIndex {
				entries[i].Device, entries[i].Err = record.ParseDevice(kv.Value)
			}
		}
		if viaIndex {
			if err := r.fill(ctx, rev, entries); err != nil {
				return nil, "", err
			}
		}
		for _, e := range entries {
			scanned++
			from = base + e.Name + "\x00"
			if f.matches(e) {
				out = append(out, e)
				if len(out) == f.Limit {
					if !resp.More && e.Name == entries[len(entries)-1].Name {
						return out, "", nil
					}
					return out, e.Name, nil
				}
			}
		}
		if !resp.More {
			return out, "", nil
		}
	}
	return out, strings.TrimSuffix(strings.TrimPrefix(from, base), "\x00"), nil
}

// fill reads the records of entries at revision rev, in transactions of at most 100
// reads (etcd's default limit is 128 operations).
func (r *Registry) fill(ctx context.Context, rev int64, entries []Entry) error {
	for start := 0; start < len(entries); start += 100 {
		batch := entries[start:min(start+100, len(entries))]
		keys := make([]string, len(batch))
		for i, e := range batch {
			keys[i] = record.DeviceKey(r.Prefix, r.Zone, e.Name)
		}
		got, err := r.read(ctx, keys, rev)
		if err != nil {
			return err
		}
		for i, v := range got.values {
			if v != nil {
				batch[i].Device, batch[i].Err = record.ParseDevice(v)
			} else {
				batch[i].Err = errors.New("listed in the tenant index but not there")
			}
		}
	}
	return nil
}

// Export calls emit for every device that matches f (its Limit is the page size), in
// name order, a page at a time.
func (r *Registry) Export(ctx context.Context, actor Actor, f Filter, emit func(Entry) error) error {
	for {
		entries, next, err := r.Search(ctx, actor, f)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := emit(e); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		f.After = next
	}
}
