package record

// A zone's DNSSEC keys and their timeline, stored beside the records at
// P/<zone>/dnssec/key/<id>: written by the signer's key manager, followed by every
// CoreDNS replica through the same watch as the records, so that every replica
// publishes and signs with the same keys from the same etcd revision.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// KindDNSSEC is the kind of the zone's DNSSEC data: P/<zone>/dnssec/key/<id>.
const KindDNSSEC = "dnssec"

// ZoneKeyKey returns the etcd key of one of a zone's DNSSEC keys.
func ZoneKeyKey(prefix, zone, id string) string {
	return ZonePrefix(prefix, zone) + KindDNSSEC + "/key/" + id
}

// Key roles: a KSK signs the DNSKEY, CDS and CDNSKEY RRsets and its DS is at the
// parent; a ZSK signs the rest; a CSK does both.
const (
	RoleKSK = "ksk"
	RoleZSK = "zsk"
	RoleCSK = "csk"
)

// ZoneKey is one DNSSEC key of a zone and where it stands in its rollover.
type ZoneKey struct {
	Version int    `json:"version"`
	Role    string `json:"role"`
	// DNSKEY is the key's DNSKEY RDATA in presentation format: "257 3 13 <base64>".
	DNSKEY string `json:"dnskey"`
	// Private says where the private key is; never the key in the clear.
	Private  PrivateKeyRef `json:"private"`
	Timeline Timeline      `json:"timeline"`
	// MaxTTL is the largest TTL, in seconds, of the zone's records (the DNSKEY RRset
	// and every signature) that the timeline's waits allow for (0: not said). A
	// replica that serves longer TTLs says so: validators would cache its answers past
	// the waits.
	MaxTTL uint32 `json:"max_ttl,omitempty"`
}

// PrivateKeyRef is where a zone key's private half is: in a token every replica
// reaches, or wrapped under a key-encryption key (KEK) every replica holds.
type PrivateKeyRef struct {
	PKCS11 string `json:"pkcs11,omitempty"` // an RFC 7512 URI
	// Wrapped is the PKCS#8 private key sealed with AES-256-GCM under the KEK whose
	// identifier is KEK (nonce first), bound to the zone and the key's id.
	Wrapped []byte `json:"wrapped,omitempty"`
	KEK     string `json:"kek,omitempty"`
}

// Timeline is a key's RFC 7583 timeline, the times BIND's key state files name alike.
// A time not set has not been scheduled.
type Timeline struct {
	Created time.Time  `json:"created"`
	Publish *time.Time `json:"publish,omitempty"` // the DNSKEY is in the zone from
	Active  *time.Time `json:"active,omitempty"`  // signs from
	Retire  *time.Time `json:"retire,omitempty"`  // signs until
	Remove  *time.Time `json:"remove,omitempty"`  // the DNSKEY leaves the zone at
	// SyncPublish and SyncDelete bound the CDS and CDNSKEY of a KSK or CSK: what the
	// parent is asked to make its DS.
	SyncPublish *time.Time `json:"sync_publish,omitempty"`
	SyncDelete  *time.Time `json:"sync_delete,omitempty"`
	// DSSeen and DSGone are when every parent server was seen serving the key's DS, and
	// no longer serving it.
	DSSeen *time.Time `json:"ds_seen,omitempty"`
	DSGone *time.Time `json:"ds_gone,omitempty"`
}

// within reports from <= t < until, an unset from being never and an unset until
// being forever.
func within(t time.Time, from, until *time.Time) bool {
	return from != nil && !t.Before(*from) && (until == nil || t.Before(*until))
}

// Published reports whether the key's DNSKEY is in the zone at t.
func (k *ZoneKey) Published(t time.Time) bool {
	return within(t, k.Timeline.Publish, k.Timeline.Remove)
}

// Signs reports whether the key signs at t: active, and its DNSKEY published since at
// least minPublished (the DNSKEY RRset's TTL, so that no validator holds a DNSKEY
// RRset without it while it finds signatures by it).
func (k *ZoneKey) Signs(t time.Time, minPublished time.Duration) bool {
	return within(t, k.Timeline.Active, k.Timeline.Retire) && k.Published(t) &&
		!t.Before(k.Timeline.Publish.Add(minPublished))
}

// Syncs reports whether the zone publishes the key's CDS and CDNSKEY at t. A KSK's DS
// may be asked of the parent before its DNSKEY is published (a double-DS rollover).
func (k *ZoneKey) Syncs(t time.Time) bool {
	return k.SEP() && within(t, k.Timeline.SyncPublish, k.Timeline.SyncDelete)
}

// SEP reports whether the key is a KSK or a CSK.
func (k *ZoneKey) SEP() bool { return k.Role == RoleKSK || k.Role == RoleCSK }

// Next is the first time after t at which the key's timeline changes what the zone
// publishes or signs with (zero when none): when a replica must look at it again.
func (k *ZoneKey) Next(t time.Time, minPublished time.Duration) time.Time {
	var next time.Time
	tl := k.Timeline
	for _, at := range []*time.Time{tl.Publish, tl.Active, tl.Retire, tl.Remove, tl.SyncPublish, tl.SyncDelete} {
		if at == nil {
			continue
		}
		for _, c := range []time.Time{*at, at.Add(minPublished)} {
			if c.After(t) && (next.IsZero() || c.Before(next)) {
				next = c
			}
		}
	}
	return next
}

// PublicKey returns the key's DNSKEY record for zone.
func (k *ZoneKey) PublicKey(zone string) (*dns.DNSKEY, error) {
	rr, err := dns.NewRR(dns.Fqdn(strings.ToLower(zone)) + " 3600 IN DNSKEY " + k.DNSKEY)
	if err != nil {
		return nil, fmt.Errorf("dnskey: %v", err)
	}
	dk, ok := rr.(*dns.DNSKEY)
	if !ok {
		return nil, errors.New("dnskey: not a DNSKEY")
	}
	return dk, nil
}

// WrapBinding is what a zone key's private key is bound to, so that it serves no
// other record: its zone and id, the AEAD's additional data of a wrapped key and the
// label of a key in an HSM.
func WrapBinding(zone, id string) string {
	return strings.TrimSuffix(strings.ToLower(zone), ".") + "/" + id
}

// CheckZoneKeyID checks the <id> of a zone key's etcd key: 1 to 63 characters of
// a-z, 0-9 and '-'.
func CheckZoneKeyID(id string) error {
	if id == "" || len(id) > 63 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return fmt.Errorf("key id %q is not 1 to 63 characters of a-z, 0-9 and -", id)
	}
	return nil
}

// ParseZoneKey decodes and checks one zone key record of zone.
func ParseZoneKey(zone string, data []byte) (*ZoneKey, error) {
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("record is %d bytes, more than the limit of %d", len(data), MaxRecordSize)
	}
	var k ZoneKey
	if err := json.Unmarshal(data, &k); err != nil {
		return nil, fmt.Errorf("not a zone key record: %v", err)
	}
	if err := k.Validate(zone); err != nil {
		return nil, err
	}
	return &k, nil
}

// Validate checks the rules every zone key record follows.
func (k *ZoneKey) Validate(zone string) error {
	if k.Version != Version {
		return fmt.Errorf("version %d is not %d", k.Version, Version)
	}
	dk, err := k.PublicKey(zone)
	if err != nil {
		return err
	}
	if dk.Algorithm != dns.ECDSAP256SHA256 && dk.Algorithm != dns.ED25519 {
		return fmt.Errorf("dnskey: algorithm %d is not supported (want %d ECDSAP256SHA256 or %d ED25519)", dk.Algorithm, dns.ECDSAP256SHA256, dns.ED25519)
	}
	if pub, err := base64.StdEncoding.DecodeString(dk.PublicKey); err != nil || len(pub) != map[uint8]int{dns.ECDSAP256SHA256: 64, dns.ED25519: 32}[dk.Algorithm] {
		return fmt.Errorf("dnskey: the public key is not a base64 %s key", dns.AlgorithmToString[dk.Algorithm])
	}
	if dk.Protocol != 3 || dk.Flags&dns.ZONE == 0 || dk.Flags&^(dns.ZONE|dns.SEP) != 0 {
		return fmt.Errorf("dnskey: flags %d protocol %d are not a zone key's (256 or 257, 3)", dk.Flags, dk.Protocol)
	}
	switch k.Role {
	case RoleKSK, RoleCSK:
		if dk.Flags&dns.SEP == 0 {
			return fmt.Errorf("a %s's DNSKEY has the SEP flag (257), not %d", k.Role, dk.Flags)
		}
	case RoleZSK:
		if dk.Flags&dns.SEP != 0 {
			return errors.New("a zsk's DNSKEY has no SEP flag (256, not 257)")
		}
	default:
		return fmt.Errorf("role %q is not %s, %s or %s", k.Role, RoleKSK, RoleZSK, RoleCSK)
	}
	if (k.Private.PKCS11 == "") == (len(k.Private.Wrapped) == 0) {
		return errors.New("private: say where the private key is: pkcs11 or wrapped, one of them")
	}
	if len(k.Private.Wrapped) > 0 && k.Private.KEK == "" {
		return errors.New("private: a wrapped key names its kek")
	}
	if k.Private.PKCS11 != "" && !strings.HasPrefix(k.Private.PKCS11, "pkcs11:") {
		return fmt.Errorf("private: %q is not a pkcs11: URI", k.Private.PKCS11)
	}
	if strings.Contains(k.Private.PKCS11, "?") {
		return errors.New("private: the pkcs11 URI names a module or a PIN; a record names the token and the key only (token=...;object=...), each replica's hsm line the rest")
	}
	if k.Private.PKCS11 != "" && dk.Algorithm != dns.ECDSAP256SHA256 {
		return errors.New("private: a key in an HSM is ECDSA P-256 (algorithm 13)")
	}
	if k.MaxTTL > MaxTTL {
		return fmt.Errorf("max_ttl %d is above the maximum %d", k.MaxTTL, MaxTTL)
	}
	tl := k.Timeline
	if !inOrder(tl.Publish, tl.Active, tl.Retire, tl.Remove) {
		return errors.New("timeline: publish, active, retire and remove must come in that order")
	}
	if !inOrder(tl.SyncPublish, tl.SyncDelete, tl.Remove) {
		return errors.New("timeline: sync_publish and sync_delete must come in that order, and before remove")
	}
	if (tl.SyncPublish != nil || tl.SyncDelete != nil) && !k.SEP() {
		return errors.New("timeline: only a ksk or a csk has a CDS (sync_publish, sync_delete)")
	}
	return nil
}

// inOrder reports whether the times that are set come in the order given.
func inOrder(times ...*time.Time) bool {
	var last *time.Time
	for _, t := range times {
		if t == nil {
			continue
		}
		if last != nil && t.Before(*last) {
			return false
		}
		last = t
	}
	return true
}
