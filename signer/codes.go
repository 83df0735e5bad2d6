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
	lease, err := r.Client.Grant(ctx, int64(lifetime/time.Second)+1)
	if err != nil {
		return "", err
	}
	if _, err := r.Client.Put(ctx, r.codeKey(device), string(value), clientv3.WithLease(lease.ID)); err != nil {
		return "", err
	}
	return code, nil
}

// EnrollWithCode enrolls a device with its one-time code: issue makes the credential
// for the key spki, and the record is written in the same transaction that marks the
// code used by that key. A retry with the same code and key, whose answer was lost,
// gets the certificate on record instead of a new one; any other use of a used code
// fails. So a crash never leaves a record vouching for a certificate that its device
// cannot get.
func (r *Registry) EnrollWithCode(ctx context.Context, device, code string, spki []byte, issue func() (record.Credential, error)) ([]byte, error) {
	device, err := record.DeviceName(device)
	if err != nil {
		return nil, ErrBadCode
	}
	key := r.codeKey(device)
	stored, rev, err := r.readCode(ctx, key, code)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spki)
	keyHash := hex.EncodeToString(sum[:])
	if stored.UsedBy != "" {
		if stored.UsedBy != keyHash {
			return nil, ErrBadCode
		}
		if cert := r.ActiveCert(ctx, device, spki); cert != nil {
			return cert, nil // the retry of an enrollment that was done
		}
		return nil, ErrBadCode
	}
	cred, err := issue()
	if err != nil {
		return nil, err
	}
	change, err := enrollChange(cred, nil)
	if err != nil {
		return nil, err
	}
	stored.UsedBy = keyHash
	used, _ := json.Marshal(stored)
	g := &guard{
		cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
		ops:  []clientv3.Op{clientv3.OpPut(key, string(used), clientv3.WithIgnoreLease())},
		recheck: func(ctx context.Context) error {
			resp, err := r.Client.Get(ctx, key)
			if err != nil {
				return err
			}
			if len(resp.Kvs) == 0 || resp.Kvs[0].ModRevision != rev {
				return ErrBadCode // used, replaced or expired meanwhile
			}
			return nil
		},
	}
	if _, err := r.updateGuarded(ctx, device, true, g, change); err != nil {
		return nil, err
	}
	return cred.Cert, nil
}

// readCode returns a device's stored code if code matches it and it has not expired.
func (r *Registry) readCode(ctx context.Context, key, code string) (storedCode, int64, error) {
	var stored storedCode
	resp, err := r.Client.Get(ctx, key)
	if err != nil {
		return stored, 0, err
	}
	if len(resp.Kvs) == 0 || json.Unmarshal(resp.Kvs[0].Value, &stored) != nil {
		return stored, 0, ErrBadCode
	}
	sum := sha256.Sum256([]byte(code))
	want, _ := hex.DecodeString(stored.SHA256)
	if subtle.ConstantTimeCompare(sum[:], want) != 1 || time.Now().After(stored.Expires) {
		return stored, 0, ErrBadCode
	}
	return stored, resp.Kvs[0].ModRevision, nil
}
