// Package record is the etcd schema of deviceid: it parses and validates the device
// and CA records that provisioning systems write, and renders them as TLSA RRsets.
//
// It is shared by the CoreDNS plugin (which reads) and the signer (which writes), so
// both agree on one definition of a valid record. It imports no CoreDNS code.
package record

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Version is the only device record version this code understands.
const Version = 1

// Limits that keep one device's RRset well inside a 64 KiB DNS message.
const (
	MaxRecordSize  = 48 << 10 // bytes of JSON in one etcd value
	MaxCredentials = 64
	MaxTTL         = 1<<31 - 1 // RFC 2181 §8
)

// State of a device: a suspended device publishes no credential as active (its
// revoked ones still as revoked).
const (
	StateActive    = "active"
	StateSuspended = "suspended"
)

// Suspended reports whether the device is suspended.
func (d *Device) Suspended() bool { return d.State == StateSuspended }

// Status of a credential.
const (
	StatusActive  = "active"
	StatusRevoked = "revoked"
)

// Device is the JSON value stored at P/<zone>/device/<device>.
type Device struct {
	Version int `json:"version"`
	// Tenant and Attributes belong to the registry; DNS never publishes them.
	Tenant      string            `json:"tenant,omitempty"`
	State       string            `json:"state,omitempty"` // StateActive when empty
	Attributes  map[string]string `json:"attributes,omitempty"`
	Credentials []Credential      `json:"credentials"`
	// TTL overrides the zone's TTL for this device's records when set.
	TTL *uint32 `json:"ttl,omitempty"`
}

// Credential is one key of a device, with or without a certificate.
// encoding/json writes and reads the []byte fields as standard base64.
type Credential struct {
	Cert      []byte     `json:"cert,omitempty"` // DER X.509 certificate
	SPKI      []byte     `json:"spki,omitempty"` // DER SubjectPublicKeyInfo
	Status    string     `json:"status"`
	NotAfter  *time.Time `json:"not_after,omitempty"`
	RevokedAt *time.Time `json:"revoked_at"`
	Reason    string     `json:"reason,omitempty"`
}

// ParseDevice decodes and validates one device record. On success every credential
// has its SPKI and NotAfter filled in from its certificate where they were absent.
func ParseDevice(data []byte) (*Device, error) {
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("record is %d bytes, more than the limit of %d", len(data), MaxRecordSize)
	}
	var d Device
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("not a device record: %w", err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// Validate checks the rules of the schema and completes each credential's SPKI and
// NotAfter from its certificate. It is what ParseDevice runs after decoding, and what
// a writer runs before storing a record it built.
func (d *Device) Validate() error {
	if d.Version != Version {
		return fmt.Errorf("version %d is not supported (want %d)", d.Version, Version)
	}
	if len(d.Credentials) > MaxCredentials {
		return fmt.Errorf("%d credentials, more than the limit of %d", len(d.Credentials), MaxCredentials)
	}
	switch d.State {
	case "", StateActive, StateSuspended:
	default:
		return fmt.Errorf("state %q is not %q or %q", d.State, StateActive, StateSuspended)
	}
	if d.Tenant != "" {
		if err := CheckTenant(d.Tenant); err != nil {
			return err
		}
	}
	if err := CheckAttributes(d.Attributes); err != nil {
		return err
	}
	if d.TTL != nil && *d.TTL > MaxTTL {
		return fmt.Errorf("ttl %d is above the maximum %d", *d.TTL, MaxTTL)
	}
	for i := range d.Credentials {
		if err := d.Credentials[i].validate(); err != nil {
			return fmt.Errorf("credential %d: %w", i, err)
		}
	}
	return nil
}

func (c *Credential) validate() error {
	switch c.Status {
	case StatusActive, StatusRevoked:
	case "":
		return errors.New("status is missing (want \"active\" or \"revoked\")")
	default:
		return fmt.Errorf("status %q is not \"active\" or \"revoked\"", c.Status)
	}
	if c.Cert == nil && c.SPKI == nil {
		return errors.New("neither cert nor spki is set")
	}
	if c.Cert != nil {
		cert, err := x509.ParseCertificate(c.Cert)
		if err != nil {
			return fmt.Errorf("cert: %w", err)
		}
		if c.SPKI != nil && !bytes.Equal(c.SPKI, cert.RawSubjectPublicKeyInfo) {
			return errors.New("spki does not match the certificate's public key")
		}
		c.SPKI = cert.RawSubjectPublicKeyInfo
		if c.NotAfter == nil {
			t := cert.NotAfter
			c.NotAfter = &t
		}
		return nil
	}
	return checkSPKI(c.SPKI)
}

// checkSPKI checks that spki is a DER SubjectPublicKeyInfo. Only its structure is
// checked: the server publishes a hash of it, and decoding the key (a curve point
// check for ECDSA) would cost more than the rest of loading a record.
func checkSPKI(spki []byte) error {
	input := cryptobyte.String(spki)
	var info, algorithm cryptobyte.String
	var key asn1.BitString
	if !input.ReadASN1(&info, cbasn1.SEQUENCE) || !input.Empty() ||
		!info.ReadASN1(&algorithm, cbasn1.SEQUENCE) || !algorithm.PeekASN1Tag(cbasn1.OBJECT_IDENTIFIER) ||
		!info.ReadASN1BitString(&key) || !info.Empty() {
		return errors.New("spki: not a DER SubjectPublicKeyInfo")
	}
	return nil
}

// Expired reports whether an active credential is past its NotAfter at now.
func (c *Credential) Expired(now time.Time) bool {
	return c.NotAfter != nil && !now.Before(*c.NotAfter)
}

// Conditions of a device as a person reads them, from what DNS can vouch for
// (Condition). One word for the CLI's show and list and the console.
const (
	ConditionActive     = "active"     // a key DNS vouches for, lasting past ExpiringWithin
	ConditionExpiring   = "expiring"   // every key DNS vouches for expires within ExpiringWithin
	ConditionSuspended  = "suspended"  // DNS vouches for none of its keys until it is resumed
	ConditionRevoked    = "revoked"    // no usable key left, and a key revoked
	ConditionExpired    = "expired"    // no usable key left: they expired
	ConditionRegistered = "registered" // a name with no key yet
)

// Conditions lists the conditions in the order a summary shows them.
var Conditions = []string{ConditionActive, ConditionExpiring, ConditionSuspended, ConditionRevoked, ConditionExpired, ConditionRegistered}

// ExpiringWithin is how close the last usable key's expiry makes a device "expiring".
const ExpiringWithin = 30 * 24 * time.Hour

// Condition is the device's state as a person reads it at now: suspension first,
// then whether any key is still usable, then how soon the last usable one expires.
// A device with a new key beside a revoked old one is active.
func (d *Device) Condition(now time.Time) string {
	if d.Suspended() {
		return ConditionSuspended
	}
	if usable, until := d.lastUsable(now); usable {
		if !until.IsZero() && until.Sub(now) <= ExpiringWithin {
			return ConditionExpiring
		}
		return ConditionActive
	}
	revoked, expired := false, false
	for _, c := range d.Credentials {
		revoked = revoked || c.Status == StatusRevoked
		expired = expired || c.Expired(now)
	}
	switch {
	case revoked:
		return ConditionRevoked
	case expired:
		return ConditionExpired
	}
	return ConditionRegistered
}

// Expires is when the device's last usable key expires at the latest: zero when it
// has no usable key, or one that never expires.
func (d *Device) Expires(now time.Time) time.Time {
	_, until := d.lastUsable(now)
	return until
}

// lastUsable reports whether a key of the device is usable at now (active, unexpired,
// and not revoked in another credential; suspension aside), and until when the
// longest-lived one lasts (zero: it never expires).
func (d *Device) lastUsable(now time.Time) (bool, time.Time) {
	usable, forever := false, false
	var until time.Time
	for _, c := range d.Credentials {
		if c.Status == StatusRevoked || c.Expired(now) || d.keyRevoked(c.SPKI) {
			continue
		}
		usable = true
		if c.NotAfter == nil {
			forever = true
		} else if c.NotAfter.After(until) {
			until = *c.NotAfter
		}
	}
	if forever {
		until = time.Time{}
	}
	return usable, until
}

// keyRevoked reports whether a credential of the device revokes the key spki.
func (d *Device) keyRevoked(spki []byte) bool {
	for _, c := range d.Credentials {
		if c.Status == StatusRevoked && bytes.Equal(c.SPKI, spki) {
			return true
		}
	}
	return false
}
