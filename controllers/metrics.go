package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metrics beyond controller-runtime's, on the manager's /metrics endpoint.
var (
	driftRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "orderly_drift_repairs_total",
		Help: "Times the broker was found to differ from a custom resource's spec and was repaired, by kind.",
	}, []string{"kind"})

	brokerCallSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "orderly_broker_admin_call_seconds",
		Help:    "Latency of the controllers' calls into the broker, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8),
	}, []string{"operation"})
)

func init() {
	metrics.Registry.MustRegister(driftRepairs, brokerCallSeconds)
}
