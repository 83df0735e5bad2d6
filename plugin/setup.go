package deviceid

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/deviceid/deviceid/internal/etcdclient"
	"github.com/deviceid/deviceid/internal/kek"
	"github.com/deviceid/deviceid/internal/pkcs11key"
	"github.com/deviceid/deviceid/record"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"

	"github.com/miekg/dns"
)

func init() { plugin.Register(pluginName, setup) }

// Defaults of the Corefile options (docs/design.md).
const (
	defaultPrefix            = "/deviceid"
	defaultTTL               = 60
	defaultSignatureValidity = 24 * time.Hour
	minSignatureValidity     = 2 * time.Hour
	defaultSignatureCache    = 100000
	// defaultMaxUDPSize bounds answers over UDP: what DNS Flag Day 2020 settled on, an
	// answer that is not fragmented on any usual path and amplifies a query at most
	// about 23 times.
	defaultMaxUDPSize = 1232
	minMaxUDPSize     = 512
	maxMaxUDPSize     = 4096
	maxFastSockets    = 256
)

// config is one deviceid block of the Corefile.
type config struct {
	zones    []string // lower case, fully qualified
	etcd     etcdclient.Settings
	prefix   string
	keyFiles []string           // BIND key file base names
	keyURIs  []string           // PKCS#11 URIs of keys in an HSM
	keys     map[string]*keySet // by zone; a zone without keys is not signed
	hsmKeys  []*pkcs11key.Key   // the keys opened in HSMs, closed on shutdown
	// keysFromEtcd: the zones' keys and their timeline come from P/<zone>/dnssec/
	// (keys etcd), their wrapped private keys opened with kek.
	keysFromEtcd bool
	kek          *kek.KEK
	hsm          string // the token keys etcd finds keys in: a pkcs11: URI with module and PIN
	// snapshotDir keeps each zone's snapshot, written every snapshotInterval ("": none).
	snapshotDir      string
	snapshotInterval time.Duration
	ns               []string
	ttl              uint32
	render           record.RenderOptions
	validity         time.Duration
	cds              bool
	cacheSize        int     // proofs of nonexistence cached per zone
	denialBudget     float64 // signatures a second for names that do not exist; 0: no limit; autoBudget: measured
	maxUDPSize       uint16  // the largest answer over UDP; 0: defaultMaxUDPSize
	rrl              rrlConfig
	// fastpath: UDP queries answered on sockets of the block's own (fastpath.go),
	// fastSockets per address (0: one per core).
	fastpath    bool
	fastSockets int
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	d := newDeviceid(cfg)
	conf := dnsserver.GetConfig(c)
	if cfg.fastpath {
		if err := claimFastPath(c.Context(), conf); err != nil {
			return plugin.Error(pluginName, err)
		}
		f := &fastPaths{d: d, sockets: cfg.fastSockets, prev: conf.UDPDecorateWriterFunc, conf: conf}
		conf.UDPDecorateWriterFunc = f.decorate
		c.OnStartup(f.check) // first: a block refused starts nothing
		c.OnShutdown(f.stop)
	}
	c.OnStartup(d.start)
	c.OnShutdown(d.stop)
	conf.AddPlugin(func(next plugin.Handler) plugin.Handler {
		d.Next = next
		return d
	})
	return nil
}

func parse(c *caddy.Controller) (*config, error) {
	cfg := &config{
		etcd:         etcdclient.FromEnv(),
		prefix:       defaultPrefix,
		ttl:          defaultTTL,
		render:       record.RenderOptions{RevokedUsage: record.UsageRevoked, Discovery: true},
		validity:     defaultSignatureValidity,
		cds:          true,
		cacheSize:    defaultSignatureCache,
		denialBudget: autoBudget,
		maxUDPSize:   defaultMaxUDPSize,
		rrl:          defaultRRL,
	}
	blocks := 0
	for c.Next() {
		if blocks++; blocks > 1 {
			return nil, plugin.ErrOnce
		}
		cfg.zones = plugin.OriginsFromArgsOrServerBlock(c.RemainingArgs(), c.ServerBlockKeys)
		for i, z := range cfg.zones {
			cfg.zones[i] = record.Zone(z)
		}
		root := dnsserver.GetConfig(c).Root
		for c.NextBlock() {
			if err := parseOption(c, cfg, root); err != nil {
				return nil, err
			}
		}
	}
	if len(cfg.ns) == 0 {
		cfg.ns = []string{"ns1." + cfg.zones[0]}
	}
	if _, err := cfg.etcd.Config(); err != nil {
		return nil, c.Errf("etcd: %v", err)
	}
	if cfg.keysFromEtcd && len(cfg.keyFiles)+len(cfg.keyURIs) > 0 {
		return nil, c.Err("keys etcd and key lines exclude each other: the zone's keys come from etcd, or from the Corefile")
	}
	if cfg.kek != nil && !cfg.keysFromEtcd {
		return nil, c.Err("kek opens the wrapped keys of keys etcd; without it, remove the kek line")
	}
	if cfg.hsm != "" && !cfg.keysFromEtcd {
		return nil, c.Err("hsm opens the keys of keys etcd that are in a token; without it, remove the hsm line (a key in an HSM for the Corefile is a key pkcs11 line)")
	}
	if err := cfg.loadKeys(); err != nil {
		return nil, c.Err(err.Error())
	}
	return cfg, nil
}

// loadKeys reads the key files, opens the keys in HSMs, and sorts the keys by zone.
// A key in an HSM is a SEP key (a KSK, or a CSK alone) of the block's one zone.
func (cfg *config) loadKeys() error {
	byZone := make(map[string][]*key)
	if len(cfg.keyURIs) > 0 && len(cfg.zones) != 1 {
		return fmt.Errorf("key pkcs11 needs a block that serves one zone, not %d: the key does not name its zone", len(cfg.zones))
	}
	for _, uri := range cfg.keyURIs {
		k, err := loadPKCS11Key(uri, cfg.zones[0])
		if err != nil {
			cfg.closeKeys()
			return fmt.Errorf("key pkcs11: %v", err)
		}
		cfg.hsmKeys = append(cfg.hsmKeys, k.signer.(*pkcs11key.Key))
		byZone[cfg.zones[0]] = append(byZone[cfg.zones[0]], k)
	}
	for _, f := range cfg.keyFiles {
		k, err := loadKey(f)
		if err != nil {
			cfg.closeKeys()
			return fmt.Errorf("key file %s: %v", f, err)
		}
		if !slices.Contains(cfg.zones, k.dnskey.Hdr.Name) {
			cfg.closeKeys()
			return fmt.Errorf("key file %s is for zone %s, which this block does not serve", f, k.dnskey.Hdr.Name)
		}
		byZone[k.dnskey.Hdr.Name] = append(byZone[k.dnskey.Hdr.Name], k)
	}
	cfg.keys = make(map[string]*keySet)
	for zone, keys := range byZone {
		ks, err := newKeySet(zone, keys, cfg.ttl, cfg.cds)
		if err != nil {
			cfg.closeKeys()
			return err
		}
		cfg.keys[zone] = ks
	}
	return nil
}

// parseOption parses one option of the block; relative file names are joined with
// the server's root, as CoreDNS's own plugins do.
func parseOption(c *caddy.Controller, cfg *config, root string) error {
	opt := c.Val()
	args := c.RemainingArgs()
	switch opt {
	case "endpoint":
		args = etcdclient.SplitEndpoints(strings.Join(args, " "))
		if len(args) == 0 {
			return c.Errf("endpoint: no URL (an empty {$%s}?)", etcdclient.EnvEndpoints)
		}
		for _, e := range args {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return c.Errf("endpoint %q is not an http:// or https:// URL", e)
			}
		}
		cfg.etcd.Endpoints = args
	case "tls":
		// As the etcd plugin's: none (the system's CAs), CACERT, CERT KEY, or all three.
		for i := range args {
			args[i] = inRoot(root, args[i])
		}
		switch len(args) {
		case 0:
		case 1:
			cfg.etcd.CAFile = args[0]
		case 2:
			cfg.etcd.CertFile, cfg.etcd.KeyFile = args[0], args[1]
		case 3:
			cfg.etcd.CertFile, cfg.etcd.KeyFile, cfg.etcd.CAFile = args[0], args[1], args[2]
		default:
			return c.ArgErr()
		}
	case "credentials":
		if len(args) != 2 {
			return c.ArgErr()
		}
		cfg.etcd.Username, cfg.etcd.Password = args[0], args[1]
	case "prefix":
		if len(args) != 1 {
			return c.ArgErr()
		}
		if !strings.HasPrefix(args[0], "/") || strings.TrimRight(args[0], "/") == "" {
			return c.Errf("prefix %q must start with '/' and name a directory below the root", args[0])
		}
		cfg.prefix = strings.TrimRight(args[0], "/")
	case "key":
		args = fields(args)
		if len(args) < 2 || (args[0] != "file" && args[0] != "pkcs11") {
			return c.Errf("want 'key file NAME...' or 'key pkcs11 URI...' (an empty {$VARIABLE}, such as $DEVICEID_KEYS, leaves no name)")
		}
		for _, a := range args[1:] {
			if args[0] == "pkcs11" {
				if !pkcs11key.IsURI(a) {
					return c.Errf("key pkcs11 %q is not a pkcs11: URI (RFC 7512)", a)
				}
				cfg.keyURIs = append(cfg.keyURIs, a)
			} else {
				cfg.keyFiles = append(cfg.keyFiles, inRoot(root, a))
			}
		}
	case "keys":
		if len(args) != 1 || args[0] != "etcd" {
			return c.Errf("want 'keys etcd': the zone's keys and their timeline from etcd")
		}
		cfg.keysFromEtcd = true
	case "kek":
		if len(args) != 2 || args[0] != "file" {
			return c.Errf("want 'kek file PATH': the key-encryption key of the zone keys in etcd")
		}
		k, err := kek.Load(inRoot(root, args[1]))
		if err != nil {
			return c.Err(err.Error())
		}
		cfg.kek = k
	case "snapshot":
		if len(args) < 1 || len(args) > 2 {
			return c.Errf("want 'snapshot DIR [INTERVAL]': where each zone's snapshot is kept, and how often it is written (default 5m)")
		}
		dir := inRoot(root, args[0])
		if info, err := os.Stat(dir); err != nil || !info.IsDir() {
			return c.Errf("snapshot %s is not a directory", dir)
		}
		cfg.snapshotDir, cfg.snapshotInterval = dir, 5*time.Minute
		if len(args) == 2 {
			d, err := time.ParseDuration(args[1])
			if err != nil || d < time.Second {
				return c.Errf("snapshot interval %q: want a duration of 1s or more", args[1])
			}
			cfg.snapshotInterval = d
		}
	case "hsm":
		if len(args) != 1 {
			return c.Errf("want 'hsm pkcs11:token=LABEL?module-path=...&pin-source=...': the token of the zone keys in etcd that are in an HSM")
		}
		if err := pkcs11key.CheckToken(args[0]); err != nil {
			return c.Errf("hsm: %v", err)
		}
		cfg.hsm = args[0]
	case "ns":
		args = fields(args)
		if len(args) == 0 {
			return c.ArgErr()
		}
		cfg.ns = nil
		for _, n := range args {
			if _, ok := dns.IsDomainName(n); !ok || !dns.IsFqdn(n) {
				return c.Errf("ns %q is not a fully qualified domain name (end it with '.')", n)
			}
			cfg.ns = append(cfg.ns, strings.ToLower(n))
		}
	case "ttl":
		if len(args) != 1 {
			return c.ArgErr()
		}
		ttl, err := strconv.ParseUint(args[0], 10, 32)
		if err != nil || ttl == 0 || ttl > record.MaxTTL {
			return c.Errf("ttl %q is not a number of seconds from 1 to %d", args[0], record.MaxTTL)
		}
		cfg.ttl = uint32(ttl)
	case "revoked_usage":
		if len(args) != 1 {
			return c.ArgErr()
		}
		u, err := strconv.ParseUint(args[0], 10, 8)
		// 0-3 are the usable DANE usages and 4 is PKIX-CD: a revoked key must never
		// look usable to a verifier that does not know our extension.
		if err != nil || u <= record.UsagePKIXCD {
			return c.Errf("revoked_usage %q is not a number from 5 to 255", args[0])
		}
		cfg.render.RevokedUsage = uint8(u)
	case "discovery":
		on, err := onOff(c, opt, args)
		if err != nil {
			return err
		}
		cfg.render.Discovery = on
	case "signature_validity":
		if len(args) != 1 {
			return c.ArgErr()
		}
		v, err := time.ParseDuration(args[0])
		if err != nil || v < minSignatureValidity {
			return c.Errf("signature_validity %q is not a duration of at least %s", args[0], minSignatureValidity)
		}
		cfg.validity = v
	case "cds":
		on, err := onOff(c, opt, args)
		if err != nil {
			return err
		}
		cfg.cds = on
	case "signature_cache":
		if len(args) != 1 {
			return c.ArgErr()
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 {
			return c.Errf("signature_cache %q is not a positive number of entries", args[0])
		}
		cfg.cacheSize = n
	case "denial_budget":
		if len(args) != 1 {
			return c.ArgErr()
		}
		switch args[0] {
		case "auto":
			cfg.denialBudget = autoBudget
		case "off":
			cfg.denialBudget = 0
		default:
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 {
				return c.Errf("denial_budget %q: want auto, off, or a positive number of signatures a second", args[0])
			}
			cfg.denialBudget = float64(n)
		}
	case "max_udp_size":
		if len(args) != 1 {
			return c.ArgErr()
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < minMaxUDPSize || n > maxMaxUDPSize {
			return c.Errf("max_udp_size %q is not a number of bytes from %d to %d", args[0], minMaxUDPSize, maxMaxUDPSize)
		}
		cfg.maxUDPSize = uint16(n)
	case "fastpath":
		if len(args) > 1 {
			return c.Errf("want 'fastpath [SOCKETS]': UDP queries answered on sockets of the plugin's own, SOCKETS per address (default one per core)")
		}
		cfg.fastpath = true
		if len(args) == 1 {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 || n > maxFastSockets {
				return c.Errf("fastpath %q is not a number of sockets from 1 to %d", args[0], maxFastSockets)
			}
			cfg.fastSockets = n
		}
	case "rrl":
		r, err := parseRRL(c, args)
		if err != nil {
			return err
		}
		cfg.rrl = r
	default:
		return c.Errf("unknown property '%s'", opt)
	}
	return nil
}

// parseRRL parses 'rrl off' or 'rrl RATE [SETTING VALUE]... [exempt none|PREFIX...]'.
func parseRRL(c *caddy.Controller, args []string) (rrlConfig, error) {
	r := defaultRRL
	if len(args) == 0 {
		return r, c.ArgErr()
	}
	if args[0] == "off" {
		if len(args) != 1 {
			return r, c.ArgErr()
		}
		r.rate = 0
		return r, nil
	}
	rate, err := strconv.Atoi(args[0])
	if err != nil || rate < 1 || rate > maxRRLRate {
		return r, c.Errf("rrl %q: want off, or a number of responses a second per client prefix from 1 to %d", args[0], maxRRLRate)
	}
	r.rate = rate
	settings := map[string]struct {
		to       *int
		min, max int
		what     string
	}{
		"window":      {&r.window, 1, maxRRLWindow, "seconds of the rate a quiet prefix may use at once"},
		"slip":        {&r.slip, 0, maxRRLSlip, "every Nth limited response is sent with TC, the others dropped; 0: all dropped"},
		"ipv4_prefix": {&r.v4, 0, 32, "the bits of an IPv4 address that make its client prefix"},
		"ipv6_prefix": {&r.v6, 0, 128, "the bits of an IPv6 address that make its client prefix"},
		"table_size":  {&r.tableSize, minRRLTableSize, maxRRLTableSize, "buckets, one per client prefix"},
	}
	for i := 1; i < len(args); i++ {
		name := args[i]
		if name == "exempt" {
			r.exempt = []netip.Prefix{} // replaces the default, loopback
			n := 0
			for ; i+1 < len(args) && args[i+1] != "exempt" && settings[args[i+1]].to == nil; i, n = i+1, n+1 {
				a := args[i+1]
				if a == "none" {
					continue
				}
				p, ok := exemptPrefix(a)
				if !ok {
					return r, c.Errf("rrl exempt %q is not an address or a prefix (such as 10.0.0.0/8 or ::1), nor none", a)
				}
				r.exempt = append(r.exempt, p)
			}
			if n == 0 {
				return r, c.Errf("rrl exempt: name the prefixes not limited, or none")
			}
			continue
		}
		s, ok := settings[name]
		if !ok {
			return r, c.Errf("rrl: unknown setting '%s' (want window, slip, ipv4_prefix, ipv6_prefix, table_size or exempt)", name)
		}
		if i+1 == len(args) {
			return r, c.Errf("rrl %s: no value", name)
		}
		i++
		v, err := strconv.Atoi(args[i])
		if err != nil || v < s.min || v > s.max {
			return r, c.Errf("rrl %s %q: want a number from %d to %d (%s)", name, args[i], s.min, s.max, s.what)
		}
		*s.to = v
	}
	return r, nil
}

// exemptPrefix parses an address or a prefix; an IPv4-mapped one is taken as IPv4, as
// client addresses are.
func exemptPrefix(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			return netip.Prefix{}, false
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	if a := p.Addr(); a.Is4In6() {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), p.IsValid()
}

// closeKeys logs out of the HSMs the block's keys are in.
func (cfg *config) closeKeys() {
	for _, k := range cfg.hsmKeys {
		k.Close()
	}
	cfg.hsmKeys = nil
}

// inRoot joins a relative file name with the server's root directory, if one is set.
func inRoot(root, name string) string {
	if root == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(root, name)
}

// fields splits arguments at white space, so that one environment variable
// ({$DEVICEID_ETCD} in a Corefile) can hold several endpoints or names.
func fields(args []string) []string {
	var out []string
	for _, a := range args {
		out = append(out, strings.Fields(a)...)
	}
	return out
}

func onOff(c *caddy.Controller, opt string, args []string) (bool, error) {
	if len(args) != 1 {
		return false, c.ArgErr()
	}
	switch args[0] {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, c.Errf("%s %q: want on or off", opt, args[0])
}
