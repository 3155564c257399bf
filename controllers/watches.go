package controllers

import (
	"context"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// enqueueMapped is handler.EnqueueRequestsFromMapFunc for a map function that can
// fail, as every one of this package's can: each lists the objects an event wakes
// from the cache. A map function has no way to return an error, so a failed List
// is logged here. The event is lost either way, and the objects it would have woken
// wait for their next event or requeue; without the log nothing would say why they
// did not react.
func enqueueMapped(log logr.Logger, mapper func(ctx context.Context, o client.Object) ([]reconcile.Request, error)) handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		reqs, err := mapper(ctx, o)
		if err != nil {
			log.Error(err, "Failed to list the objects an event wakes; they are not reconciled for it", "object", klog.KObj(o))
		}
		return reqs
	})
}
