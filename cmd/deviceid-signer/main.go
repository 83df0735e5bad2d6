// Command deviceid-signer is deviceid's sidecar CA (docs/design.md): it serves EST and the
// admin API, offers the same operations on the command line, makes DNSSEC keys, and
// runs the whole stack for a laptop (dev).
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"

	"github.com/deviceid/deviceid/internal/cli"
	"github.com/deviceid/deviceid/internal/version"
)

const usage = `usage: deviceid-signer <command> [flags]
       deviceid-signer -version

commands (each has -h):
  serve            serve EST, the admin API, the console, CA discovery, /healthz and /metrics over HTTPS
  init-ca          make a CA (ca.pem, its key in ca-key.pem or an HSM) and an admin token
  keygen           write a DNSSEC key pair for the deviceid plugin and print its DS
  dev              run everything for a laptop: embedded etcd, CA, DNSSEC key, demo tenant, signer
  keys             hands-free DNSSEC keys: enable, import, list, roll, pause, resume (keys -h)

 devices:
  register         reserve a device name for a tenant, with attributes
  code             issue a one-time enrollment code for a device's EST enrollment
  enroll           enroll a device with a CSR (-csr) or a bare public key (-pubkey)
  suspend, resume  stop and restart DNS vouching for a device
  revoke           revoke a device's key (-spki-sha256) or all its keys, with a reason
  attributes       replace a device's attributes
  transfer         start a transfer (prints the code for the gaining tenant)
  transfer-accept  complete a transfer with that code; transfer-cancel withdraws it
  assign           give a device to a tenant without a code (the operator)
  delete           delete a device
  show, list       a device; devices a page at a time with filters
  export           every matching device as JSON lines
  import           register or enroll devices from a CSV or JSON-lines file (resumable)
  reindex          make the tenant index agree with records written into etcd directly
  audit            the audit trail, with filters and a time range
  overview         devices by state, the last 14 days' activity, expiring keys, DNS (JSON)
 services (DANE server identities):
  services, service-show, service-key (publish or rotate), service-revoke, service-delete
 tenants:
  tenants, tenant-create, tenant-disable, tenant-enable, tenant-delete
  token, tokens, token-revoke    a tenant's bearer tokens

The device and tenant commands work on etcd directly as the operator (with -zone and
the -etcd* flags, which CoreDNS's DEVICEID_ETCD* variables set too; enroll also needs
the CA), or through a running signer with -server and -token-file (the operator's
token or a tenant's).
`

// commandNames are the commands main knows, for the suggestion after a misspelt one.
func commandNames() []string {
	names := []string{"dev", "keygen", "serve", "init-ca", "import", "reindex", "keys", "help", "version"}
	for name := range adminCommands {
		names = append(names, name)
	}
	slices.Sort(names[9:]) // ties go to the earlier name: the same one every run
	return names
}

// unknownCommand is the message for a command main does not know, with the nearest
// known one and the usage.
func unknownCommand(name string) string {
	return fmt.Sprintf("deviceid-signer: unknown command %q%s\n\n%s", name, cli.Hint(name, commandNames()), usage)
}

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
	case "import":
		err = importCommand(os.Args[2:])
	case "reindex":
		err = reindexCommand(os.Args[2:])
	case "keys":
		err = keysCommand(os.Args[2:])
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	case "-version", "--version", "version":
		fmt.Println("deviceid-signer", version.String())
		return
	default:
		if _, ok := adminCommands[os.Args[1]]; ok {
			err = runAdmin(os.Args[1], os.Args[2:])
			break
		}
		fmt.Fprint(os.Stderr, unknownCommand(os.Args[1]))
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
