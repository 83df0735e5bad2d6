// Package plugins is the one list of CoreDNS plugins compiled into deviceid's CoreDNS
// binary, and their execution order. cmd/coredns and the end-to-end tests both import
// it, so the tests run exactly the server that users run.
package plugins

import (
	"github.com/coredns/coredns/core/dnsserver"

	// Curated in-tree plugins: what an authoritative identity server needs.
	_ "github.com/coredns/coredns/plugin/acl"
	_ "github.com/coredns/coredns/plugin/any"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/bufsize"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/cancel"
	_ "github.com/coredns/coredns/plugin/chaos"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/dnssec"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/multisocket" // several sockets on one port (SO_REUSEPORT): one server per core
	_ "github.com/coredns/coredns/plugin/nsid"
	_ "github.com/coredns/coredns/plugin/pprof"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/root"
	_ "github.com/coredns/coredns/plugin/tls"
	_ "github.com/coredns/coredns/plugin/whoami"

	_ "github.com/deviceid/deviceid/plugin" // registers the deviceid directive
)

// Directives is the execution order: a plugin earlier in the list wraps the later ones.
// deviceid sits after cache and dnssec and before file, as CoreDNS's etcd plugin does.
var Directives = []string{
	"root",
	"metadata",
	"tls",
	"cancel",
	"multisocket",
	"reload",
	"nsid",
	"bufsize",
	"bind",
	"debug",
	"ready",
	"health",
	"pprof",
	"prometheus",
	"errors",
	"log",
	"any",
	"chaos",
	"acl",
	"cache",
	"dnssec",
	"transfer",
	"deviceid",
	"file",
	"whoami",
}

func init() {
	if err := dnsserver.SetDirectives(Directives); err != nil {
		panic(err) // a mistake in the list above, found at the first start
	}
}
