package registry

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/deviceid/deviceid/record"
	"github.com/deviceid/deviceid/signer/ca"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Supersede says which of a device's other keys an enrollment revokes, with reason
// "superseded", in the write that adds the new one.
type Supersede int

const (
	SupersedeNone    Supersede = iota // keep them until they expire
	SupersedeOthers                   // every other active key of the device
	SupersedeCurrent                  // the key of Enrollment.Current (a re-enrollment's)
)

// Enrollment is one request for a credential: a CSR (a certificate is issued for its
// key) or a bare public key (published without a certificate), authorised by a
// one-time code, by the device's current certificate, or by the caller's role.
type Enrollment struct {
	Device    string
	CSR       *x509.CertificateRequest
	PublicKey crypto.PublicKey // when CSR is nil
	// Code is the device's one-time enrollment code (EST /simpleenroll); it is used up
	// in the transaction that writes the record.
	Code string
	// Current is the certificate a re-enrolling device authenticated with; it must be
	// an active credential of the device when the record is written.
	Current   *x509.Certificate
	Supersede Supersede
	// Actor asks for the enrollment; a device's own (by Code or Current) when zero.
	Actor Actor
	// Tenant, from the operator, is the tenant a device that is not registered yet
	// is registered for; a tenant's devices are its own.
	Tenant string
	// Attributes, when not nil, replace the device's attributes in the same write.
	Attributes map[string]string
}

// Enrolled is the outcome: the device's record as written, and the certificate
// (nil for a bare key). Again is true when the enrollment had been done before (a
// retry whose answer was lost): Cert is then the one on record, and nothing new was
// issued.
type Enrolled struct {
	Cert   *x509.Certificate
	Device *record.Device
	Again  bool
}

// Enroller is the one enrollment workflow: EST, the admin API and the CLI all call it.
type Enroller struct {
	CA       *ca.CA
	Registry *Registry
	Now      func() time.Time // nil: time.Now
}

func (e *Enroller) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return e.Registry.now()
}

// Enroll carries out one enrollment as one read-modify-write of the device's record
// (and its code) per attempt. Everything is decided from the record the attempt
// changes: whether this is a retry, whether the key was revoked, whether a
// re-enrollment's certificate is still active, which keys to supersede. At most one
// certificate is issued, and it is returned only once its record is written.
func (e *Enroller) Enroll(ctx context.Context, req Enrollment) (Enrolled, error) {
	device, err := record.DeviceName(req.Device) // the registry checks the whole owner name
	if err != nil {
		return Enrolled{}, invalid(err)
	}
	pub, spki, err := enrollmentKey(req)
	if err != nil {
		return Enrolled{}, err
	}
	keyHash := KeyDigest(spki)
	var side []string
	if req.Code != "" {
		side = []string{e.Registry.codeKey(device)}
	}
	// A device enrolling itself (by code or certificate) must belong to an enabled
	// tenant: the tenant's record is read and compared with the device's.
	byDevice := req.Code != "" || req.Current != nil
	tenantAt, tenant := -1, ""
	if byDevice {
		d, _, err := e.Registry.get(ctx, record.DeviceKey(e.Registry.Prefix, e.Registry.Zone, device))
		if err != nil {
			return Enrolled{}, unavailable(err, false)
		}
		if d != nil && d.Tenant != "" {
			tenant, tenantAt = d.Tenant, len(side)
			side = append(side, e.Registry.signerKey(kindTenant, tenant))
		}
	}
	actor := req.Actor
	if actor.ID == "" {
		if req.Code == "" && req.Current == nil {
			return Enrolled{}, errors.New("an enrollment needs an actor, a code or the device's certificate")
		}
		actor = deviceActor(device)
	}
	owner := ""
	if req.Code == "" && req.Current == nil {
		if owner, err = ownerFor(actor, req.Tenant); err != nil {
			return Enrolled{}, err
		}
	}
	operation := "device.enroll"
	if req.Current != nil {
		operation = "device.reenroll"
	}

	var issued *x509.Certificate // kept across attempts: at most one per call
	var out Enrolled
	// Only a device with no sign of existing is guessed absent: a re-enrollment's
	// device exists, and a code's key must be read anyway.
	assumeAbsent := req.Current == nil && req.Code == ""
	d, err := e.Registry.update(ctx, write{actor: actor, operation: operation, device: device, assumeAbsent: assumeAbsent,
		side: side, owner: owner, detail: "key " + keyHash, change: func(d *record.Device, side [][]byte) (*record.Device, []clientv3.Op, error) {
			now := e.now()
			out = Enrolled{}
			var ops []clientv3.Op
			if req.Code != "" {
				code, err := checkCode(side[0], req.Code, now)
				if err != nil || d == nil {
					return nil, nil, ErrBadCode // a code is issued for a registered device
				}
				if code.UsedBy != "" {
					if code.UsedBy != keyHash {
						return nil, nil, ErrBadCode
					}
					if d == nil || onRecord(d, spki, now) == nil {
						return nil, nil, ErrBadCode // used for this key, which is gone since
					}
				} else {
					code.UsedBy = keyHash
					used, _ := json.Marshal(code)
					ops = append(ops, clientv3.OpPut(e.Registry.codeKey(device), string(used), clientv3.WithIgnoreLease()))
				}
			}
			if req.Current != nil && !activeCert(d, req.Current.Raw) {
				return nil, nil, ErrNotActive
			}
			if byDevice {
				if err := deviceMayEnroll(d, tenant, tenantAt, side); err != nil {
					return nil, nil, err
				}
			}
			if d == nil {
				d = &record.Device{Version: record.Version, Tenant: owner}
			}
			if req.Attributes != nil {
				if err := record.CheckAttributes(req.Attributes); err != nil {
					return nil, nil, invalid(err)
				}
				d.Attributes = maps.Clone(req.Attributes)
			}
			for _, c := range d.Credentials {
				if c.Status == record.StatusRevoked && string(c.SPKI) == string(spki) {
					return nil, nil, ErrRevokedKey
				}
			}
			var supersede [][]byte
			switch req.Supersede {
			case SupersedeOthers:
				for _, c := range d.Credentials {
					supersede = append(supersede, c.SPKI)
				}
			case SupersedeCurrent:
				if req.Current != nil {
					supersede = append(supersede, req.Current.RawSubjectPublicKeyInfo)
				}
			}
			retire(d, supersede, spki, now)

			if c := onRecord(d, spki, now); c != nil && (req.CSR == nil || c.Cert != nil) {
				out.Again = true // done before: the answer is what is on record
				if c.Cert != nil {
					cert, err := x509.ParseCertificate(c.Cert)
					if err != nil {
						return nil, nil, fmt.Errorf("%w: %w", ErrStoredInvalid, err)
					}
					out.Cert = cert
				}
				return d, ops, nil
			}
			cred := record.Credential{SPKI: spki, Status: record.StatusActive}
			if req.CSR != nil {
				if issued == nil {
					if issued, err = e.CA.Issue(device, pub, now); err != nil {
						return nil, nil, invalid(err)
					}
				}
				notAfter := issued.NotAfter
				cred = record.Credential{Cert: issued.Raw, SPKI: issued.RawSubjectPublicKeyInfo, NotAfter: &notAfter, Status: record.StatusActive}
				out.Cert = issued
			}
			d.Credentials = append(d.Credentials, cred)
			if err := makeRoom(d, now); err != nil {
				return nil, nil, err
			}
			return d, ops, nil
		}})
	if err != nil {
		return Enrolled{}, err
	}
	out.Device = d
	if !out.Again {
		enrollments.Inc()
		slog.Info("enrolled", "device", device, "certificate", out.Cert != nil, "code", req.Code != "",
			"reenrollment", req.Current != nil, "supersede", req.Supersede)
	}
	return out, nil
}

// enrollmentKey checks the request's key and returns it with its DER SPKI.
func enrollmentKey(req Enrollment) (crypto.PublicKey, []byte, error) {
	switch {
	case req.CSR != nil && req.PublicKey != nil:
		return nil, nil, invalid(errors.New("give either a CSR or a public key, not both"))
	case req.CSR != nil:
		if err := ca.CheckCSR(req.CSR); err != nil {
			return nil, nil, invalid(err)
		}
		return req.CSR.PublicKey, req.CSR.RawSubjectPublicKeyInfo, nil
	case req.PublicKey != nil:
		if err := ca.CheckPublicKey(req.PublicKey); err != nil {
			return nil, nil, invalid(err)
		}
		spki, err := x509.MarshalPKIXPublicKey(req.PublicKey)
		if err != nil {
			return nil, nil, invalid(err)
		}
		return req.PublicKey, spki, nil
	}
	return nil, nil, invalid(errors.New("give a CSR or a public key"))
}

// onRecord returns the device's active, unexpired credential for the key spki, or nil.
func onRecord(d *record.Device, spki []byte, now time.Time) *record.Credential {
	for i, c := range d.Credentials {
		if c.Status == record.StatusActive && !c.Expired(now) && string(c.SPKI) == string(spki) {
			return &d.Credentials[i]
		}
	}
	return nil
}

// activeCert reports whether the certificate der is an active credential of d.
func activeCert(d *record.Device, der []byte) bool {
	if d == nil {
		return false
	}
	for _, c := range d.Credentials {
		if c.Status == record.StatusActive && string(c.Cert) == string(der) {
			return true
		}
	}
	return false
}

// retire revokes the active credentials of d for the keys in supersede, but never
// the key being enrolled, with reason "superseded".
func retire(d *record.Device, supersede [][]byte, keep []byte, now time.Time) {
	for i := range d.Credentials {
		c := &d.Credentials[i]
		for _, old := range supersede {
			if string(c.SPKI) == string(old) && string(old) != string(keep) {
				revoke(c, "superseded", now)
			}
		}
	}
}

// deviceMayEnroll refuses a device's own enrollment when it is suspended, or when its
// tenant (read as side[tenantAt]) is disabled or is no longer the device's.
func deviceMayEnroll(d *record.Device, tenant string, tenantAt int, side [][]byte) error {
	if d.Suspended() {
		return fmt.Errorf("%w: the device is suspended", ErrForbidden)
	}
	if d.Tenant != tenant {
		return fmt.Errorf("%w: the device changed tenant meanwhile; try again", ErrConflict)
	}
	if tenantAt >= 0 {
		if err := enabledTenant(tenant, side[tenantAt]); err != nil {
			return fmt.Errorf("%w: %w", ErrForbidden, err)
		}
	}
	return nil
}

// makeRoom keeps a device's record within what a record holds (record.MaxCredentials,
// record.MaxRecordSize) after a credential was added last, with room left to revoke
// every key: it drops expired credentials first, then the revoked ones revoked
// longest ago, never an active one. Dropping either publishes nothing new: a key
// without a record is not trusted.
func makeRoom(d *record.Device, now time.Time) error {
	for {
		if len(d.Credentials) <= record.MaxCredentials && revokedSize(d, now) <= record.MaxRecordSize {
			return nil
		}
		drop := -1
		for i, c := range d.Credentials[:len(d.Credentials)-1] {
			if c.NotAfter != nil && !now.Before(*c.NotAfter) && (drop < 0 || c.NotAfter.Before(*d.Credentials[drop].NotAfter)) {
				drop = i
			}
		}
		if drop < 0 {
			for i, c := range d.Credentials[:len(d.Credentials)-1] {
				if c.Status == record.StatusRevoked && (drop < 0 || revokedBefore(c, d.Credentials[drop])) {
					drop = i
				}
			}
		}
		if drop < 0 {
			return fmt.Errorf("%w: the device has %d active keys, as many as its record holds; revoke some first", ErrConflict, len(d.Credentials)-1)
		}
		d.Credentials = slices.Delete(d.Credentials, drop, drop+1)
	}
}

// revokedBefore orders revoked credentials by when they were revoked (unknown first).
func revokedBefore(a, b record.Credential) bool {
	if a.RevokedAt == nil || b.RevokedAt == nil {
		return a.RevokedAt == nil && b.RevokedAt != nil
	}
	return a.RevokedAt.Before(*b.RevokedAt)
}
