package controllers

import (
	"context"
	"errors"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// untouchedTopicBroker fails the test if the reconciler touches the broker: in
// these cases it has no usable Instance to reach it through.
type untouchedTopicBroker struct{ t *testing.T }

func (b untouchedTopicBroker) EnsureTopic(string, broker.TopicConfig) (broker.TopicInfo, error) {
	b.t.Error("EnsureTopic called")
	return broker.TopicInfo{}, nil
}
func (b untouchedTopicBroker) DeleteTopic(string, string, string) error {
	b.t.Error("DeleteTopic called")
	return nil
}
func (b untouchedTopicBroker) Topic(string, string) (broker.TopicInfo, error) {
	b.t.Error("Topic called")
	return broker.TopicInfo{}, nil
}

// TestDeleteWhenTheInstanceCannotBeRead: a Topic being deleted lets go of its
// finalizer when its Instance does not exist (the tenant went with it), but not when
// the Instance could not be read: then the request is retried, and the topic is
// deleted from the broker once the Instance is seen again.
func TestDeleteWhenTheInstanceCannotBeRead(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := mqv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	unavailable := apierrors.NewServiceUnavailable("the cache is not started")
	for _, tc := range []struct {
		name          string
		getErr        error
		wantErr       bool
		wantFinalizer bool
	}{
		{name: "Instance not found", getErr: apierrors.NewNotFound(schema.GroupResource{Group: mqv1alpha1.GroupVersion.Group, Resource: "instances"}, "demo")},
		{name: "Instance unreadable", getErr: unavailable, wantErr: true, wantFinalizer: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := &mqv1alpha1.Topic{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "orders", Finalizers: []string{BrokerCleanupFinalizer},
					DeletionTimestamp: ptr.To(metav1.Now())},
				Spec: mqv1alpha1.TopicSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: "demo"}},
			}
			c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(topic).WithStatusSubresource(topic).
				WithInterceptorFuncs(interceptor.Funcs{Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
					if _, ok := obj.(*mqv1alpha1.Instance); ok {
						return tc.getErr
					}
					return c.Get(ctx, key, obj, opts...)
				}}).Build()
			r := NewTopicReconciler(c, events.NewFakeRecorder(16), untouchedTopicBroker{t}, 0)

			_, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(topic)})
			if gotErr := err != nil; gotErr != tc.wantErr {
				t.Fatalf("Reconcile: %v, want an error: %v", err, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, unavailable) {
				t.Errorf("Reconcile: %v, want it to wrap %v", err, unavailable)
			}
			got := &mqv1alpha1.Topic{}
			err = c.Get(context.Background(), client.ObjectKeyFromObject(topic), got)
			switch {
			case tc.wantFinalizer && err != nil:
				t.Fatalf("the Topic is gone (%v), want it held by its finalizer", err)
			case !tc.wantFinalizer && !apierrors.IsNotFound(err):
				t.Errorf("the Topic is still there (finalizers %v, err %v), want it gone", got.Finalizers, err)
			}
		})
	}
}
