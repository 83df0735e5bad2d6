package signer

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
		Name:      "est_enrollments_total",
		Help:      "Counter of certificates issued over EST.",
	})
	estErrors = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: "deviceid",
		Subsystem: "signer",
		Name:      "est_errors_total",
		Help:      "Counter of EST requests refused.",
	})
)
