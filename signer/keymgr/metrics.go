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
	keyCount = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys",
		Help: "Gauge of the zone's DNSSEC keys by role (ksk, zsk, csk) and state (created: not in the zone yet; published: not signing yet; signing; retired: published, no longer signing; removed), by zone.",
	}, []string{"zone", "role", "state"})
	lifetimeEnd = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_lifetime_end_timestamp_seconds",
		Help: "Unix time at which the lifetime of the zone's newest signing key of a role ends and its rollover is due; in the past while a rollover waits (for the parent's DS, say). By zone and role; absent for a role with no lifetime.",
	}, []string{"zone", "role"})
	dsPushes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_ds_pushes_total",
		Help: "Counter of the DS sets pushed to the parent by UPDATE, by zone and result (ok, failed).",
	}, []string{"zone", "result"})
	stepFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "deviceid", Subsystem: "signer", Name: "keys_step_failures_total",
		Help: "Counter of runs of the key manager's plan that failed (etcd, a conflict), retried at the next tick, by zone.",
	}, []string{"zone"})
)
