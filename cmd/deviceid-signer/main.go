// Command deviceid-signer is deviceid's sidecar: today its dev subcommand runs the
// local stack's etcd with sample devices, and keygen makes DNSSEC keys; the CA and its
// APIs follow (DESIGN.md §5).
package main

import (
	"flag"
	"fmt"
	"os"
)

const usage = `usage: deviceid-signer <command> [flags]

commands:
  dev      run an embedded etcd with a CA and sample devices for a laptop (see 'deviceid-signer dev -h')
  keygen   write a DNSSEC key pair for the deviceid plugin and print its DS (see 'deviceid-signer keygen -h')
  serve    serve EST, the admin API and CA discovery over HTTPS (see 'deviceid-signer serve -h')
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
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
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
