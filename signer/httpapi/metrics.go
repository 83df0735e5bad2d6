package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	requestErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "deviceid",
		Subsystem: "signer",
		Name:      "request_errors_total",
		Help:      "Counter of refused EST and admin API requests, by HTTP status.",
	}, []string{"status"})
)

var rateLimited = promauto.NewCounter(prometheus.CounterOpts{
	Namespace: "deviceid",
	Subsystem: "signer",
	Name:      "rate_limited_total",
	Help:      "Counter of requests answered 429 because their client address had too many refused requests.",
})
