package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// terminatingErr is what the apiserver's NamespaceLifecycle admission answers a
// create in a namespace being deleted.
func terminatingErr(resource, ns string) error {
	err := apierrors.NewForbidden(schema.GroupResource{Resource: resource}, "",
		fmt.Errorf("unable to create new content in namespace %s because it is being terminated", ns))
	err.ErrStatus.Details.Causes = append(err.ErrStatus.Details.Causes, metav1.StatusCause{
		Type: corev1.NamespaceTerminatingCause, Field: "metadata.namespace",
		Message: fmt.Sprintf("namespace %s is being terminated", ns),
	})
	return err
}

// createRefused is a fake client whose creates of objects like kind fail as in a
// terminating namespace, counting the attempts.
func createRefused(t *testing.T, kind client.Object, attempts *int, objs ...client.Object) client.WithWatch {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := mqv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).WithStatusSubresource(objs...).
		WithInterceptorFuncs(interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if fmt.Sprintf("%T", obj) == fmt.Sprintf("%T", kind) {
				*attempts++
				return terminatingErr("things", obj.GetNamespace())
			}
			return c.Create(ctx, obj, opts...)
		}}).Build()
}

// untouchedBrokerAdmin fails the test if the Instance reconciler reaches the broker.
type untouchedBrokerAdmin struct{ t *testing.T }

func (b untouchedBrokerAdmin) EnsureInstance(broker.InstanceConfig) error {
	b.t.Error("EnsureInstance called")
	return nil
}
func (b untouchedBrokerAdmin) DeleteInstance(string, string) error {
	b.t.Error("DeleteInstance called")
	return nil
}
func (b untouchedBrokerAdmin) Usage(string) (broker.Usage, error) {
	b.t.Error("Usage called")
	return broker.Usage{}, nil
}

// TestInstanceInATerminatingNamespace: when the namespace controller has deleted an
// Instance's Secret and not yet the Instance (it deletes pods first, then the rest in
// no order), the Instance does not fail its pass on a Secret it may not recreate:
// its own deletion comes next, and a failed pass would only be retried, failing.
func TestInstanceInATerminatingNamespace(t *testing.T) {
	inst := &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "demo",
		Finalizers: []string{BrokerCleanupFinalizer}}}
	var attempts int
	c := createRefused(t, &corev1.Secret{}, &attempts, inst)
	r := &InstanceReconciler{Client: c, APIReader: c, Scheme: c.Scheme(), Recorder: events.NewFakeRecorder(16),
		Broker: untouchedBrokerAdmin{t}}

	if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(inst)}); err != nil {
		t.Fatalf("Reconcile: %v, want no error to retry", err)
	}
	if attempts != 1 {
		t.Errorf("%d attempts to create the Secret, want 1", attempts)
	}
	// Any other refusal is still an error.
	if namespaceTerminating(apierrors.NewForbidden(schema.GroupResource{Resource: "secrets"}, "x", errors.New("RBAC"))) {
		t.Error("a Forbidden without the NamespaceTerminating cause is taken for one")
	}
}

// TestConsumerInATerminatingNamespace: the namespace controller deletes pods before
// anything else, so a MessageConsumer sees its pods go while it still exists; it
// does not fail its pass trying to replace them, one refused create is enough.
func TestConsumerInATerminatingNamespace(t *testing.T) {
	mc := &mqv1alpha1.MessageConsumer{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "drain"},
		Spec: mqv1alpha1.MessageConsumerSpec{
			InstanceRef: mqv1alpha1.LocalReference{Name: "demo"}, Topic: "work",
			ConsumerGroupRef: mqv1alpha1.LocalReference{Name: "workers"},
			Parallelism:      ptr.To(int32(2)),
			CompletionPolicy: mqv1alpha1.CompletionPolicy{Mode: mqv1alpha1.CompletionForever},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "handler", Image: "busybox", Command: []string{"true"}}}}},
		}}
	var attempts int
	c := createRefused(t, &corev1.Pod{}, &attempts, mc)
	r := &MessageConsumerReconciler{Client: c, Scheme: c.Scheme(), Recorder: events.NewFakeRecorder(16), RuntimeImage: "orderly:test"}
	s := newConsumerScope(mc, time.Now())
	s.deps = &dependencies{
		instance: &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "demo"},
			Status: mqv1alpha1.InstanceStatus{InstanceID: "MQ_INST_going_demo", CredentialsSecret: "demo-credentials"}},
		topic: &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "work"}},
		group: &mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "workers"}},
	}
	s.hash = "h"

	if err := r.startPods(context.Background(), s); err != nil {
		t.Fatalf("startPods: %v, want no error to retry", err)
	}
	if attempts != 1 {
		t.Errorf("%d attempts to create a pod, want 1", attempts)
	}
}

// TestTopicOfAnInstanceBeingDeleted: a Topic whose Instance is being deleted waits
// instead of declaring itself into a tenant the Instance's finalizer is removing,
// which would fail, and be retried, until the Topic's own deletion.
func TestTopicOfAnInstanceBeingDeleted(t *testing.T) {
	inst := &mqv1alpha1.Instance{
		ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "demo", Finalizers: []string{BrokerCleanupFinalizer},
			DeletionTimestamp: ptr.To(metav1.Now())},
		Status: mqv1alpha1.InstanceStatus{InstanceID: "MQ_INST_going_demo",
			Conditions: []metav1.Condition{{Type: mqv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mqv1alpha1.ReasonReconciled,
				LastTransitionTime: metav1.Now()}}},
	}
	topic := &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: "going", Name: "orders", Finalizers: []string{BrokerCleanupFinalizer}},
		Spec: mqv1alpha1.TopicSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: "demo"}}}
	var attempts int
	c := createRefused(t, &corev1.Pod{}, &attempts, inst, topic)
	r := NewTopicReconciler(c, events.NewFakeRecorder(16), untouchedTopicBroker{t}, 0)

	if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(topic)}); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	got := &mqv1alpha1.Topic{}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(topic), got); err != nil {
		t.Fatal(err)
	}
	cond := meta.FindStatusCondition(got.Status.Conditions, mqv1alpha1.ConditionReady)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != mqv1alpha1.ReasonInstanceNotReady {
		t.Errorf("Ready condition %+v, want False with reason %s", cond, mqv1alpha1.ReasonInstanceNotReady)
	}
}
