package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/deviceid/deviceid/internal/dnskey"
	"github.com/deviceid/deviceid/internal/pkcs11key"

	"github.com/miekg/dns"
)

// keygen writes a DNSSEC key pair for the deviceid plugin and prints its DS record.
func keygen(args []string) error {
	fs := command("keygen", "-zone ZONE [flags]",
		"Writes a DNSSEC key pair in BIND's format for the Corefile's 'key file' option, or with -pkcs11\n"+
			"makes it in an HSM for 'key pkcs11', and prints the DS record to give the parent zone (for a KSK or CSK).",
		"deviceid-signer keygen -zone iot.example -dir /etc/deviceid\n"+
			"  deviceid-signer keygen -zone iot.example -pkcs11 'pkcs11:token=dns;object=ksk?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/deviceid/pin'")
	zone := fs.String("zone", "", "the zone the key signs (required)")
	alg := fs.String("algorithm", "ECDSAP256SHA256", "ECDSAP256SHA256 or ED25519")
	zsk := fs.Bool("zsk", false, "make a zone-signing key (no SEP flag) instead of a KSK/CSK")
	dir := fs.String("dir", ".", "directory to write K<zone>.+<alg>+<tag>.key and .private into (made if missing)")
	uri := fs.String("pkcs11", "", "make the key in an HSM instead: a PKCS#11 URI (RFC 7512) with object=<label>, module-path and pin-source; ECDSA P-256, a KSK")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *zone == "" || fs.NArg() != 0 {
		return errors.New("-zone is required and no arguments are taken (-h for help)")
	}
	if *uri != "" {
		return keygenPKCS11(*zone, *uri, *alg, *zsk)
	}
	a, ok := dns.StringToAlgorithm[strings.ToUpper(*alg)]
	if !ok {
		return fmt.Errorf("unknown algorithm %q", *alg)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	base, k, err := dnskey.Generate(*dir, *zone, a, !*zsk)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s.key and %s.private\n", base, base)
	fmt.Printf("Corefile: key file %s\n", base)
	if !*zsk {
		fmt.Printf("DS for the parent zone:\n%s\n", k.ToDS(dns.SHA256))
	}
	return nil
}

// keygenPKCS11 makes an ECDSA P-256 KSK in an HSM and prints its Corefile line and DS.
func keygenPKCS11(zone, uri, alg string, zsk bool) error {
	if zsk {
		return errors.New("a key in an HSM is a KSK (or a CSK alone); keep the ZSK, which signs on every query, in a file")
	}
	if strings.ToUpper(alg) != "ECDSAP256SHA256" {
		return fmt.Errorf("algorithm %s: keys in an HSM are ECDSAP256SHA256", alg)
	}
	if _, ok := dns.IsDomainName(zone); !ok {
		return fmt.Errorf("%q is not a domain name", zone)
	}
	k, err := pkcs11key.Generate(uri, elliptic.P256())
	if err != nil {
		return err
	}
	defer k.Close()
	dk, err := dnskey.FromECDSA(zone, k.Public().(*ecdsa.PublicKey), true)
	if err != nil {
		return err
	}
	fmt.Printf("made an ECDSAP256SHA256 key-signing key (SEP), keyid %d, in the HSM\n", dk.KeyTag())
	fmt.Printf("Corefile: key pkcs11 \"%s\"\n", uri)
	fmt.Printf("DNSKEY: %s\n", dk)
	fmt.Printf("DS for the parent zone:\n%s\n", dk.ToDS(dns.SHA256))
	return nil
}
