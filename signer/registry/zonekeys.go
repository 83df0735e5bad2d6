package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/deviceid/deviceid/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The zone's DNSSEC keys (record.ZoneKey at P/<zone>/dnssec/key/<id>, which every
// CoreDNS replica follows) and the key manager's own settings, written by the key
// manager and the operator through the engine, each change with its audit entry.

// kindKeys holds the key manager's settings: P/_signer/<zone>/dnssec/policy.
const kindKeys = "dnssec"

// StoredZoneKey is a key record as read, with the revision it was last changed at.
type StoredZoneKey struct {
	ID       string
	Key      *record.ZoneKey
	Revision int64
	Err      error // the record does not parse (Key is nil)
}

// ZoneKeys reads the zone's key records.
func (r *Registry) ZoneKeys(ctx context.Context) ([]StoredZoneKey, error) {
	prefix := record.ZoneKeyKey(r.Prefix, r.Zone, "")
	resp, err := r.Client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err, false)
	}
	var out []StoredZoneKey
	for _, kv := range resp.Kvs {
		k := StoredZoneKey{ID: strings.TrimPrefix(string(kv.Key), prefix), Revision: kv.ModRevision}
		k.Key, k.Err = record.ParseZoneKey(r.Zone, kv.Value)
		out = append(out, k)
	}
	return out, nil
}

// Fence is a key that must still be at a revision for a write to be made: the key
// manager's election key, so that a manager deposed meanwhile writes nothing.
type Fence struct {
	Key string
	Rev int64
}

// WriteZoneKey writes (nil: deletes) the key record id if it is still at revision rev
// (0: absent) and the fence (when set) holds, with its audit entry; ErrConflict when
// either changed meanwhile.
func (r *Registry) WriteZoneKey(ctx context.Context, actor Actor, fence *Fence, id string, rev int64, k *record.ZoneKey, operation, detail string) error {
	if !actor.Operator {
		return fmt.Errorf("%w: only the registry operator and the key manager change the zone's keys", ErrForbidden)
	}
	if err := record.CheckZoneKeyID(id); err != nil {
		return invalid(err)
	}
	key := record.ZoneKeyKey(r.Prefix, r.Zone, id)
	op := clientv3.OpDelete(key)
	if k != nil {
		if err := k.Validate(r.Zone); err != nil {
			return invalid(err)
		}
		b, err := json.Marshal(k)
		if err != nil {
			return err
		}
		op = clientv3.OpPut(key, string(b))
	}
	keys := []string{key}
	if fence != nil {
		keys = append(keys, fence.Key)
	}
	from := absent(len(keys))
	from.revs[0] = rev
	if fence != nil {
		from.revs[1] = fence.Rev
	}
	_, err := r.commit(ctx, txn{keys: keys, from: &from, once: true, decide: func(snapshot) (*plan, error) {
		return &plan{ops: []clientv3.Op{op}, audit: AuditEntry{Actor: actor.ID, Operation: operation, Detail: "key " + id + ": " + detail}}, nil
	}})
	if errors.Is(err, errConflicted) {
		return fmt.Errorf("%w: key %s, or the key manager's leadership, changed meanwhile", ErrConflict, id)
	}
	return err
}

// KeySettings reads the key manager's settings of the zone (nil when none were set)
// and their revision.
func (r *Registry) KeySettings(ctx context.Context) ([]byte, int64, error) {
	resp, err := r.Client.Get(ctx, r.signerKey(kindKeys, "policy"))
	if err != nil {
		return nil, 0, unavailable(err, false)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// PutKeySettings writes the key manager's settings if they are still at rev, with
// their audit entry; ErrConflict when they changed meanwhile.
func (r *Registry) PutKeySettings(ctx context.Context, actor Actor, rev int64, value []byte, detail string) error {
	if !actor.Operator {
		return fmt.Errorf("%w: only the registry operator sets the key policy", ErrForbidden)
	}
	key := r.signerKey(kindKeys, "policy")
	from := absent(1)
	from.revs[0] = rev
	_, err := r.commit(ctx, txn{keys: []string{key}, from: &from, once: true, decide: func(snapshot) (*plan, error) {
		return &plan{ops: []clientv3.Op{clientv3.OpPut(key, string(value))}, audit: AuditEntry{Actor: actor.ID, Operation: "keys.settings", Detail: detail}}, nil
	}})
	if errors.Is(err, errConflicted) {
		return fmt.Errorf("%w: the key settings changed meanwhile; try again", ErrConflict)
	}
	return err
}

// ElectionPrefix is where the signers elect the one that runs the zone's key manager.
func (r *Registry) ElectionPrefix() string { return r.signerKey(kindKeys, "manager") }
