package main

import (
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/deviceid/deviceid/signer/ca"
)

// initCA makes a self-signed root CA in a directory, or with -csr the key and CSR of
// an intermediate CA for a parent CA to sign, and an admin API token beside it.
func initCA(args []string) error {
	fs := command("init-ca", "-dir DIR -zone ZONE [flags]",
		"Makes a self-signed root CA (ca.pem and ca-key.pem, or the key in an HSM with -key), or with -csr the key\n"+
			"and CSR of an intermediate CA, and writes an admin API bearer token (admin-token) if there is none.",
		"deviceid-signer init-ca -dir /etc/deviceid -zone iot.example")
	dir := fs.String("dir", ".", "directory to write ca.pem, ca-key.pem and admin-token into (made if missing)")
	zone := fs.String("zone", env("DEVICEID_ZONE", ""), "the zone the CA issues device names in ($DEVICEID_ZONE; required)")
	name := fs.String("name", "deviceid device CA", "the CA's common name")
	curve := fs.String("curve", "P-256", "P-256 or P-384")
	csr := fs.Bool("csr", false, "make an intermediate CA: write ca-key.pem and ca.csr; put the signed certificate and the chain above it in ca.pem")
	key := fs.String("key", "", "make the CA key in an HSM: a PKCS#11 URI (RFC 7512) with object=<label>, module-path and pin-source; serve then takes it as -ca-key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *zone == "" && !*csr {
		return errors.New("-zone is required")
	}
	c := elliptic.P256()
	switch *curve {
	case "P-256":
	case "P-384":
		c = elliptic.P384()
	default:
		return fmt.Errorf("curve %q: want P-256 or P-384", *curve)
	}
	if *csr {
		if err := ca.InitIntermediate(*dir, *name, c, *key); err != nil {
			return err
		}
		fmt.Printf("wrote %s: have the CSR signed as a CA (basicConstraints cA, keyCertSign),\n"+
			"then write the certificate, followed by its chain, to %s\n", filepath.Join(*dir, ca.CARequestFile), filepath.Join(*dir, ca.CACertFile))
	} else {
		authority, err := ca.InitCA(*dir, *name, *zone, c, *key)
		if err != nil {
			return err
		}
		where := filepath.Join(*dir, ca.CAKeyFile)
		if *key != "" {
			where = "the HSM (serve with -ca-key '" + *key + "')"
		}
		fmt.Printf("wrote %s, its key in %s; key identifier %s\n", filepath.Join(*dir, ca.CACertFile), where, authority.AKI())
	}
	tokenFile := filepath.Join(*dir, "admin-token")
	made, err := writeToken(tokenFile)
	if err != nil {
		return err
	}
	if made {
		fmt.Printf("wrote the admin API bearer token to %s (serve -token-file %s)\n", tokenFile, tokenFile)
	}
	return nil
}

// writeToken writes a new random bearer token to file unless it exists, and reports
// whether it wrote one.
func writeToken(file string) (bool, error) {
	if _, err := os.Stat(file); err == nil {
		return false, nil
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	return true, os.WriteFile(file, []byte(hex.EncodeToString(raw)+"\n"), 0o600)
}
