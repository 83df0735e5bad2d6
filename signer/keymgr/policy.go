// Package keymgr is the signer's DNSSEC key manager: a policy per zone, and the plan
// that moves the zone's keys (record.ZoneKey, in etcd) through their rollovers
// unattended — ZSK pre-publication, KSK double-DS with CDS and CDNSKEY, and emergency
// rollovers — moving past a DS step only when every parent server serves the new DS
// set and the DS TTL has passed. The plan is a pure function of the policy, the key
// records, what the parent serves and the clock; the manager (one active signer, by an
// etcd election) runs it and writes its steps through the registry.
package keymgr

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/dns"
)

// Policy is how a zone's keys are made and rolled.
type Policy struct {
	Algorithm uint8 `json:"algorithm"` // 13 ECDSAP256SHA256 or 15 ED25519
	// CSK: one key signs everything; otherwise a KSK signs the DNSKEY RRset and a ZSK
	// the rest.
	CSK bool `json:"csk"`
	// Lifetimes of the keys; 0: never rolled unless asked.
	KSKLifetime Duration `json:"ksk_lifetime"`
	ZSKLifetime Duration `json:"zsk_lifetime"`
	// DNSKEYTTL is the TTL the zone publishes its DNSKEY RRset with (the plugin's ttl);
	// ZoneMaxTTL the largest TTL of any RRset it signs; DSTTL the TTL of the DS RRset
	// at the parent; Propagation how long a change takes to reach every replica.
	DNSKEYTTL   Duration `json:"dnskey_ttl"`
	ZoneMaxTTL  Duration `json:"zone_max_ttl"`
	DSTTL       Duration `json:"ds_ttl"`
	Propagation Duration `json:"propagation"`
}

// DefaultPolicy: ECDSA P-256, a KSK for a year and a ZSK for 30 days, the plugin's
// default TTL of a minute, a parent's DS TTL of a day.
var DefaultPolicy = Policy{
	Algorithm:   dns.ECDSAP256SHA256,
	KSKLifetime: Duration(365 * 24 * time.Hour),
	ZSKLifetime: Duration(30 * 24 * time.Hour),
	DNSKEYTTL:   Duration(time.Minute),
	ZoneMaxTTL:  Duration(time.Minute),
	DSTTL:       Duration(24 * time.Hour),
	Propagation: Duration(5 * time.Minute),
}

// prePublish is how long a new key's DNSKEY is published before it signs (RFC 7583
// Ipub): every validator holding the DNSKEY RRset then holds it.
func (p Policy) prePublish() time.Duration {
	return p.DNSKEYTTL.D() + p.Propagation.D()
}

// retireZSK is how long a ZSK's DNSKEY stays after it stopped signing (Iret): until
// no validator holds a signature it made.
func (p Policy) retireZSK() time.Duration {
	return p.ZoneMaxTTL.D() + p.Propagation.D()
}

// Validate refuses a policy whose timings cannot work.
func (p Policy) Validate() error {
	if p.Algorithm != dns.ECDSAP256SHA256 && p.Algorithm != dns.ED25519 {
		return fmt.Errorf("algorithm %d: want %d (ECDSAP256SHA256) or %d (ED25519)", p.Algorithm, dns.ECDSAP256SHA256, dns.ED25519)
	}
	for name, d := range map[string]Duration{"dnskey_ttl": p.DNSKEYTTL, "zone_max_ttl": p.ZoneMaxTTL, "ds_ttl": p.DSTTL} {
		if d <= 0 || d.D() > 7*24*time.Hour {
			return fmt.Errorf("%s %s: want more than 0 and at most a week", name, d)
		}
	}
	if p.Propagation < 0 || p.Propagation.D() > 24*time.Hour {
		return fmt.Errorf("propagation %s: want 0 to a day", p.Propagation)
	}
	// A rollover must be over well before the next one starts.
	if z := p.ZSKLifetime.D(); z != 0 && z < 2*(p.prePublish()+p.retireZSK()) {
		return fmt.Errorf("zsk_lifetime %s is shorter than two rollovers take (%s): the keys would never settle", p.ZSKLifetime, 2*(p.prePublish()+p.retireZSK()))
	}
	if p.CSK && p.ZSKLifetime != 0 {
		return errors.New("a CSK policy has no zsk_lifetime: the CSK rolls with ksk_lifetime")
	}
	if k := p.KSKLifetime.D(); k != 0 && k < 2*(p.DSTTL.D()+p.prePublish()) {
		return fmt.Errorf("ksk_lifetime %s is shorter than two rollovers take at least (%s)", p.KSKLifetime, 2*(p.DSTTL.D()+p.prePublish()))
	}
	return nil
}

// Duration is a time.Duration written as Go writes it ("720h0m0s") in JSON.
type Duration time.Duration

func (d Duration) D() time.Duration { return time.Duration(d) }
func (d Duration) String() string   { return time.Duration(d).String() }

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"720h\": %v", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// maxTTL is the largest TTL of the zone's records the policy's waits allow for, in
// seconds: what the key records tell the replicas. A replica serves every record with
// its one ttl, so that must be within both the DNSKEY TTL and the zone's.
func (p Policy) maxTTL() uint32 {
	return uint32(min(p.DNSKEYTTL.D(), p.ZoneMaxTTL.D()) / time.Second)
}
