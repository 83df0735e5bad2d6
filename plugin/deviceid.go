// Package deviceid is a CoreDNS plugin that serves IoT device identities stored in
// etcd as TLSA records at <device>._device.<zone> (DANE client authentication).
package deviceid

import (
	"context"
	"sync"

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
	Next    plugin.Handler
	origins []string
	zones   map[string]*zone
	cfg     *config

	client *clientv3.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newDeviceid(cfg *config) *Deviceid {
	d := &Deviceid{origins: cfg.zones, zones: make(map[string]*zone), cfg: cfg}
	for _, origin := range cfg.zones {
		d.zones[origin] = &zone{origin: origin, cfg: cfg, rejected: make(map[string]int64)}
	}
	return d
}

// ServeDNS implements the plugin.Handler interface.
func (d *Deviceid) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	qname := state.Name()
	origin := plugin.Zones(d.origins).Matches(qname)
	if origin == "" {
		return plugin.NextOrFailure(d.Name(), d.Next, ctx, w, r)
	}
	if r.Opcode != dns.OpcodeQuery {
		return dns.RcodeNotImplemented, nil
	}
	qtype := state.QType()
	if qtype == dns.TypeAXFR || qtype == dns.TypeIXFR || state.QClass() != dns.ClassINET {
		return dns.RcodeRefused, nil
	}
	a, ok := d.zones[origin].lookup(qname, qtype)
	if !ok {
		return dns.RcodeServerFailure, nil // not loaded from etcd yet
	}

	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	switch {
	case len(a.rrs) > 0:
		m.Answer = withOwner(a.rrs, state.QName())
	case a.exists:
		m.Ns = []dns.RR{dns.Copy(a.soa)}
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{dns.Copy(a.soa)}
	}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// withOwner copies rrs with owner name qname, which keeps the query's case. The
// stored RRs are shared between queries and must not be written, not even by Pack.
func withOwner(rrs []dns.RR, qname string) []dns.RR {
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
		out[i].Header().Name = qname
	}
	return out
}

// Name implements the plugin.Handler interface.
func (d *Deviceid) Name() string { return pluginName }

// Ready implements the ready.Readiness interface: ready once every zone has been
// loaded from etcd.
func (d *Deviceid) Ready() bool {
	for _, z := range d.zones {
		z.mu.RLock()
		loaded := z.idx != nil
		z.mu.RUnlock()
		if !loaded {
			return false
		}
	}
	return true
}

// start connects to etcd and starts following each zone.
func (d *Deviceid) start() error {
	cli, err := clientv3.New(d.cfg.etcdConfig())
	if err != nil {
		return err
	}
	d.client = cli
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	for _, z := range d.zones {
		d.wg.Go(func() { z.run(ctx, cli) })
	}
	return nil
}

// stop ends the watches and closes the etcd client.
func (d *Deviceid) stop() error {
	if d.cancel == nil {
		return nil
	}
	d.cancel()
	d.wg.Wait()
	return d.client.Close()
}
