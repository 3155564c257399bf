package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
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

	resourceReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "orderly_resource_ready",
		Help: "1 when a custom resource's Ready condition is True, 0 otherwise, by kind, namespace and name.",
	}, []string{"kind", "namespace", "name"})
)

// conditioned is an object with status conditions.
type conditioned interface {
	metav1.Object
	GetConditions() []metav1.Condition
}

// recordResourceState sets obj's orderly_resource_ready series.
func recordResourceState(kind string, obj conditioned) {
	v := 0.0
	if meta.IsStatusConditionTrue(obj.GetConditions(), mqv1alpha1.ConditionReady) {
		v = 1
	}
	resourceReady.WithLabelValues(kind, obj.GetNamespace(), obj.GetName()).Set(v)
}

// forgetResourceState drops the series of an object that no longer exists, so
// deleted objects do not linger in the metrics.
func forgetResourceState(kind string, key types.NamespacedName) {
	resourceReady.DeleteLabelValues(kind, key.Namespace, key.Name)
}

// Collectors are the controllers' own metrics, registered on controller-runtime's
// registry; exported for the test that checks the dashboards and alerts in
// config/monitoring against what the manager serves.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{driftRepairs, brokerCallSeconds, resourceReady}
}

func init() {
	metrics.Registry.MustRegister(Collectors()...)
}
