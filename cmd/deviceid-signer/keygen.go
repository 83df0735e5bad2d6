package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/deviceid/deviceid/internal/dnskey"

	"github.com/miekg/dns"
)

// keygen writes a DNSSEC key pair for the deviceid plugin and prints its DS record.
func keygen(args []string) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	zone := fs.String("zone", "", "the zone the key signs (required)")
	alg := fs.String("algorithm", "ECDSAP256SHA256", "ECDSAP256SHA256 or ED25519")
	zsk := fs.Bool("zsk", false, "make a zone-signing key (no SEP flag) instead of a KSK/CSK")
	dir := fs.String("dir", ".", "directory to write K<zone>.+<alg>+<tag>.key and .private into")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: deviceid-signer keygen -zone ZONE [flags]\n\n"+
			"Writes a key pair in BIND's format for the Corefile's 'key file' option and prints\n"+
			"the DS record to give the parent zone (for a KSK or CSK).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *zone == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("-zone is required")
	}
	a, ok := dns.StringToAlgorithm[strings.ToUpper(*alg)]
	if !ok {
		return fmt.Errorf("unknown algorithm %q", *alg)
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
