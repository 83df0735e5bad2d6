package signer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/deviceid/deviceid/plugin/record"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrBadCode covers a wrong, used or expired enrollment code alike: a caller learns
// nothing about which.
var ErrBadCode = errors.New("wrong, used or expired enrollment code")

// DefaultCodeLifetime is how long an enrollment code stays usable.
const DefaultCodeLifetime = 24 * time.Hour

// storedCode is what etcd keeps of a code: its hash, never the code.
type storedCode struct {
	SHA256  string    `json:"sha256"`
	Expires time.Time `json:"expires"`
}

// codeKey is where a device's enrollment code lives: outside P/<zone>/, which the DNS
// side reads, so it is never served or logged as an invalid record.
func (r *Registry) codeKey(device string) string {
	return r.Prefix + "/_signer/" + record.ZonePrefix("", r.Zone)[1:] + "code/" + device
}

// IssueCode makes a one-time enrollment code for device, replacing any earlier one.
// It returns the code, which is stored only as a hash with an etcd lease that ends
// with its lifetime.
func (r *Registry) IssueCode(ctx context.Context, device string, lifetime time.Duration) (string, error) {
	device, err := record.DeviceName(device)
	if err != nil {
		return "", invalid(err)
	}
	if _, err := record.DeviceOwner(device, r.Zone); err != nil {
		return "", invalid(err)
	}
	raw := make([]byte, 20) // 160 bits
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	code := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)
	sum := sha256.Sum256([]byte(code))
	value, _ := json.Marshal(storedCode{SHA256: hex.EncodeToString(sum[:]), Expires: time.Now().Add(lifetime).UTC()})
	lease, err := r.Client.Grant(ctx, int64(lifetime/time.Second)+1)
	if err != nil {
		return "", err
	}
	if _, err := r.Client.Put(ctx, r.codeKey(device), string(value), clientv3.WithLease(lease.ID)); err != nil {
		return "", err
	}
	return code, nil
}

// ConsumeCode checks device's enrollment code and deletes it in the same
// transaction, so that it works once even against concurrent attempts.
func (r *Registry) ConsumeCode(ctx context.Context, device, code string) error {
	device, err := record.DeviceName(device)
	if err != nil {
		return ErrBadCode
	}
	key := r.codeKey(device)
	resp, err := r.Client.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return ErrBadCode
	}
	var stored storedCode
	if err := json.Unmarshal(resp.Kvs[0].Value, &stored); err != nil {
		return ErrBadCode
	}
	sum := sha256.Sum256([]byte(code))
	want, _ := hex.DecodeString(stored.SHA256)
	if subtle.ConstantTimeCompare(sum[:], want) != 1 || time.Now().After(stored.Expires) {
		return ErrBadCode
	}
	txn, err := r.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return err
	}
	if !txn.Succeeded {
		return ErrBadCode // used (or replaced) meanwhile
	}
	return nil
}
