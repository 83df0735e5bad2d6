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
