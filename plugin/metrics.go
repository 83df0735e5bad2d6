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
)
