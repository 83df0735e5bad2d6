// Command coredns is CoreDNS with the deviceid plugin and a curated set of in-tree
// plugins (see cmd/coredns/plugins).
package main

import (
	"flag"
	"fmt"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/coremain"

	_ "github.com/deviceid/deviceid/cmd/coredns/plugins"
	"github.com/deviceid/deviceid/internal/version"
)

func main() {
	// -version, -plugins and the startup line name the deviceid build, so which plugin
	// a replica runs can be told: "CoreDNS-1.15.0 (deviceid v1.2.3)".
	caddy.AppVersion = coremain.CoreVersion + " (deviceid " + version.String() + ")"
	flag.Parse() // coremain's flags, registered by its init; Run parses them again
	if f := flag.Lookup("plugins"); f != nil && f.Value.String() == "true" {
		fmt.Printf("%s-%s\n", caddy.AppName, caddy.AppVersion)
	}
	coremain.Run()
}
