package controllers

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// eventRecorder is the events API's recorder.
type eventRecorder = events.EventRecorder

// BrokerCleanupFinalizer holds an Instance, Topic or ConsumerGroup until the broker
// has let go of what it declared there.
const BrokerCleanupFinalizer = "mq.orderly.dev/broker-cleanup"

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
	// name is the kind's name, for metrics and logs.
	name() string
	// instanceRef and policy read the spec.
	instanceRef(obj T) mqv1alpha1.InstanceReference
	policy(obj T) mqv1alpha1.DeletionPolicy
	// declare brings the broker to obj's spec and reports whether the broker
	// differed from what obj's status says was last applied (drift).
	declare(ctx context.Context, instanceID string, obj T) (drift string, err error)
	// remove deletes the broker-side object.
	remove(ctx context.Context, instanceID string, obj T) error
	// observe refreshes obj's status from the broker.
	observe(ctx context.Context, instanceID string, obj T) error
	// setObservedGeneration writes status.observedGeneration; observedGeneration
	// reads it.
	setObservedGeneration(obj T)
	observedGeneration(obj T) int64
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
		if apierrors.IsNotFound(err) {
			forgetResourceState(r.Kind.name(), req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := obj.DeepCopyObject().(T)
	defer func() {
		r.Kind.setObservedGeneration(obj)
		recordResourceState(r.Kind.name(), obj)
		err = errors.Join(err, patchStatus(ctx, r.Client, before, obj, r.Kind.status))
	}()

	inst, usable, err := r.instance(ctx, obj)
	if err != nil {
		return ctrl.Result{}, err
	}
	if !obj.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, obj, inst, usable)
	}
	if controllerutil.AddFinalizer(obj, BrokerCleanupFinalizer) {
		if err := r.Update(ctx, obj); err != nil {
			return ctrl.Result{}, fmt.Errorf("failed to add finalizer: %w", err)
		}
	}
	if mqv1alpha1.IsPaused(obj) {
		r.setCondition(obj, mqv1alpha1.ConditionSynced, metav1.ConditionUnknown, mqv1alpha1.ReasonPaused,
			fmt.Sprintf("The %s annotation stops the operator from touching the broker", mqv1alpha1.PausedAnnotation))
		return ctrl.Result{}, nil // removing the annotation is an update, which wakes it
	}
	if !usable {
		ref := r.Kind.instanceRef(obj).Key(obj.GetNamespace())
		if inst != nil && !inst.Allows(obj.GetNamespace()) {
			r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonNamespaceNotAllowed,
				fmt.Sprintf("Instance %s does not list namespace %q in spec.allowedNamespaces", ref, obj.GetNamespace()))
		} else {
			r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceNotReady,
				fmt.Sprintf("Instance %s is missing or not Ready; waiting for it", ref))
		}
		// The Instance watch wakes this object when the Instance changes.
		return ctrl.Result{}, nil
	}

	drift, err := r.Kind.declare(ctx, inst.Status.InstanceID, obj)
	var conflict *broker.ConflictError
	switch {
	case errors.As(err, &conflict):
		msg := fmt.Sprintf("%q is already declared in instance %q by another object; this one changes nothing", obj.BrokerName(), inst.Status.InstanceID)
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonNameConflict, msg)
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonNameConflict, "Reconcile", "%s", msg)
		return ctrl.Result{RequeueAfter: r.jittered()}, nil // the owner may go away
	case errors.Is(err, broker.ErrQuotaExceeded):
		// Waits for room: another object's deletion or a raised limit makes it.
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonQuotaExceeded, err.Error())
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, mqv1alpha1.ReasonQuotaExceeded, "Reconcile", "%s", err.Error())
		return ctrl.Result{RequeueAfter: r.jittered()}, nil
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
		driftRepairs.WithLabelValues(r.Kind.name()).Inc()
		r.setCondition(obj, mqv1alpha1.ConditionSynced, metav1.ConditionTrue, mqv1alpha1.ReasonDriftRepaired, drift)
	} else {
		r.setCondition(obj, mqv1alpha1.ConditionSynced, metav1.ConditionTrue, mqv1alpha1.ReasonInSync, "The broker matches the spec")
	}
	switch {
	case meta.IsStatusConditionFalse(before.GetConditions(), mqv1alpha1.ConditionReady) || len(before.GetConditions()) == 0:
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Declared", "Reconcile", "%q is declared in instance %q", obj.BrokerName(), inst.Status.InstanceID)
	case r.Kind.observedGeneration(before) != obj.GetGeneration():
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Updated", "Reconcile", "%q is updated in instance %q (generation %d)", obj.BrokerName(), inst.Status.InstanceID, obj.GetGeneration())
	}
	if err := r.Kind.observe(ctx, inst.Status.InstanceID, obj); err != nil {
		return ctrl.Result{}, err
	}
	r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, "The broker serves it")
	return ctrl.Result{RequeueAfter: r.jittered()}, nil
}

func (r *brokerObjectReconciler[T]) reconcileDelete(ctx context.Context, obj T, inst *mqv1alpha1.Instance, usable bool) error {
	if !controllerutil.ContainsFinalizer(obj, BrokerCleanupFinalizer) {
		return nil
	}
	// An Instance that is gone, or being deleted, takes its tenant along: there is
	// nothing left to delete, and waiting for it would leave this object stuck in
	// Terminating. One that no longer allows this namespace is not ours to change,
	// nor is a paused object's broker-side twin.
	if usable && inst.DeletionTimestamp.IsZero() && !mqv1alpha1.IsPaused(obj) && r.Kind.policy(obj) != mqv1alpha1.DeletionPolicyRetain {
		r.setCondition(obj, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonDeleting, "Deleting from the broker")
		if err := r.Kind.remove(ctx, inst.Status.InstanceID, obj); err != nil {
			return fmt.Errorf("failed to delete %q from the broker: %w", obj.BrokerName(), err)
		}
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, "Deleted", "Delete", "%q deleted from instance %q", obj.BrokerName(), inst.Status.InstanceID)
	}
	controllerutil.RemoveFinalizer(obj, BrokerCleanupFinalizer)
	if err := r.Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// instance returns the object's Instance, nil if it does not exist, and whether it
// may be used: it is Ready to serve and allows the object's namespace. Any other
// error reading it is returned, for the request to be retried: taken for a missing
// Instance, it would let a deletion drop the finalizer and leave the object's twin
// in the broker.
func (r *brokerObjectReconciler[T]) instance(ctx context.Context, obj T) (*mqv1alpha1.Instance, bool, error) {
	key := r.Kind.instanceRef(obj).Key(obj.GetNamespace())
	inst := &mqv1alpha1.Instance{}
	if err := r.Get(ctx, key, inst); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("failed to get Instance %s: %w", key, err)
	}
	// An Instance being deleted takes its tenant from the broker at any moment:
	// declaring into it would fail once it has, and be retried until this object's
	// own deletion (a namespace deletes both) or the Instance's end.
	usable := meta.IsStatusConditionTrue(inst.Status.Conditions, mqv1alpha1.ConditionReady) &&
		inst.Status.InstanceID != "" && inst.Allows(obj.GetNamespace()) && inst.DeletionTimestamp.IsZero()
	return inst, usable, nil
}

func (r *brokerObjectReconciler[T]) setCondition(obj T, typ string, status metav1.ConditionStatus, reason, msg string) {
	setCondition(obj, typ, status, reason, msg)
}

func (r *brokerObjectReconciler[T]) jittered() time.Duration {
	resync := r.Resync
	if resync <= 0 {
		resync = DefaultResync
	}
	return resync + time.Duration(rand.Int64N(int64(resync)/5+1))
}

// reconcileWorkers is how many objects of one kind reconcile at once.
const reconcileWorkers = 4

// instanceRefIndex indexes objects by the namespace/name of the Instance they
// reference, so an Instance change wakes exactly its dependents, in any namespace.
const instanceRefIndex = "spec.instanceRef"

// setup registers the controller: its own kind, and Instances waking the objects
// that reference them.
func (r *brokerObjectReconciler[T]) setup(mgr ctrl.Manager, list func() client.ObjectList, items func(client.ObjectList) []T) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), r.Kind.newObject(), instanceRefIndex, func(o client.Object) []string {
		return []string{r.Kind.instanceRef(o.(T)).Key(o.GetNamespace()).String()}
	}); err != nil {
		return err
	}
	log := mgr.GetLogger().WithValues("controller", strings.ToLower(r.Kind.name()), "watch", "Instance")
	return ctrl.NewControllerManagedBy(mgr).
		// The controller's own writes (finalizer, status) change neither the
		// generation nor the annotations: waking on them would only repeat the work.
		// Deletion bumps the generation, and resync is by RequeueAfter.
		For(r.Kind.newObject(), builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Reconciles of different objects are independent; the broker serialises
		// what must be serialised.
		WithOptions(controller.Options{MaxConcurrentReconciles: reconcileWorkers}).
		Watches(&mqv1alpha1.Instance{}, enqueueMapped(log, func(ctx context.Context, o client.Object) ([]reconcile.Request, error) {
			l := list()
			if err := r.List(ctx, l, client.MatchingFields{instanceRefIndex: client.ObjectKeyFromObject(o).String()}); err != nil {
				return nil, err
			}
			var reqs []reconcile.Request
			for _, obj := range items(l) {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(obj)})
			}
			return reqs, nil
		})).
		Named(strings.ToLower(r.Kind.name())).
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
