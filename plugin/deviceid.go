// Package deviceid is a CoreDNS plugin that serves IoT device identities stored in
// etcd as TLSA records at <device>._device.<zone> (DANE client authentication).
package deviceid

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/coredns/coredns/request"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const pluginName = "deviceid"

var log = clog.NewWithPlugin(pluginName)

// Deviceid serves the zones of one deviceid block in the Corefile.
type Deviceid struct {
	Next  plugin.Handler
	zones map[string]*zone // by origin: cfg.zones
	cfg   *config

	now func() time.Time // the clock of signing and rate limiting; tests set it
	rrl *rrl             // nil: responses are not rate limited

	client *clientv3.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newDeviceid(cfg *config) *Deviceid {
	if cfg.maxUDPSize == 0 {
		cfg.maxUDPSize = defaultMaxUDPSize
	}
	d := &Deviceid{zones: make(map[string]*zone), cfg: cfg, now: time.Now, rrl: newRRL(cfg.rrl)}
	for _, origin := range cfg.zones {
		z := &zone{origin: origin, cfg: cfg, rejected: make(map[string]int64), loaded: make(chan struct{}),
			kick: make(chan struct{}, 1), now: func() time.Time { return d.now() }}
		if ks := cfg.keys[origin]; ks != nil || cfg.keysFromEtcd {
			z.keys = ks
			if cfg.keysFromEtcd {
				z.keyring, z.rekeyNow = newZoneKeys(), make(chan struct{}, 1)
			}
			z.signer = newSigner(origin, cfg.validity, cfg.cacheSize) // its budget is set by start
		}
		d.zones[origin] = z
	}
	return d
}

// ServeDNS implements the plugin.Handler interface.
func (d *Deviceid) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	qname := state.Name()
	origin := matchZone(d.cfg.zones, qname)
	if origin == "" {
		return plugin.NextOrFailure(d.Name(), d.Next, ctx, w, r)
	}
	// Over UDP no answer is larger than max_udp_size, whatever buffer the query offers:
	// as the bufsize plugin does, the query's is lowered, so that the answers packed
	// here, the ones written as messages (which the server's writer truncates to the
	// query's buffer) and the OPT record of each all follow it.
	if o := r.IsEdns0(); o != nil && o.UDPSize() > d.cfg.maxUDPSize {
		o.SetUDPSize(d.cfg.maxUDPSize)
	}
	now := d.now()
	// Rate limiting comes before any other work, signatures above all, and applies to
	// every response of the zones, errors too.
	if d.rrl != nil {
		if v := d.rrl.check(w.RemoteAddr(), now.UnixNano()); v != rrlAnswer {
			return d.limited(w, state, origin, v, now)
		}
	}
	if r.Opcode != dns.OpcodeQuery {
		return dns.RcodeNotImplemented, nil
	}
	qtype := state.QType()
	if qtype == dns.TypeAXFR || qtype == dns.TypeIXFR || state.QClass() != dns.ClassINET {
		return dns.RcodeRefused, nil
	}
	if qtype == dns.TypeNXNAME {
		return dns.RcodeFormatError, nil // RFC 9824 §3.2: a meta-type, not to be asked for
	}
	z := d.zones[origin]
	do := z.signer != nil && state.Do()
	var err error
	if qname == z.origin {
		err = z.serveApex(w, state, do, now)
	} else {
		q := queryOf(state)
		var p packet
		defer p.release()
		if err = p.start(r.Question[0]); err == nil {
			if err = z.answer(&p, &q, qname, do, false, now); err == nil {
				p.seal(&q, origin)
				err = p.send(w)
			}
		}
	}
	switch {
	case errors.Is(err, errNotLoaded):
		return dns.RcodeServerFailure, nil
	case errors.Is(err, errRefused):
		return dns.RcodeRefused, nil
	}
	if errors.Is(err, errNameTooLong) {
		return dns.RcodeServerFailure, nil
	}
	if err != nil {
		log.Errorf("zone %s: answering %s %s: %v", origin, qname, dns.TypeToString[qtype], err)
		return dns.RcodeServerFailure, err
	}
	return dns.RcodeSuccess, nil
}

// limited answers a query whose response is over the rate limit of its client's
// prefix: with TC and no records (slip), or not at all.
func (d *Deviceid) limited(w dns.ResponseWriter, state request.Request, origin string, v rrlVerdict, now time.Time) (int, error) {
	var p packet
	defer p.release()
	if err := p.start(state.Req.Question[0]); err != nil || !d.limit(&p, v, origin, w.RemoteAddr(), now) {
		return dns.RcodeSuccess, nil // nothing written: the server sends nothing
	}
	q := queryOf(state)
	p.seal(&q, origin)
	return dns.RcodeSuccess, p.send(w)
}

// limit counts a response over the rate limit to addr, and reports whether one is sent:
// then p, started with the question, holds it (TC, no records).
func (d *Deviceid) limit(p *packet, v rrlVerdict, origin string, addr net.Addr, now time.Time) bool {
	d.rrl.note(now.UnixNano(), origin, addr)
	if v == rrlDrop {
		rrlDropped.WithLabelValues(origin).Inc()
		return false
	}
	rrlSlipped.WithLabelValues(origin).Inc()
	p.truncate()
	p.rcode = dns.RcodeSuccess
	return true
}

// matchZone returns the longest of origins that qname (lower case) is in or below, or
// "". Unlike plugin.Zones.Matches it allocates nothing: it runs for every query.
func matchZone(origins []string, qname string) string {
	var best string
	for _, o := range origins {
		if len(o) > len(best) && strings.HasSuffix(qname, o) &&
			(len(qname) == len(o) || o == "." || separator(qname, len(qname)-len(o)-1)) {
			best = o
		}
	}
	return best
}

// separator reports whether name[i] is a dot between labels, not one escaped into a
// label (foo\.iot.example. is not below iot.example.).
func separator(name string, i int) bool {
	if name[i] != '.' {
		return false
	}
	escaped := false
	for j := i - 1; j >= 0 && name[j] == '\\'; j-- {
		escaped = !escaped
	}
	return !escaped
}

// Name implements the plugin.Handler interface.
func (d *Deviceid) Name() string { return pluginName }

// Ready implements the ready.Readiness interface: ready once every zone has been
// loaded from etcd.
func (d *Deviceid) Ready() bool {
	for _, z := range d.zones {
		if z.current() == nil {
			return false
		}
	}
	return true
}

// start connects to etcd and starts following each zone.
func (d *Deviceid) start() error {
	cli, err := d.cfg.etcd.New()
	if err != nil {
		return err
	}
	d.client = cli
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	// Say at once, not after the load's timeout, when etcd cannot be used, and why.
	d.wg.Go(func() {
		for _, z := range d.zones {
			if err := d.cfg.etcd.Check(ctx, cli, record.ZonePrefix(d.cfg.prefix, z.origin)); err != nil && ctx.Err() == nil {
				log.Errorf("zone %s: %v", z.origin, err)
			}
		}
	})
	for _, z := range d.zones {
		d.wg.Go(func() { z.run(ctx, cli) })
		if z.signer != nil {
			z.signer.budget.rate = d.cfg.denialRate(z.signer, z.keys)
			d.wg.Go(func() { z.signAhead(ctx) })
		}
	}
	// Wait a while for the first load, so that a server started (or reloaded: the old
	// one serves meanwhile) answers from the start instead of with SERVFAIL.
	deadline := time.After(startupWait)
	for _, z := range d.zones {
		select {
		case <-z.loaded:
		case <-deadline:
			log.Warningf("zone %s not loaded from etcd within %s; answering SERVFAIL until it is", z.origin, startupWait)
			return nil
		}
	}
	return nil
}

// startupWait bounds how long startup waits for the first load from etcd.
const startupWait = 15 * time.Second

// stop ends the watches and closes the etcd client.
func (d *Deviceid) stop() error {
	if d.cancel == nil {
		return nil
	}
	d.cancel()
	d.wg.Wait()
	d.cfg.closeKeys()
	for _, z := range d.zones {
		if z.keyring != nil {
			z.keyring.close()
		}
	}
	return d.client.Close()
}
