// Package trustflags declares the flags by which deviceid's commands (deviceid-verify,
// deviceid-mqtt, deviceid-device) say how they trust DNS answers, and builds the
// verify.Verifier they describe: one place for the flags, their help and their rules.
package trustflags

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/deviceid/deviceid/verify"
)

// Flags are the trust settings of a command.
type Flags struct {
	resolver, ds, server string
	resolverTrusted      bool
	maxTTL               time.Duration
}

// Register declares -resolver, -resolver-trusted, -ds, -server and -max-ttl on fs, with
// the defaults given for -ds and -server.
func Register(fs *flag.FlagSet, ds, server string) *Flags {
	f := &Flags{}
	fs.StringVar(&f.resolver, "resolver", "", "a validating resolver (host:port) whose AD bit is trusted; on loopback unless -resolver-trusted")
	fs.BoolVar(&f.resolverTrusted, "resolver-trusted", false, "the path to a -resolver off loopback is trusted (anyone on it could forge the AD bit)")
	fs.StringVar(&f.ds, "ds", ds, "instead of -resolver: the zone's DS (or DNSKEY) record, or a file holding it, validating locally")
	fs.StringVar(&f.server, "server", server, "with -ds: the zone's authoritative server (host:port)")
	fs.DurationVar(&f.maxTTL, "max-ttl", verify.DefaultMaxTTL, "the longest a DNS answer is cached, whatever its TTL says")
	return f
}

// Verifier returns a verifier for zones as the flags say: trusting -resolver's AD bit
// when one is given, else validating locally from -ds at -server; checked
// (verify.Verifier.Check), so that a resolver off loopback is refused at once.
func (f *Flags) Verifier(zones []string) (*verify.Verifier, error) {
	v := &verify.Verifier{Zones: zones, Resolver: f.resolver, ResolverTrusted: f.resolverTrusted, MaxTTL: f.maxTTL}
	if f.resolver == "" {
		if f.ds == "" || f.server == "" {
			return nil, errors.New("give -resolver (a validating resolver), or -ds with -server (validate locally)")
		}
		anchor, err := verify.ParseTrustAnchor(f.ds)
		if err != nil {
			return nil, fmt.Errorf("-ds: %w", err)
		}
		v.TrustAnchor, v.Server = anchor, f.server
	}
	return v, v.Check()
}
