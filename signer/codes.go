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

	"github.com/deviceid/deviceid/record"

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
	UsedBy  string    `json:"used_by,omitempty"` // SHA-256 of the key it enrolled, once used
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
	ctx = clientv3.WithRequireLeader(ctx)
	lease, err := r.Client.Grant(ctx, int64(lifetime/time.Second)+1)
	if err != nil {
		return "", err
	}
	if _, err := r.Client.Put(ctx, r.codeKey(device), string(value), clientv3.WithLease(lease.ID)); err != nil {
		return "", err
	}
	return code, nil
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
