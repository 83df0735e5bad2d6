package keymgr

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	leader = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_leader",
		Help: "Gauge: 1 while this signer runs the zone's DNSSEC key manager (one signer at a time, by an etcd election), by zone.",
	}, []string{"zone"})
	waiting = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_waiting",
		Help: "Gauge of the things the zone's key manager waits for before its next step (the parent's DS, a TTL), by zone.",
	}, []string{"zone"})
	nextEvent = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_next_event_timestamp_seconds",
		Help: "Unix time of the next scheduled change of the zone's keys (a key published, signing, retired, removed, its CDS), by zone.",
	}, []string{"zone"})
	stepFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_step_failures_total",
		Help: "Counter of runs of the key manager's plan that failed (etcd, a conflict), retried at the next tick, by zone.",
	}, []string{"zone"})
)
