package registry

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var txnConflicts = promauto.NewCounter(prometheus.CounterOpts{
	Namespace: "deviceid",
	Subsystem: "signer",
	Name:      "etcd_txn_conflicts_total",
	Help:      "Counter of record updates retried because another writer changed the record first.",
})

var (
	enrollments = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "deviceid",
		Subsystem: "signer",
		Name:      "enrollments_total",
		Help:      "Counter of enrollments carried out (EST, admin API, CLI); retries answered from the record are not counted.",
	})
)

var (
	txnSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Namespace: "deviceid",
		Subsystem: "signer",
		Name:      "etcd_txn_seconds",
		Help:      "Histogram of the latency of record transactions with etcd.",
		Buckets:   prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	revocations = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "deviceid",
		Subsystem: "signer",
		Name:      "revocations_total",
		Help:      "Counter of revocation requests carried out.",
	})
)
