package deviceid

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/deviceid/deviceid/record"

	"github.com/miekg/dns"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// loadPageSize bounds one range read of the full load from an etcd without
// RangeStream: a million devices are read in pages at one revision (one consistent
// snapshot) instead of one 150 MB response.
const loadPageSize = 10000

// requestTimeout bounds one etcd request, so an unreachable etcd is noticed and retried.
const requestTimeout = 10 * time.Second

// run keeps the zone in step with etcd until ctx ends: a full load, then the watch
// from the next revision; when the watch breaks (compaction, lost leader, closed
// stream) it loads again and swaps. While etcd is unreachable the last data is served.
func (z *zone) run(ctx context.Context, cli *clientv3.Client) {
	prefix := record.ZonePrefix(z.cfg.prefix, z.origin)
	if z.cfg.snapshotDir != "" {
		done, stopped := make(chan struct{}), make(chan struct{})
		go func() { z.keepSnapshot(done); close(stopped) }()
		defer func() { close(done); <-stopped }() // no write after the zone stopped
		z.followSnapshot(ctx, cli, prefix)
	}
	retry := time.Second
	for ctx.Err() == nil {
		x, err := z.load(ctx, cli, prefix)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warningf("zone %s: loading from etcd failed, retrying in %s: %v", z.origin, retry, z.cfg.etcd.Diagnose(ctx, prefix, err))
			loadFailures.WithLabelValues(z.origin).Inc()
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
			retry = min(2*retry, 30*time.Second)
			continue
		}
		retry = time.Second
		z.carrySigs(z.current(), x, z.now())
		z.swap(x)
		z.keyring.served(x.apex.Load().keys, z.now())
		// A full load makes several times the index's size in garbage (etcd pages,
		// JSON); give it back to the system now rather than let the process keep it.
		debug.FreeOSMemory()
		z.report(x)
		z.lagLoaded(x.loadRevision)
		log.Infof("zone %s: loaded %d devices at etcd revision %d", z.origin, x.devices.Load(), x.loadRevision)
		err = z.follow(ctx, cli, prefix, x.loadRevision)
		if ctx.Err() != nil {
			return
		}
		log.Infof("zone %s: reloading: %v", z.origin, err)
		watchRestarts.WithLabelValues(z.origin).Inc()
	}
}

// followSnapshot serves the zone's snapshot, if there is a good one, and follows etcd
// from its revision until the watch ends (etcd compacted past it, say): then the
// caller loads the zone in full, while the snapshot's data is served.
func (z *zone) followSnapshot(ctx context.Context, cli *clientv3.Client, prefix string) {
	start := time.Now()
	x, err := z.readSnapshot()
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case err != nil:
		log.Warningf("zone %s: the snapshot %s is not used, loading from etcd: %v", z.origin, z.snapshotFile(), err)
		return
	}
	z.swap(x)
	z.keyring.served(x.apex.Load().keys, z.now())
	z.report(x)
	log.Infof("zone %s: serving the snapshot of etcd revision %d (%d devices, read in %s); following etcd from there", z.origin, x.loadRevision, x.devices.Load(), time.Since(start).Round(time.Millisecond))
	// An etcd that answers with an older revision than the snapshot's was restored
	// from a backup, or is another cluster: its data, not the snapshot's.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	resp, gerr := cli.Get(rctx, prefix+"lag-probe", clientv3.WithCountOnly())
	cancel()
	switch {
	case gerr != nil:
	case x.clusterID != 0 && resp.Header.ClusterId != x.clusterID:
		log.Warningf("zone %s: the snapshot %s is of etcd cluster %x, and etcd is cluster %x: loading from etcd", z.origin, z.snapshotFile(), x.clusterID, resp.Header.ClusterId)
		return
	case resp.Header.Revision < x.loadRevision:
		log.Warningf("zone %s: the snapshot %s is of etcd revision %d, and etcd is at %d (restored from a backup): loading from etcd", z.origin, z.snapshotFile(), x.loadRevision, resp.Header.Revision)
		return
	}
	err = z.follow(ctx, cli, prefix, x.loadRevision)
	if ctx.Err() == nil {
		log.Infof("zone %s: loading in full: %v", z.origin, err)
	}
}

// load reads every record of the zone at one revision into new data. Pages are
// fetched while earlier ones are parsed, by as many workers as there are CPUs; one
// goroutine puts the parsed records into the index.
func (z *zone) load(ctx context.Context, cli *clientv3.Client, prefix string) (*zoneData, error) {
	// The keys the names are signed with are read first: the store is laid out for them.
	ks, err := z.loadKeys(ctx, cli, prefix, z.now())
	if err != nil {
		cur := z.current()
		if cur == nil {
			return nil, err
		}
		// Reloading with records that make no usable key set: load with the keys in
		// use rather than stop following etcd (revocations must still be served).
		log.Errorf("zone %s: %v; loading with the keys in use", z.origin, err)
		ks = cur.apex.Load().keys
	}
	pages := make(chan *clientv3.GetResponse, 2)
	var rev int64
	fetched := make(chan error, 1)
	go func() { fetched <- fetchPages(ctx, cli, prefix, pages, &rev) }()

	results := make(chan []parsed, 2)
	var workers sync.WaitGroup
	now := z.now()
	for range runtime.GOMAXPROCS(0) {
		workers.Go(func() {
			for resp := range pages {
				out := make([]parsed, len(resp.Kvs))
				for i, kv := range resp.Kvs {
					out[i] = z.parse(prefix, kv, now)
				}
				results <- out
			}
		})
	}
	go func() { workers.Wait(); close(results) }()

	x := z.newData(0, ks)
	z.write.Lock()
	defer z.write.Unlock()
	loaded := newZoneKeys() // the key records as this load read them
	for batch := range results {
		for _, p := range batch {
			if p.keyID != "" {
				z.takeKeyRecord(loaded, p)
				continue
			}
			z.apply(x, p, nil)
		}
	}
	if err := <-fetched; err != nil {
		x.st.free()
		return nil, err
	}
	x.loadRevision = rev
	if z.keyring != nil {
		// The keys read before the records must be the ones read with them.
		z.keyring.setRecords(z.origin, loaded.records)
		switch now2, err := z.keySetAt(z.keyring, now); {
		case err != nil:
			log.Errorf("zone %s: %v; keeping the keys in use", z.origin, err)
		case !sameZSK(ks, now2):
			x.st.free()
			return nil, errors.New("the zone's keys changed while it loaded; loading again")
		default:
			z.installKeys(x, now2, now)
		}
	}
	z.setSerial(x, rev, now)
	return x, nil
}

// fetchPages sends the keys under prefix in pages, all read at one revision, which
// it stores in rev; it closes pages. It streams them with etcd's RangeStream (etcd
// 3.7 and later): one read, sent in chunks. A paged range read counts the keys left
// in the range for every page, which made a load of ten million keys take minutes;
// against an older etcd it falls back to that.
func fetchPages(ctx context.Context, cli *clientv3.Client, prefix string, pages chan<- *clientv3.GetResponse, rev *int64) error {
	defer close(pages)
	streamed, err := streamPages(ctx, cli, prefix, pages, rev)
	if streamed || status.Code(err) != codes.Unimplemented {
		return err
	}
	return rangePages(ctx, cli, prefix, pages, rev)
}

// streamPages reads the keys under prefix with one RangeStream. It reports whether
// the server took the request (false with codes.Unimplemented from an older etcd).
func streamPages(ctx context.Context, cli *clientv3.Client, prefix string, pages chan<- *clientv3.GetResponse, rev *int64) (bool, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := time.AfterFunc(requestTimeout, cancel) // no chunk for that long: etcd is away
	defer idle.Stop()
	stream, err := cli.GetStream(sctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return false, err
	}
	took := false
	for r := range stream {
		if err := r.Err(); err != nil {
			return took, err
		}
		idle.Reset(requestTimeout)
		took = true
		if r.Header != nil {
			*rev = r.Header.Revision // on the last chunk
		}
		pages <- (*clientv3.GetResponse)(r.RangeResponse)
	}
	if *rev == 0 {
		return took, errors.New("the stream of the zone's keys ended without its revision")
	}
	return true, nil
}

// rangePages reads the keys under prefix in pages of loadPageSize, all at the
// revision of the first.
func rangePages(ctx context.Context, cli *clientv3.Client, prefix string, pages chan<- *clientv3.GetResponse, rev *int64) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	*rev = 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPageSize)}
		if *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return err
		}
		if *rev == 0 {
			*rev = resp.Header.Revision
		}
		pages <- resp
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// follow applies watch events from revision rev+1 on. It returns why the watch ended.
func (z *zone) follow(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	events := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	// A step of the keys' timeline may have come while the zone loaded.
	if err := z.rekey(); err != nil {
		return err
	}
	keyTimer := z.keyTimer()
	defer keyTimer.Stop()
	// While nothing changes, a progress notification tells that the data is current,
	// and a read of one key that the link is up (etcd's grpc-proxy passes the read,
	// not the progress request).
	progress := time.NewTicker(progressInterval)
	defer progress.Stop()
	contact := make(chan struct{}, 1)
	probe := func() {
		rctx, cancel := context.WithTimeout(wctx, progressInterval)
		defer cancel()
		cli.RequestProgress(rctx)
		if resp, err := cli.Get(rctx, prefix+"lag-probe", clientv3.WithCountOnly()); err == nil {
			z.clusterID.Store(resp.Header.ClusterId)
			select {
			case contact <- struct{}{}:
			default:
			}
		}
	}
	go probe() // at once: the cluster's id for the snapshot
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-contact:
			z.lagContact()
		case <-progress.C:
			go probe()
		case <-keyTimer.C:
			if err := z.rekey(); err != nil {
				return err
			}
			keyTimer.Stop()
			keyTimer = z.keyTimer()
		case <-z.rekeyNow:
			if err := z.rekey(); err != nil {
				return err
			}
			keyTimer.Stop()
			keyTimer = z.keyTimer()
		case resp, ok := <-events:
			if !ok {
				return errors.New("watch closed")
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("watch revision %d was compacted (now %d)", rev+1, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return err
			}
			if len(resp.Events) == 0 {
				z.clusterID.Store(resp.Header.ClusterId)
				z.lagWatched(resp.Header.Revision, rev, resp.IsProgressNotify(), false)
				continue
			}
			arrived := time.Now()
			z.write.Lock()
			x := z.current()
			now := z.now()
			keysChanged := false
			for _, ev := range resp.Events {
				var p parsed
				if ev.Type == mvccpb.DELETE {
					p = z.parseDeletion(prefix, ev.Kv)
				} else {
					p = z.parse(prefix, ev.Kv, now)
				}
				rev = ev.Kv.ModRevision
				if p.keyID != "" {
					keysChanged = z.takeKeyRecord(z.keyring, p) || keysChanged
					continue
				}
				z.apply(x, p, z.signAt(x, p, now))
			}
			z.setSerial(x, rev, now)
			z.write.Unlock()
			if keysChanged {
				if err := z.rekey(); err != nil {
					return err
				}
				keyTimer.Stop()
				keyTimer = z.keyTimer()
			}
			updateSeconds.WithLabelValues(z.origin).Observe(time.Since(arrived).Seconds())
			z.clusterID.Store(resp.Header.ClusterId)
			z.lagWatched(resp.Header.Revision, rev, false, true)
			z.report(x)
		}
	}
}

// progressInterval is how often a watch asks etcd for a progress notification.
const progressInterval = 5 * time.Second

// parsed is one stored key made ready for the index: the owner name and the packed
// RRset of its record (none for a key deleted), or why the record is invalid.
type parsed struct {
	kv     *mvccpb.KeyValue
	keyID  string // a zone key record's id (keys etcd), which the key set takes instead of the index
	owner  string // "" when the key names no record
	rr     []byte // the packed RRset, as the store keeps it
	device bool
	err    error
}

// parse checks and renders one stored key. It reads nothing but the key and the
// zone's configuration, so that several can run at once.
func (z *zone) parse(prefix string, kv *mvccpb.KeyValue, now time.Time) parsed {
	p := parsed{kv: kv}
	kind, name, err := record.SplitKey(strings.TrimPrefix(string(kv.Key), prefix))
	if err != nil {
		p.err = err
		return p
	}
	switch kind {
	case record.KindDevice:
		if p.owner, p.err = record.DeviceOwner(name, z.origin); p.err != nil {
			p.owner = ""
			return p
		}
		var d *record.Device
		if d, p.err = record.ParseDevice(kv.Value); p.err == nil {
			p.device = true
			p.rr, p.err = checkSize(z.cfg.deviceRRset(d, now))
		}
	case record.KindService:
		if p.owner, p.err = record.ServiceOwner(name, z.origin); p.err != nil {
			p.owner = ""
			return p
		}
		var d *record.Device
		if d, p.err = record.ParseDevice(kv.Value); p.err == nil {
			p.rr, p.err = checkSize(z.cfg.serviceRRset(d, now))
		}
	case record.KindDNSSEC:
		p.keyID = name
	case record.KindCA:
		p.owner = record.CAOwner(name, z.origin)
		var cert *x509.Certificate
		if cert, p.err = record.ParseCA(name, kv.Value); p.err == nil {
			p.rr, p.err = checkSize(z.cfg.caRRset(cert.Raw))
		}
	}
	return p
}

// rrset renders and packs the RRset of a record for the store; it reports false when
// it would not fit in a DNS message.
func (cfg *config) rrset(pub []record.Published) ([]byte, bool) {
	var b []byte
	for _, p := range pub {
		rdata := append([]byte{p.Usage, p.Selector, p.MatchingType}, p.Data...)
		b = appendRecord(b, p.Until, atQuestion(dns.TypeTLSA, dns.ClassINET, p.TTL, rdata))
	}
	return b, len(b) <= maxRRset
}

// deviceRRset renders and packs a device's RRset.
func (cfg *config) deviceRRset(d *record.Device, now time.Time) ([]byte, bool) {
	return cfg.rrset(d.Render(cfg.ttl, now, cfg.render))
}

// serviceRRset renders and packs the RRset of a service record.
func (cfg *config) serviceRRset(d *record.Device, now time.Time) ([]byte, bool) {
	return cfg.rrset(d.RenderService(cfg.ttl, now, cfg.render))
}

// caRRset renders and packs the RRset of a CA discovery record.
func (cfg *config) caRRset(der []byte) ([]byte, bool) {
	return cfg.rrset([]record.Published{record.CAPublished(cfg.ttl, der)})
}

// errTooLarge: an RRset that would not fit in a DNS message with its signatures.
var errTooLarge = fmt.Errorf("the records to publish exceed %d octets, more than a DNS answer can carry", maxRRset)

func checkSize(rr []byte, ok bool) ([]byte, error) {
	if !ok {
		return nil, errTooLarge
	}
	return rr, nil
}

// parseDeletion makes the deletion of one stored key ready for the index: the owner
// name of its record (none when the key names no record, or one too long for the
// zone) with nothing to publish, which apply removes.
func (z *zone) parseDeletion(prefix string, kv *mvccpb.KeyValue) parsed {
	p := parsed{kv: kv}
	kind, name, err := record.SplitKey(strings.TrimPrefix(string(kv.Key), prefix))
	switch {
	case err != nil:
	case kind == record.KindDevice:
		p.owner, _ = record.DeviceOwner(name, z.origin)
	case kind == record.KindCA:
		p.owner = record.CAOwner(name, z.origin)
	case kind == record.KindService:
		p.owner, _ = record.ServiceOwner(name, z.origin)
	case kind == record.KindDNSSEC:
		p.keyID = name
	}
	return p
}
