package registry

import (
	"errors"
	"fmt"
	"time"
)

// The errors of the registry a caller can tell apart, each with what it means. The
// HTTPS shell gives each its status in one table (httpapi.statusOf); an error that is
// none of these means etcd could not be reached or kept changing, and nothing was
// written.
var (
	// ErrInvalid: the request is the caller's mistake (a bad name, key, attribute,
	// lifetime...); errors carrying it say what.
	ErrInvalid = errors.New("invalid request")
	// ErrBadReason: a revocation reason that is not one of RFC 5280's (Reasons).
	ErrBadReason = fmt.Errorf("%w: not an RFC 5280 revocation reason", ErrInvalid)
	// ErrNotFound: no such device, or one the actor may not see (a tenant is never
	// told that another tenant's device exists).
	ErrNotFound = errors.New("no such device")
	// ErrNoSuchKey: the device has no credential with the key a request names.
	ErrNoSuchKey = errors.New("the device has no credential with that key")
	// ErrNoService: a service name nobody has published, or one the actor may not see.
	ErrNoService = errors.New("no such service")
	// ErrNoTenant: no such tenant, or one the actor may not see.
	ErrNoTenant = errors.New("no such tenant")
	// ErrForbidden: the actor may not do this (a tenant acting for another, ...).
	ErrForbidden = errors.New("not allowed")
	// ErrConflict: the registry's state refuses the change (a name taken, a record
	// that would grow too big, a tenant that still has devices...).
	ErrConflict = errors.New("conflict")
	// ErrRevokedKey: the key was revoked for this device or service; a new key is needed.
	ErrRevokedKey = errors.New("this key was revoked for the device; enroll a new key")
	// ErrTenantDisabled: the tenant is disabled; its credentials and devices are refused.
	ErrTenantDisabled = errors.New("the tenant is disabled")
	// ErrBadToken: an unknown or revoked tenant token.
	ErrBadToken = errors.New("unknown or revoked token")
	// ErrBadCode covers a wrong, used or expired enrollment code alike: a caller learns
	// nothing about which.
	ErrBadCode = errors.New("wrong, used or expired enrollment code")
	// ErrBadTransferCode covers a wrong, used, cancelled or expired transfer code alike.
	ErrBadTransferCode = errors.New("wrong, used, cancelled or expired transfer code")
	// ErrNotActive refuses a re-enrollment whose certificate is no longer an active
	// credential of its device: a revoked or deleted device cannot renew itself back.
	ErrNotActive = errors.New("the client certificate is not an active credential of its device")
	// ErrRateLimited: a quota refused the write; errors carrying it are RateLimitErrors.
	ErrRateLimited = errors.New("rate limited")
	// ErrStoredInvalid: the record in etcd does not parse (written by hand or by
	// another program); only the operator can delete it.
	ErrStoredInvalid = errors.New("the stored record is invalid")
	// errConflicted: the record kept changing under concurrent writers through every
	// attempt; nothing was written, and trying again is safe.
	errConflicted = errors.New("the record kept changing; try again")
)

// invalid marks err as the caller's mistake.
func invalid(err error) error { return fmt.Errorf("%w: %w", ErrInvalid, err) }

// RateLimitError says which quota refused a write and when to try again.
type RateLimitError struct {
	What  string
	Retry time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("%s: try again in %s", e.What, e.Retry.Round(time.Second))
}

func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }
