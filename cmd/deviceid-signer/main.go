// Command deviceid-signer is deviceid's sidecar CA (docs/design.md): it serves EST and the
// admin API, offers the same operations on the command line, makes DNSSEC keys, and
// runs the whole stack for a laptop (dev).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/deviceid/deviceid/internal/version"
)

const usage = `usage: deviceid-signer <command> [flags]
       deviceid-signer -version

commands (each has -h):
  serve    serve EST, the admin API, CA discovery, /healthz and /metrics over HTTPS
  init-ca  make a CA (ca.pem, its key in ca-key.pem or an HSM) and an admin token
  enroll   enroll a device with a CSR (-csr) or a bare public key (-pubkey)
  revoke   revoke a device's key (-spki-sha256) or all its keys, with a reason
  delete   delete a device's record
  show     print a device's keys and what DNS publishes for them
  list     list devices, a page at a time, invalid records flagged
  code     issue a one-time enrollment code for a device's first EST enrollment
  keygen   write a DNSSEC key pair for the deviceid plugin and print its DS
  dev      run an embedded etcd, a CA, a DNSSEC key, sample devices and serve, for a laptop

enroll, revoke, delete, show, list and code work on etcd directly (with -zone and the
-etcd* flags, which CoreDNS's DEVICEID_ETCD* variables set too; enroll also needs the
CA), or through a running signer with -server and -token-file.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dev":
		err = dev(os.Args[2:])
	case "keygen":
		err = keygen(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	case "init-ca":
		err = initCA(os.Args[2:])
	case "enroll", "revoke", "delete", "show", "list", "code":
		err = adminCommand(os.Args[1], os.Args[2:])
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	case "-version", "--version", "version":
		fmt.Println("deviceid-signer", version.String())
		return
	default:
		fmt.Fprintf(os.Stderr, "deviceid-signer: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err == flag.ErrHelp {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "deviceid-signer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
