// Command coredns is CoreDNS with the deviceid plugin and a curated set of in-tree
// plugins (see internal/plugins).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/deviceid/deviceid/internal/plugins"
)

func main() { coremain.Run() }
