// Package dnskey makes DNSSEC key pairs in the BIND file format that the deviceid
// plugin's "key file" option reads (and dnssec-keygen writes).
package dnskey

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/dns"
)

// Generate makes a key pair for zone with algorithm alg (dns.ECDSAP256SHA256 or
// dns.ED25519), with the SEP flag when sep (a KSK, or a CSK when it is the zone's only
// key), and writes K<zone>.+<alg>+<tag>.key and .private into dir. It returns the
// files' base name and the key's DNSKEY.
func Generate(dir, zone string, alg uint8, sep bool) (string, *dns.DNSKEY, error) {
	zone = dns.Fqdn(strings.ToLower(zone))
	if _, ok := dns.IsDomainName(zone); !ok {
		return "", nil, fmt.Errorf("%q is not a domain name", zone)
	}
	var bits int
	switch alg {
	case dns.ECDSAP256SHA256, dns.ED25519:
		bits = 256
	default:
		return "", nil, fmt.Errorf("algorithm %d is not supported (want %d ECDSAP256SHA256 or %d ED25519)", alg, dns.ECDSAP256SHA256, dns.ED25519)
	}
	k := &dns.DNSKEY{
		Hdr:       dns.RR_Header{Name: zone, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags:     dns.ZONE,
		Protocol:  3,
		Algorithm: alg,
	}
	if sep {
		k.Flags |= dns.SEP
	}
	priv, err := k.Generate(bits)
	if err != nil {
		return "", nil, err
	}
	base := filepath.Join(dir, fmt.Sprintf("K%s+%03d+%05d", zone, alg, k.KeyTag()))
	role := "zone-signing key"
	if sep {
		role = "key-signing key (SEP)"
	}
	pub := fmt.Sprintf("; This is a %s, keyid %d, for %s\n%s\n", role, k.KeyTag(), zone, k.String())
	if err := os.WriteFile(base+".key", []byte(pub), 0o644); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(base+".private", []byte(k.PrivateKeyString(priv)), 0o600); err != nil {
		return "", nil, err
	}
	return base, k, nil
}

// FromECDSA is the DNSKEY (algorithm 13, ECDSAP256SHA256) of a P-256 public key, for
// keys whose private half lives elsewhere, such as in an HSM.
func FromECDSA(zone string, pub *ecdsa.PublicKey, sep bool) (*dns.DNSKEY, error) {
	if pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("a %s key cannot be a DNSSEC ECDSAP256SHA256 key", pub.Curve.Params().Name)
	}
	raw, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	k := &dns.DNSKEY{
		Hdr:       dns.RR_Header{Name: dns.Fqdn(strings.ToLower(zone)), Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags:     dns.ZONE,
		Protocol:  3,
		Algorithm: dns.ECDSAP256SHA256,
		PublicKey: base64.StdEncoding.EncodeToString(raw[1:]),
	}
	if sep {
		k.Flags |= dns.SEP
	}
	return k, nil
}
