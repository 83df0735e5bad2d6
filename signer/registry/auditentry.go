package registry

import (
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
