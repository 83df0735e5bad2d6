package deviceid

import (
	"time"

	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	keyUnavailable = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "key_unavailable",
		Help:      "Gauge: 1 when a key that should sign (keys etcd) cannot be opened on this replica (the log says why), by zone and key id.",
	}, []string{"zone", "key"})

	signaturesExpire = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "apex_signatures_expire_timestamp_seconds",
		Help:      "Gauge: Unix time at which the first signature of the zone's apex (SOA, NS, DNSKEY, CDS) served now expires; renewed a quarter into its validity, so it nears the present only when signing fails, by zone.",
	}, []string{"zone"})

	keyTTLAbovePolicy = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "ttl_above_key_policy",
		Help:      "Gauge: 1 when this replica's ttl is above the TTL the zone's key timeline waits for (keys etcd): validators may cache its answers past a rollover's waits; lower the ttl or raise the policy's TTLs. By zone.",
	}, []string{"zone"})

	revisionsBehind = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "etcd_revisions_behind",
		Help:      "Gauge of the etcd revisions the zone's data does not reflect yet, as of the watch's last answer (writes under other prefixes count until the next progress notification, which etcd's grpc-proxy does not pass), by zone.",
	}, []string{"zone"})

	lastContact = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "etcd_last_contact_timestamp_seconds",
		Help:      "Gauge: Unix time of the last answer from etcd to the zone's load, watch or the read of one key every 5 s: the link was last up then, by zone.",
	}, []string{"zone"})

	lastEvent = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "etcd_last_event_timestamp_seconds",
		Help:      "Gauge: Unix time of the last change from etcd applied to the zone (or its last full load), by zone.",
	}, []string{"zone"})

	snapshotRevision = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "snapshot_revision",
		Help:      "Gauge of the etcd revision of the zone's last snapshot written (snapshot), by zone.",
	}, []string{"zone"})

	snapshotPause = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "snapshot_pause_seconds",
		Help:      "Gauge of how long the zone's etcd updates waited while its last snapshot was copied, by zone.",
	}, []string{"zone"})
	snapshotFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "snapshot_failures_total",
		Help:      "Counter of snapshots that could not be written (the last one stays), by zone.",
	}, []string{"zone"})

	keySetChanges = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "key_set_changes_total",
		Help:      "Counter of changes of the keys a zone publishes or signs with (keys etcd), by zone.",
	}, []string{"zone"})

	devices = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "devices",
		Help:      "Gauge of devices published (device records with at least one record to publish), by zone.",
	}, []string{"zone"})

	rejected = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "records_rejected_total",
		Help:      "Counter of etcd records skipped as invalid, each version counted once, by zone.",
	}, []string{"zone"})

	watchRestarts = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "watch_restarts_total",
		Help:      "Counter of etcd watches that ended (compaction, lost leader, closed stream) and led to a full reload, by zone.",
	}, []string{"zone"})

	loadFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "load_failures_total",
		Help:      "Counter of full loads from etcd that failed and were retried, by zone.",
	}, []string{"zone"})

	revision = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "revision",
		Help:      "Gauge of the etcd revision of the last change applied, by zone.",
	}, []string{"zone"})

	signatures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signatures_total",
		Help:      "Counter of RRSIGs made, by zone.",
	}, []string{"zone"})

	signFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signing_failures_total",
		Help:      "Counter of RRsets that could not be signed, by zone.",
	}, []string{"zone"})

	cacheHits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signature_cache_hits_total",
		Help:      "Counter of signed answers whose signatures were made ahead or cached, by zone.",
	}, []string{"zone"})

	cacheMisses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signature_cache_misses_total",
		Help:      "Counter of answers that were signed on the query path, by zone.",
	}, []string{"zone"})

	firstPass = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signed_ahead",
		Help:      "Gauge, 1 once the first signing pass after the last full load is done (every name that exists signed), else 0, by zone.",
	}, []string{"zone"})

	overBudget = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "denials_over_budget_total",
		Help:      "Counter of queries for names that do not exist over the signing budget, by zone and what they got (truncated, delayed, refused).",
	}, []string{"zone", "action"})

	udpTruncated = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "udp_truncated_total",
		Help:      "Counter of answers over UDP larger than the client's buffer or max_udp_size, sent with TC and no records, by zone.",
	}, []string{"zone"})

	fastPackets = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "fastpath_packets_total",
		Help:      "Counter of UDP packets on an address with the fast path, by server and path: fast (answered by the fast path), handed (given to the chain by the fast path), framework (answered on the server's own socket: not steered to the fast path), dropped (responses, rate-limited, or over the hand-over queue).",
	}, []string{"server", "path"})

	fastSockets = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "fastpath_sockets",
		Help:      "Gauge of the fast path's sockets open on an address (0: the server answers every query itself), by server.",
	}, []string{"server"})

	rrlDropped = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "rrl_dropped_total",
		Help:      "Counter of responses over UDP not sent, over the rate limit of the client's prefix, by zone.",
	}, []string{"zone"})

	rrlSlipped = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "rrl_slipped_total",
		Help:      "Counter of responses over UDP over the rate limit of the client's prefix sent with TC and no records instead (slip), by zone.",
	}, []string{"zone"})

	updateSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "update_duration_seconds",
		Help:      "Histogram of the time from an etcd watch event's arrival to its change being served, signed, by zone.",
		Buckets:   []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"zone"})
)

// report updates the zone's gauges.
func (z *zone) report(x *zoneData) {
	devices.WithLabelValues(z.origin).Set(float64(x.devices.Load()))
	revision.WithLabelValues(z.origin).Set(float64(x.revision.Load()))
}

// lag follows how far a zone's data is behind etcd: the newest revision etcd has said
// it is at, and the revision the data reflects.
type lag struct {
	known, applied int64
}

// loaded notes a full load at revision.
func (z *zone) lagLoaded(revision int64) {
	z.lag = lag{known: revision, applied: revision}
	now := float64(time.Now().UnixNano()) / 1e9
	lastContact.WithLabelValues(z.origin).Set(now)
	lastEvent.WithLabelValues(z.origin).Set(now)
	revisionsBehind.WithLabelValues(z.origin).Set(0)
}

// lagContact notes an answer from etcd outside the watch.
func (z *zone) lagContact() {
	lastContact.WithLabelValues(z.origin).Set(float64(time.Now().UnixNano()) / 1e9)
}

// lagWatched notes an answer of the watch: etcd at header revision, the data at
// applied (a progress notification says every change up to its revision was sent).
func (z *zone) lagWatched(header, applied int64, progress, events bool) {
	if progress {
		applied = max(applied, header)
	}
	z.lag.known = max(z.lag.known, header)
	z.lag.applied = max(z.lag.applied, applied)
	now := float64(time.Now().UnixNano()) / 1e9
	lastContact.WithLabelValues(z.origin).Set(now)
	if events {
		lastEvent.WithLabelValues(z.origin).Set(now)
	}
	revisionsBehind.WithLabelValues(z.origin).Set(float64(max(z.lag.known-z.lag.applied, 0)))
}
