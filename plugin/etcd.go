package deviceid

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/deviceid/deviceid/plugin/record"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// loadPageSize bounds one range read of the full load: a million devices are read in
// pages at one revision (one consistent snapshot) instead of one 150 MB response.
const loadPageSize = 10000

// requestTimeout bounds one etcd request, so an unreachable etcd is noticed and retried.
const requestTimeout = 10 * time.Second

// run keeps the zone in step with etcd until ctx ends: a full load, then the watch
// from the next revision; when the watch breaks (compaction, lost leader, closed
// stream) it loads again and swaps. While etcd is unreachable the last data is served.
func (z *zone) run(ctx context.Context, cli *clientv3.Client) {
	prefix := record.ZonePrefix(z.cfg.prefix, z.origin)
	retry := time.Second
	for ctx.Err() == nil {
		x, err := z.load(ctx, cli, prefix)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warningf("zone %s: loading from etcd failed, retrying in %s: %v", z.origin, retry, err)
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
		z.swap(x)
		// A full load makes several times the index's size in garbage (etcd pages,
		// JSON); give it back to the system now rather than let the process keep it.
		debug.FreeOSMemory()
		z.report(x)
		log.Infof("zone %s: loaded %d devices at etcd revision %d", z.origin, x.devices, x.loadRevision)
		err = z.follow(ctx, cli, prefix, x.loadRevision)
		if ctx.Err() != nil {
			return
		}
		log.Infof("zone %s: reloading: %v", z.origin, err)
		watchRestarts.WithLabelValues(z.origin).Inc()
	}
}

// load reads every record of the zone at one revision into a new index. The next
// page is fetched while the current one is parsed.
func (z *zone) load(ctx context.Context, cli *clientv3.Client, prefix string) (*index, error) {
	pages := make(chan *clientv3.GetResponse, 1)
	fetched := make(chan error, 1)
	go func() { fetched <- fetchPages(ctx, cli, prefix, pages) }()
	var x *index
	now := time.Now()
	for resp := range pages {
		if x == nil {
			x = newIndex(z.origin, z.cfg, resp.Header.Revision, 0)
		}
		for _, kv := range resp.Kvs {
			z.put(x, prefix, kv, now)
		}
	}
	if err := <-fetched; err != nil {
		return nil, err
	}
	return x, nil
}

// fetchPages sends the keys under prefix in pages, all read at the revision of the
// first, and closes pages.
func fetchPages(ctx context.Context, cli *clientv3.Client, prefix string, pages chan<- *clientv3.GetResponse) error {
	defer close(pages)
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := cli.Get(rctx, key, opts...)
		cancel()
		if err != nil {
			return err
		}
		if rev == 0 {
			rev = resp.Header.Revision
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
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
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
				continue
			}
			now := time.Now()
			z.update(func(x *index) {
				for _, ev := range resp.Events {
					if ev.Type == mvccpb.DELETE {
						z.delete(x, prefix, ev.Kv)
					} else {
						z.put(x, prefix, ev.Kv, now)
					}
					rev = ev.Kv.ModRevision
				}
				x.setSerial(rev)
			})
			z.mu.RLock()
			z.report(z.idx)
			z.mu.RUnlock()
		}
	}
}

// put applies one stored key. A record that does not parse is skipped, logged once
// per revision and counted; the older version of it stops being served too, since a
// failed attempt to revoke must not leave a device active.
func (z *zone) put(x *index, prefix string, kv *mvccpb.KeyValue, now time.Time) {
	key := string(kv.Key)
	kind, name, err := record.SplitKey(strings.TrimPrefix(key, prefix))
	if err == nil {
		switch kind {
		case record.KindDevice:
			var owner string
			if owner, err = record.DeviceOwner(name, x.origin); err != nil {
				break
			}
			var d *record.Device
			if d, err = record.ParseDevice(kv.Value); err == nil {
				x.putDevice(owner, d, now)
			} else {
				x.remove(owner)
			}
		case record.KindCA:
			if cert, perr := record.ParseCA(name, kv.Value); perr == nil {
				x.putCA(name, cert.Raw)
			} else {
				err = perr
				x.remove(record.CAOwner(name, x.origin))
			}
		}
	}
	if err == nil {
		delete(z.rejected, key)
		return
	}
	if z.rejected[key] != kv.ModRevision {
		z.rejected[key] = kv.ModRevision
		log.Warningf("zone %s: skipping invalid record %s (revision %d): %v", z.origin, key, kv.ModRevision, err)
		rejected.WithLabelValues(z.origin).Inc()
	}
}

// delete applies the deletion of one key.
func (z *zone) delete(x *index, prefix string, kv *mvccpb.KeyValue) {
	delete(z.rejected, string(kv.Key))
	kind, name, err := record.SplitKey(strings.TrimPrefix(string(kv.Key), prefix))
	switch {
	case err != nil:
	case kind == record.KindDevice:
		x.remove(deviceOwner(name, x.origin))
	case kind == record.KindCA:
		x.remove(record.CAOwner(name, x.origin))
	}
}

// deviceOwner is record.DeviceOwner for a name already checked by record.SplitKey;
// a name too long for the zone gives "", which no node has.
func deviceOwner(name, origin string) string {
	owner, _ := record.DeviceOwner(name, origin)
	return owner
}

// report updates the zone's gauges.
func (z *zone) report(x *index) {
	devices.WithLabelValues(z.origin).Set(float64(x.devices))
	revision.WithLabelValues(z.origin).Set(float64(x.revision))
}
