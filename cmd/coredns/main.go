// Command coredns is CoreDNS with the deviceid plugin and a curated set of in-tree
// plugins (see cmd/coredns/plugins).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/deviceid/deviceid/cmd/coredns/plugins"
)

func main() { coremain.Run() }
