package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AuditFilter selects audit entries; empty fields select all.
type AuditFilter struct {
	Device, Tenant, Operation, Actor string
	After                            string    // the ID of the last entry of the previous page
	Since, Until                     time.Time // entries at or after Since and before Until; zero: no bound
	Limit                            int
}

// auditKeyAt is where the trail's entries of time t start (keys sort by time).
func auditKeyAt(prefix string, t time.Time) string {
	return prefix + fmt.Sprintf("%019d", t.UnixNano())
}

// AuditScan bounds the entries one Audit call reads from etcd, matching or not.
const AuditScan = 5000

// Audit returns the entries that match f, oldest first, a page at a time, and the ID
// to pass as After for the next page ("" at the end). A tenant actor sees only the
// entries that concern it. A page may hold fewer than Limit entries when many did not
// match; Next still says where to go on.
func (r *Registry) Audit(ctx context.Context, actor Actor, f AuditFilter) ([]AuditEntry, string, error) {
	if !actor.Operator {
		f.Tenant = actor.Tenant
	}
	limit, err := pageSize(f.Limit)
	if err != nil {
		return nil, "", err
	}
	prefix := r.signerKey(kindAudit, "")
	from := prefix + f.After + "\x00"
	if f.After == "" {
		from = prefix
	}
	if !f.Since.IsZero() {
		from = max(from, auditKeyAt(prefix, f.Since))
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	if !f.Until.IsZero() {
		end = auditKeyAt(prefix, f.Until)
	}
	out := []AuditEntry{}
	if from >= end {
		return out, "", nil
	}
	for scanned := 0; scanned < AuditScan; {
		resp, err := r.Client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(500))
		if err != nil {
			return nil, "", err
		}
		for _, kv := range resp.Kvs {
			scanned++
			var e AuditEntry
			if json.Unmarshal(kv.Value, &e) != nil {
				continue
			}
			e.ID, e.Revision = strings.TrimPrefix(string(kv.Key), prefix), kv.CreateRevision
			from = string(kv.Key) + "\x00"
			if f.matches(&e) {
				out = append(out, e)
				if len(out) == limit {
					return out, e.ID, nil
				}
			}
		}
		if !resp.More {
			return out, "", nil
		}
	}
	// The scan stopped at an entry the caller may not see: the next page starts at its
	// time, which names nothing (its ID would name another tenant).
	last := strings.TrimSuffix(strings.TrimPrefix(from, prefix), "\x00")
	at, _, _ := strings.Cut(last, "-")
	return out, at, nil
}

func (f *AuditFilter) matches(e *AuditEntry) bool {
	return (f.Device == "" || e.Device == f.Device) && (f.Tenant == "" || e.concerns(f.Tenant)) &&
		(f.Operation == "" || e.Operation == f.Operation) && (f.Actor == "" || e.Actor == f.Actor)
}

// Retention bounds the audit trail: entries older than MaxAge, and the oldest beyond
// MaxCount of every owner they count against (a tenant's, the operator's), are deleted
// by CompactAudit. Zero values keep everything.
type Retention struct {
	MaxAge   time.Duration
	MaxCount int
}

// DefaultRetention keeps a year of changes and at most 100,000 entries per tenant
// (about 40 MB in etcd, whose default quota is 2 GiB, per tenant).
var DefaultRetention = Retention{MaxAge: 365 * 24 * time.Hour, MaxCount: 100_000}

// compactPage is how many keys retention reads at once, and compactBatch how many it
// deletes in one transaction (etcd's default limit of operations per transaction).
const (
	compactPage  = 10_000
	compactBatch = 128
)

// CompactAudit deletes the entries the retention no longer keeps and returns how many.
func (r *Registry) CompactAudit(ctx context.Context, keep Retention) (int64, error) {
	prefix := r.signerKey(kindAudit, "")
	var deleted int64
	if keep.MaxAge > 0 {
		cutoff := auditKeyAt(prefix, r.now().Add(-keep.MaxAge))
		n, err := r.pruneAudit(ctx, []clientv3.Op{clientv3.OpDelete(prefix, clientv3.WithRange(cutoff))})
		if err != nil {
			return 0, err
		}
		deleted += n
	}
	if keep.MaxCount > 0 {
		n, err := r.compactCount(ctx, prefix, keep.MaxCount)
		deleted += n
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// compactCount walks the trail's keys from the newest, counting each owner's entries,
// and deletes an entry once every one of its owners has its newest keep. It holds one
// page of keys and a count per owner.
func (r *Registry) compactCount(ctx context.Context, prefix string, keep int) (int64, error) {
	counts := map[string]int{}
	var deleted int64
	var doomed []clientv3.Op
	flush := func() error {
		if len(doomed) == 0 {
			return nil
		}
		n, err := r.pruneAudit(ctx, doomed)
		deleted += n
		if err != nil {
			return err
		}
		doomed = doomed[:0]
		return nil
	}
	end := clientv3.GetPrefixRangeEnd(prefix)
	for {
		resp, err := r.Client.Get(ctx, prefix, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(compactPage))
		if err != nil {
			return deleted, err
		}
		for _, kv := range resp.Kvs {
			kept := false
			for _, owner := range ownersOfID(strings.TrimPrefix(string(kv.Key), prefix)) {
				counts[owner]++
				kept = kept || counts[owner] <= keep
			}
			if !kept {
				doomed = append(doomed, clientv3.OpDelete(string(kv.Key)))
				if len(doomed) == compactBatch {
					if err := flush(); err != nil {
						return deleted, err
					}
				}
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return deleted, flush()
		}
		end = string(resp.Kvs[len(resp.Kvs)-1].Key) // the next page: keys before this one
	}
}
