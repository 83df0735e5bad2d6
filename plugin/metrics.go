package deviceid

import (
	"github.com/coredns/coredns/plugin"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	devices = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "devices",
		Help:      "Gauge of device records loaded, by zone.",
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
		Help:      "Counter of answers whose signatures came from the cache, by zone.",
	}, []string{"zone"})

	cacheMisses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signature_cache_misses_total",
		Help:      "Counter of answers that were signed on the query path, by zone.",
	}, []string{"zone"})

	signatureExpiry = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "deviceid",
		Name:      "signature_expiry_seconds",
		Help:      "Gauge of the seconds until the earliest cached signature expires, by zone.",
	}, []string{"zone"})
)
