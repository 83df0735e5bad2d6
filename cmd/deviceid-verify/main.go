// Command deviceid-verify checks a device certificate against DNS the way a TLS
// server using package verify does, and says which record matched or why none did:
// the tool to reach for when a device cannot connect.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/trustflags"
	"github.com/deviceid/deviceid/internal/version"
)

func main() {
	if err := run(flag.NewFlagSet("deviceid-verify", flag.ContinueOnError), os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "deviceid-verify:", err)
		}
		os.Exit(1)
	}
}

// run checks one certificate chain and prints the verdict; a refusal is an error. Its
// flags are defined on fs (empty), whose output -h and the flag errors go to.
func run(fs *flag.FlagSet, args []string, out io.Writer) error {
	certFile := fs.String("cert", "", "PEM file with the device certificate (and its chain after it)")
	connect := fs.String("connect", "", "host:port of a TLS endpoint whose certificate to check instead")
	zones := fs.String("zones", "", "accepted zones, comma-separated, e.g. iot.example (required)")
	trust := trustflags.Register(fs, "", "")
	revoked := fs.Uint("revoked-usage", 255, "the TLSA usage of revoked keys")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of the lookup")
	showVersion := fs.Bool("version", false, "print the version and exit")
	cli.SetUsage(fs, "deviceid-verify -zones ZONES (-cert FILE | -connect HOST:PORT) (-resolver ADDR | -ds DS -server ADDR) [flags]",
		`Checks a device certificate against DNS as a TLS server using package verify does, and
says which record matched or why none did: the tool to reach for when a device cannot
connect. A resolver's AD bit is trusted only on loopback (or with -resolver-trusted):
anyone on the path to it could set the bit on a forged answer. It prints "accepted" and
exits 0, or "refused" with the reason and exits 1.`,
		"deviceid-verify -zones iot.example -resolver 127.0.0.1:53 -cert device.pem")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(out, "deviceid-verify", version.String())
		return nil
	}
	if *zones == "" || (*certFile == "") == (*connect == "") {
		fs.Usage()
		return errors.New("give -zones, one of -cert and -connect, and either -resolver or -ds with -server")
	}
	v, err := trust.Verifier(strings.Split(*zones, ","))
	if err != nil {
		return err
	}
	v.RevokedUsage, v.Timeout = uint8(*revoked), *timeout
	chain, err := loadChain(*certFile, *connect)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := v.Verify(ctx, chain)
	if err != nil {
		fmt.Fprintf(out, "refused %s: %v\n", orUnknown(res.Name), err)
		return errors.New("refused")
	}
	fmt.Fprintf(out, "accepted %s: matched TLSA %d %d %d %s\n", res.Name, res.Matched.Usage, res.Matched.Selector,
		res.Matched.MatchingType, abbreviate(res.Matched.Certificate))
	return nil
}

func orUnknown(name string) string {
	if name == "" {
		return "(no identity)"
	}
	return name
}

func abbreviate(hex string) string {
	if len(hex) > 32 {
		return hex[:32] + "…"
	}
	return hex
}

// loadChain reads the chain from a PEM file, or from a TLS endpoint's handshake.
func loadChain(file, addr string) ([]*x509.Certificate, error) {
	if addr != "" {
		// The endpoint's certificate is what is being checked, so the usual PKIX check
		// is skipped here; DANE decides below.
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", file)
	}
	return chain, nil
}
