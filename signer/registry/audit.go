package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// AuditEntry is one change in the audit trail, stored under P/_signer/<zone>/audit/ in
// the transaction that made the change. Revision is that transaction's etcd revision
// (the key's create revision, filled in when read).
type AuditEntry struct {
	ID          string    `json:"id"`
	Time        time.Time `json:"time"`
	Revision    int64     `json:"revision,omitempty"` // not stored: the key's create revision
	Actor       string    `json:"actor"`
	ActorTenant string    `json:"actor_tenant,omitempty"`
	Operation   string    `json:"operation"`
	Device      string    `json:"device,omitempty"`
	Service     string    `json:"service,omitempty"`
	Tenant      string    `json:"tenant,omitempty"` // for tenant and token operations
	Before      *Summary  `json:"before,omitempty"`
	After       *Summary  `json:"after,omitempty"`
	Detail      string    `json:"detail,omitempty"`
}

// Summary is what an audit entry keeps of a device's record before and after.
type Summary struct {
	Tenant  string `json:"tenant,omitempty"`
	State   string `json:"state"`
	Active  int    `json:"active_keys"`
	Revoked int    `json:"revoked_keys"`
}

// Summarize is what the audit trail and the lists show of a record (nil for none).
func Summarize(d *record.Device) *Summary {
	if d == nil {
		return nil
	}
	s := &Summary{Tenant: d.Tenant, State: record.StateActive}
	if d.Suspended() {
		s.State = record.StateSuspended
	}
	for _, c := range d.Credentials {
		if c.Status == record.StatusRevoked {
			s.Revoked++
		} else {
			s.Active++
		}
	}
	return s
}

// concerns reports whether the entry is about tenant: its devices before or after,
// or the tenant itself.
func (e *AuditEntry) concerns(tenant string) bool {
	return e.Tenant == tenant || e.ActorTenant == tenant ||
		e.Before != nil && e.Before.Tenant == tenant || e.After != nil && e.After.Tenant == tenant
}

// auditOp is the put of one audit entry. Its key sorts by time: P/_signer/<zone>/audit/
// <unix nanoseconds, 19 digits>-<random>-<owners joined by '+'>, so that retention by
// age deletes a range, and retention by count keeps each owner's newest entries.
func (r *Registry) auditOp(e AuditEntry) clientv3.Op {
	e.Time = r.now().UTC()
	var rnd [4]byte
	rand.Read(rnd[:])
	e.ID = fmt.Sprintf("%019d-%s-%s", e.Time.UnixNano(), hex.EncodeToString(rnd[:]), strings.Join(e.owners(), "+"))
	b, _ := json.Marshal(e)
	return clientv3.OpPut(r.signerKey(kindAudit, e.ID), string(b))
}

// operatorOwner owns the entries of no tenant; no tenant can be named so.
const operatorOwner = "_"

// owners are the shares of the trail an entry counts against: the one of who acted
// (the tenant that acted, a device's tenant, or the operator's), and the one of every
// tenant it concerns. Retention keeps an entry while any of its owners keeps it: one
// tenant's writes never push out an entry about another tenant, nor the operator's
// actions about it.
func (e *AuditEntry) owners() []string {
	actor := e.ActorTenant
	if actor == "" && !strings.HasPrefix(e.Actor, devicePrefix) {
		actor = operatorOwner
	}
	var owners []string
	for _, o := range []string{actor, e.Tenant, tenantOfSummary(e.Before), tenantOfSummary(e.After)} {
		if o != "" && !slices.Contains(owners, o) {
			owners = append(owners, o)
		}
	}
	if len(owners) == 0 {
		owners = []string{operatorOwner}
	}
	return owners
}

func tenantOfSummary(s *Summary) string {
	if s == nil {
		return ""
	}
	return s.Tenant
}

// ownersOfID are the owners an entry's ID names (the operator's for IDs from before
// owners were named).
func ownersOfID(id string) []string {
	if parts := strings.SplitN(id, "-", 3); len(parts) == 3 {
		return strings.Split(parts[2], "+")
	}
	return []string{operatorOwner}
}

// AuditFilter selects audit entries; empty fields select all.
type AuditFilter struct {
	Device, Tenant, Operation, Actor string
	After                            string // the ID of the last entry of the previous page
	Limit                            int
}

// Audit returns the entries that match f, oldest first, a page at a time, and the ID
// to pass as After for the next page ("" at the end). A tenant actor sees only the
// entries that concern it. A page may hold fewer than Limit entries when many did not
// match; Next still says where to go on.
func (r *Registry) Audit(ctx context.Context, actor Actor, f AuditFilter) ([]AuditEntry, string, error) {
	if !actor.Operator {
		f.Tenant = actor.Tenant
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	prefix := r.signerKey(kindAudit, "")
	from := prefix + f.After + "\x00"
	if f.After == "" {
		from = prefix
	}
	const maxScan = 5000
	out := []AuditEntry{}
	for scanned := 0; scanned < maxScan; {
		resp, err := r.Client.Get(ctx, from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(500))
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
	return out, strings.TrimSuffix(strings.TrimPrefix(from, prefix), "\x00"), nil
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
		cutoff := prefix + fmt.Sprintf("%019d", r.now().Add(-keep.MaxAge).UnixNano())
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
