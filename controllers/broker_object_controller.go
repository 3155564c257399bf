package controllers

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// eventRecorder is the events API's recorder.
type eventRecorder = events.EventRecorder

// BrokerObjectFinalizer holds a Topic or ConsumerGroup until the broker has let go of it.
const BrokerObjectFinalizer = "mq.orderly.dev/broker-cleanup"

// DefaultResync is how often a Ready object is compared with the broker, with up to
// 20% jitter so that many objects do not resync in step.
const DefaultResync = 5 * time.Minute

// brokerObject is what the generic reconciler needs of a Topic or a ConsumerGroup.
type brokerObject interface {
	client.Object
	GetConditions() []metav1.Condition
	SetConditions([]metav1.Condition)
	BrokerName() string
}

// kind is one kind's part of the reconcile: how to declare, remove and observe its
// broker-side object. Everything else is done once, by brokerObjectReconciler.
type kind[T brokerObject] interface {
	// newObject returns an empty object of the kind.
	newObject() T
	// instanceName and policy read the spec.
	instanceName(obj T) string
	policy(obj T) mqv1alpha1.DeletionPolicy
	// declare brings the broker to obj's spec and reports whether the broker
	// differed from what obj's status says was last applied (drift).
	declare(ctx context.Context, instanceID string, obj T) (drift string, err error)
	// remove deletes the broker-side object.
	remove(ctx context.Context, instanceID string, obj T) error
	// observe refreshes obj's status from the broker.
	observe(ctx context.Context, instanceID string, obj T) error
	// setObservedGeneration writes status.observedGeneration.
	setObservedGeneration(obj T)
	status(obj T) any
}

// brokerObjectReconciler reconciles one kind of broker-side object: fetch,
// finalizer, instance resolution, deletion policy, conflicts, drift, events and
// status are done here once for every kind.
type brokerObjectReconciler[T brokerObject] struct {
	client.Client
	Recorder eventRecorder
	Kind     kind[T]
	Resync   time.Duration
}

func (r *brokerObjectReconciler[T]) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, err error) {
	obj := r.Kind.newObject()
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := obj.DeepCopyObject().(T)
	defer func() {
		r.Kind.setObservedGeneration(obj)
		err = errors.Join(err, r.patchStatus(ctx, before, obj))
	}()

	inst, instanceReady := r.instance(ctx, obj)
	if !obj.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, obj, inst, instanceReady)
	}
	if controllerutil.AddFinalizer(obj, BrokerObjectFinalizer) {
		if err := r.Update(ctx, obj); err != nil {
			return ctrl.Result{}, fmt.Errorf("failed to add finalizer: %w", err)
		}
	}
	if !instanceReady {
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceNotReady,
			fmt.Sprintf("Instance %q is missing or not Ready; waiting for it", r.Kind.instanceName(obj)))
		// The Instance watch wakes this object when the Instance becomes Ready.
		return ctrl.Result{}, nil
	}

	drift, err := r.Kind.declare(ctx, inst.Status.InstanceID, obj)
	var conflict *broker.ConflictError
	switch {
	case errors.As(err, &conflict):
		msg := fmt.Sprintf("%q is already declared in instance %q by another object; this one changes nothing", obj.BrokerName(), inst.Status.InstanceID)
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonNameConflict, msg)
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonNameConflict, "Reconcile", "%s", msg)
		return ctrl.Result{}, nil // the owner's deletion wakes it through a resync
	case err != nil:
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonBrokerError, err.Error())
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonBrokerError, "Reconcile", "Failed to declare %q: %v", obj.BrokerName(), err)
		if errors.Is(err, broker.ErrInvalidArgument) || errors.Is(err, broker.ErrImmutable) {
			return ctrl.Result{}, reconcile.TerminalError(err)
		}
		return ctrl.Result{}, err
	}
	if drift != "" {
		ctrl.LoggerFrom(ctx).Info("Repaired drift", "drift", drift)
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonDriftRepaired, "Reconcile", "The broker differed from the spec and was repaired: %s", drift)
		driftRepairs.WithLabelValues(obj.GetObjectKind().GroupVersionKind().Kind).Inc()
		r.setCondition(obj, mqv1alpha1.ConditionSynced, metav1.ConditionTrue, mqv1alpha1.ReasonDriftRepaired, drift)
	} else {
		r.setCondition(obj, mqv1alpha1.ConditionSynced, metav1.ConditionTrue, mqv1alpha1.ReasonInSync, "The broker matches the spec")
	}
	if meta.IsStatusConditionFalse(before.GetConditions(), mqv1alpha1.ConditionReady) || len(before.GetConditions()) == 0 {
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Declared", "Reconcile", "%q is declared in instance %q", obj.BrokerName(), inst.Status.InstanceID)
	}
	if err := r.Kind.observe(ctx, inst.Status.InstanceID, obj); err != nil {
		return ctrl.Result{}, err
	}
	r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, "The broker serves it")
	return ctrl.Result{RequeueAfter: r.jittered()}, nil
}

func (r *brokerObjectReconciler[T]) reconcileDelete(ctx context.Context, obj T, inst *mqv1alpha1.Instance, instanceReady bool) error {
	if !controllerutil.ContainsFinalizer(obj, BrokerObjectFinalizer) {
		return nil
	}
	// An Instance that is gone, or being deleted, takes its tenant along: there is
	// nothing left to delete, and waiting for it would leave this object stuck in
	// Terminating.
	if instanceReady && inst.DeletionTimestamp.IsZero() && r.Kind.policy(obj) != mqv1alpha1.DeletionPolicyRetain {
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonDeleting, "Deleting from the broker")
		if err := r.Kind.remove(ctx, inst.Status.InstanceID, obj); err != nil {
			return fmt.Errorf("failed to delete %q from the broker: %w", obj.BrokerName(), err)
		}
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Deleted", "Delete", "%q deleted from instance %q", obj.BrokerName(), inst.Status.InstanceID)
	}
	controllerutil.RemoveFinalizer(obj, BrokerObjectFinalizer)
	if err := r.Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// instance returns the object's Instance and whether it is Ready to serve.
func (r *brokerObjectReconciler[T]) instance(ctx context.Context, obj T) (*mqv1alpha1.Instance, bool) {
	inst := &mqv1alpha1.Instance{}
	key := client.ObjectKey{Namespace: obj.GetNamespace(), Name: r.Kind.instanceName(obj)}
	if err := r.Get(ctx, key, inst); err != nil {
		return nil, false
	}
	ready := meta.IsStatusConditionTrue(inst.Status.Conditions, mqv1alpha1.ConditionReady) && inst.Status.InstanceID != ""
	return inst, ready
}

func (r *brokerObjectReconciler[T]) setCondition(obj T, typ string, status metav1.ConditionStatus, reason, msg string) {
	conds := obj.GetConditions()
	meta.SetStatusCondition(&conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: obj.GetGeneration()})
	obj.SetConditions(conds)
}

func (r *brokerObjectReconciler[T]) patchStatus(ctx context.Context, before, obj T) error {
	if equality.Semantic.DeepEqual(r.Kind.status(before), r.Kind.status(obj)) {
		return nil
	}
	return client.IgnoreNotFound(r.Status().Patch(ctx, obj, client.MergeFrom(before)))
}

func (r *brokerObjectReconciler[T]) jittered() time.Duration {
	resync := r.Resync
	if resync <= 0 {
		resync = DefaultResync
	}
	return resync + time.Duration(rand.Int64N(int64(resync)/5+1))
}

// setup registers the controller: its own kind, and Instances waking the objects
// that reference them.
func (r *brokerObjectReconciler[T]) setup(mgr ctrl.Manager, name string, list func() client.ObjectList, items func(client.ObjectList) []T) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(r.Kind.newObject()).
		Watches(&mqv1alpha1.Instance{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			l := list()
			if err := r.List(ctx, l, client.InNamespace(o.GetNamespace())); err != nil {
				return nil
			}
			var reqs []reconcile.Request
			for _, obj := range items(l) {
				if r.Kind.instanceName(obj) == o.GetName() {
					reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(obj)})
				}
			}
			return reqs
		})).
		Named(name).
		Complete(r)
}

// pointers returns pointers to the elements of items.
func pointers[T any](items []T) []*T {
	out := make([]*T, len(items))
	for i := range items {
		out[i] = &items[i]
	}
	return out
}
