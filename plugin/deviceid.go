// Package deviceid is a CoreDNS plugin that serves IoT device identities stored in
// etcd as TLSA records at <device>._device.<zone> (DANE client authentication).
package deviceid

import (
	"context"
	"sync"
	"time"

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

	if len(a.apex) > 0 {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, rr := range a.apex {
			// The stored RRs are shared between queries and must not be written, not
			// even by Pack (which sets Rdlength): copy, and take the query's case.
			rr = dns.Copy(rr)
			rr.Header().Name = state.QName()
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}

	now := time.Now().UnixNano()
	var err error
	switch {
	case published(a.tlsa, now):
		err = writePacked(w, state, dns.RcodeSuccess, a.tlsa, nil, 0, now)
	case a.exists:
		err = writePacked(w, state, dns.RcodeSuccess, nil, a.soa, 1, now)
	default:
		err = writePacked(w, state, dns.RcodeNameError, nil, a.soa, 1, now)
	}
	if err != nil {
		return dns.RcodeServerFailure, err
	}
	return dns.RcodeSuccess, nil
}

// published reports whether any of rrs is published at now.
func published(rrs []packedRR, now int64) bool {
	for i := range rrs {
		if rrs[i].until == 0 || now < rrs[i].until {
			return true
		}
	}
	return false
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
