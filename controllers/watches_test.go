package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
)

func TestEnqueueMapped(t *testing.T) {
	inst := &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "demo"}}
	woken := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: "ns", Name: "orders"}}
	for _, tc := range []struct {
		name    string
		reqs    []reconcile.Request
		err     error
		wantLog string // "" when nothing is to be logged
	}{
		{name: "mapped", reqs: []reconcile.Request{woken}},
		{name: "List failed", err: errors.New("the cache is not started"), wantLog: `"object"={"name"="demo" "namespace"="ns"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logged []string
			log := funcr.New(func(prefix, args string) { logged = append(logged, args) }, funcr.Options{})
			q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
			defer q.ShutDown()
			h := enqueueMapped(log, func(_ context.Context, o client.Object) ([]reconcile.Request, error) {
				if o != inst {
					t.Errorf("mapped %v, want the event's object", o)
				}
				return tc.reqs, tc.err
			})
			h.Create(context.Background(), event.CreateEvent{Object: inst}, q)

			if q.Len() != len(tc.reqs) {
				t.Fatalf("%d requests queued, want %d", q.Len(), len(tc.reqs))
			}
			if len(tc.reqs) > 0 {
				if got, _ := q.Get(); got != woken {
					t.Errorf("queued %v, want %v", got, woken)
				}
			}
			switch {
			case tc.wantLog == "" && len(logged) > 0:
				t.Errorf("logged %q, want nothing", logged)
			case tc.wantLog != "" && (len(logged) != 1 || !strings.Contains(logged[0], tc.err.Error()) || !strings.Contains(logged[0], tc.wantLog)):
				t.Errorf("logged %q, want one line with %q and %s", logged, tc.err, tc.wantLog)
			}
		})
	}
}
