package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// Labels, annotations and finalizers of MessageConsumer pods.
const (
	// ConsumerLabel names the MessageConsumer a pod belongs to.
	ConsumerLabel = "mq.orderly.dev/consumer"
	// TemplateHashLabel identifies the template a pod was made from; pods of an
	// older template are rolled over.
	TemplateHashLabel = "mq.orderly.dev/template-hash"
	// BudgetAnnotation is a pod's share of the messages, in Messages mode.
	BudgetAnnotation = "mq.orderly.dev/budget"
	// TrackingFinalizer keeps a finished pod until its counts are in the
	// MessageConsumer's status, as Job's pod-tracking finalizer does.
	TrackingFinalizer = "mq.orderly.dev/consumer-tracking"
	// ConsumerFinalizer lets a deleted MessageConsumer stop its pods gracefully,
	// whether or not a garbage collector runs.
	ConsumerFinalizer = "mq.orderly.dev/consumer-cleanup"

	// RuntimeVolume holds the consumer runtime the init container copies in.
	RuntimeVolume = "orderly-runtime"
	// RuntimeDir is where the user's container mounts it.
	RuntimeDir = "/orderly-runtime"
	// RuntimePath is the runtime binary in the user's container.
	RuntimePath = RuntimeDir + "/orderly"
)

// ConsumerPodSelector selects MessageConsumer pods: the manager caches only those.
func ConsumerPodSelector() labels.Selector {
	req, _ := labels.NewRequirement(ConsumerLabel, selection.Exists, nil)
	return labels.NewSelector().Add(*req)
}

// ConsumerBroker is the part of the broker the MessageConsumer controller reads.
type ConsumerBroker interface {
	GroupStats(instanceID, groupID string) (broker.GroupStats, error)
	// WorkerProgress is what the group's workers (the pods' runtimes, by pod UID)
	// last reported.
	WorkerProgress(instanceID, groupID string) (map[string]broker.WorkerProgress, error)
}

// DefaultProgressPeriod is how often the counts of a MessageConsumer with running
// pods are read from the broker.
const DefaultProgressPeriod = 5 * time.Second

// +kubebuilder:rbac:groups=mq.orderly.dev,resources=messageconsumers,verbs=get;list;watch;update;patch;delete
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=messageconsumers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=messageconsumers/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// MessageConsumerReconciler runs MessageConsumers' pods.
type MessageConsumerReconciler struct {
	client.Client
	Scheme   *runtime.Scheme
	Recorder eventRecorder
	Broker   ConsumerBroker
	// RuntimeImage is the image of the init container that installs the consumer
	// runtime: the operator's own image.
	RuntimeImage string
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// ProgressPeriod is how often the running pods' counts are read
	// (DefaultProgressPeriod when zero).
	ProgressPeriod time.Duration
}

// Reconcile runs one pass over a MessageConsumer, in the shape of cluster-api's
// MachineSet reconcile: it reads the consumer and its pods into a consumerScope,
// runs the phases in order, each recording on the scope what it found and did,
// then derives the whole status from the scope (deriveStatus) and writes it once,
// in endPass. The status is written whether the phases succeed or not, so what a
// pass found before one failed still shows.
func (r *MessageConsumerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	mc := &mqv1alpha1.MessageConsumer{}
	if err := r.Get(ctx, req.NamespacedName, mc); err != nil {
		if apierrors.IsNotFound(err) {
			forgetResourceState("MessageConsumer", req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	s := newConsumerScope(mc, r.now())
	// before is the base the status patch is computed against, and its
	// resourceVersion the one the patch's optimistic lock carries.
	before := mc.DeepCopy()
	defer func() { res, err = r.endPass(ctx, s, before, res, err) }()

	deleting := !mc.DeletionTimestamp.IsZero()
	// The finalizer goes on before anything is done for the consumer, so that its
	// deletion always waits for its pods. The Update returns the object with a new
	// resourceVersion: it becomes the patch's base, or the status patch would
	// conflict with this very Update. (The Update succeeds only on the object as
	// read, so the status the scope started from is still the stored one.)
	if !deleting && controllerutil.AddFinalizer(mc, ConsumerFinalizer) {
		if err := r.Update(ctx, mc); err != nil {
			return ctrl.Result{}, err
		}
		before = mc.DeepCopy()
	}
	if err := r.gather(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if deleting {
		return runPhases(ctx, s,
			r.account,         // finished pods' counts
			r.stopForDeletion, // stop the pods; once all have finished, the finalizer may go
		)
	}
	return runPhases(ctx, s,
		r.account,             // finished pods' counts
		r.reconcileFinished,   // Complete or Failed in an earlier pass: stop, expire after the TTL
		r.resolveDependencies, // the Instance, Topic and ConsumerGroup, or wait for them
		r.readProgress,        // the running pods' counts so far
		r.admitTemplate,       // may the namespace run the template's pods?
		r.reconcileSuspend,    // spec.suspend holds the pods off
		r.reconcileLimits,     // activeDeadlineSeconds and backoffLimit
		r.rollOver,            // stop the pods of other templates
		r.reconcileCompletion, // the completion policy
		r.scaleUp,             // start pods up to the effective parallelism
	)
}

// endPass ends every pass that read its MessageConsumer, whatever the phases did:
// it derives the status from the scope and writes it, then lets go of what had to
// wait for that write. Finished pods give up their tracking finalizer only once
// the status holding their counts is written, so a crash in between can count a
// pod twice, never lose one; and a deleted consumer gives up its own finalizer only
// after that, for the pods' finalizers not to outlive it.
func (r *MessageConsumerReconciler) endPass(ctx context.Context, s *consumerScope, before *mqv1alpha1.MessageConsumer, res ctrl.Result, err error) (ctrl.Result, error) {
	deriveStatus(s)
	recordResourceState("MessageConsumer", s.mc)
	if perr := patchStatus(ctx, r.Client, before, s.mc, consumerStatus, client.MergeFromWithOptimisticLock{}); perr != nil {
		err = errors.Join(err, perr)
	} else if rerr := r.releasePods(ctx, s.release); rerr != nil {
		err = errors.Join(err, rerr)
	} else if s.removeFinalizer && controllerutil.RemoveFinalizer(s.mc, ConsumerFinalizer) {
		err = errors.Join(err, client.IgnoreNotFound(r.Update(ctx, s.mc)))
	}
	// A conflict means this pass worked from a stale read: run again on a fresh
	// one, without counting it as an error.
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	return res, err
}

// consumerScope is one pass over a MessageConsumer: what the pass read, and what
// each phase found and did. The phases read it and record on it, and none of them
// writes the status: deriveStatus makes the status from the scope alone, so what
// each finding means for the status is decided in one place. A finding left at its
// zero value means the phase that records it did not run (or did not get that far),
// and the status keeps what it says about it.
type consumerScope struct {
	// Read before the phases run.
	mc   *mqv1alpha1.MessageConsumer // as read; its status stays as read until deriveStatus
	now  time.Time                   // the pass's clock reading, for every time the status records
	pods []*corev1.Pod               // the pods it controls (gather)

	// counts are the status's counts with the pods that finished since added
	// (account), and release those pods, whose tracking finalizer goes once the
	// counts are written (endPass).
	counts  podCounts
	release []*corev1.Pod
	// progress is the running pods' share of the counts (status.inProgress):
	// what they last reported (readProgress), less the final counts of those
	// that finished since (account).
	progress mqv1alpha1.ConsumerCounts

	// waiting says why the consumer waits for its Instance, Topic or ConsumerGroup;
	// deps are the three, once they are usable (resolveDependencies).
	waiting *refusal
	deps    *dependencies

	// checked: the template was checked against the namespace (admitTemplate);
	// refused says why no pods of it may be created, nil if they may. hash
	// identifies the template.
	checked bool
	refused *refusal
	hash    string

	// suspended: spec.suspend holds the pods off; otherwise startTime is when the
	// pods started, which activeDeadlineSeconds counts from (reconcileSuspend).
	suspended bool
	startTime *metav1.Time

	// rolledOver: the pods of other templates than hash were stopped (rollOver);
	// activeCounted: rollOver got through them all, and active are the pods that
	// have not finished.
	rolledOver    bool
	activeCounted bool
	active        []*corev1.Pod

	// stopped: every pod still running was asked to stop (stopPods).
	stopped bool
	// outcome is how the work ended, when this pass ended it (finish).
	outcome *outcome
	// removeFinalizer: the consumer is being deleted and none of its pods runs any
	// more (stopForDeletion).
	removeFinalizer bool
}

// podCounts are the status fields that sum over the consumer's finished pods.
type podCounts struct {
	succeeded, failed                int32
	messagesHandled, handlerFailures int64
	// countedPods are the UIDs of the finished pods counted that still hold their
	// tracking finalizer.
	countedPods []string
}

// outcome is how a MessageConsumer's work ended: the condition that turns True
// (Complete or Failed), with its reason and message.
type outcome struct {
	condition, reason, message string
}

// dependencies are what a MessageConsumer consumes through.
type dependencies struct {
	instance *mqv1alpha1.Instance
	topic    *mqv1alpha1.Topic
	group    *mqv1alpha1.ConsumerGroup
}

func newConsumerScope(mc *mqv1alpha1.MessageConsumer, now time.Time) *consumerScope {
	st := mc.Status
	progress := ptr.Deref(st.InProgress, mqv1alpha1.ConsumerCounts{})
	return &consumerScope{mc: mc, now: now, progress: progress, counts: podCounts{
		succeeded: st.Succeeded, failed: st.Failed,
		// The status's totals include the running pods' share, which is kept
		// apart until they finish.
		messagesHandled: max(0, st.MessagesHandled-progress.MessagesHandled),
		handlerFailures: max(0, st.HandlerFailures-progress.HandlerFailures),
		countedPods:     slices.Clone(st.CountedPods),
	}}
}

// gather reads what the phases start from: the consumer's pods. The Instance,
// Topic and ConsumerGroup are read by the phase that judges them
// (resolveDependencies), not here: a deleted or finished consumer needs none of
// them, and a failure to read one must not hold up its deletion.
func (r *MessageConsumerReconciler) gather(ctx context.Context, s *consumerScope) error {
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(s.mc.Namespace), client.MatchingLabels{ConsumerLabel: s.mc.Name}); err != nil {
		return fmt.Errorf("failed to list pods: %w", err)
	}
	for i := range list.Items {
		if metav1.IsControlledBy(&list.Items[i], s.mc) {
			s.pods = append(s.pods, &list.Items[i])
		}
	}
	return nil
}

// consumerPhase is one step of a MessageConsumer's pass. It reads the scope, does
// its part, and records on the scope what it found. done ends the pass: the phases
// after it do not apply (the consumer waits, is suspended or has finished), and
// its result replaces what the phases before it asked for, which was for a
// consumer that goes on running.
type consumerPhase func(ctx context.Context, s *consumerScope) (res ctrl.Result, done bool, err error)

// runPhases runs the phases in order until one fails or ends the pass, and
// requeues after the soonest RequeueAfter any of them asked for.
func runPhases(ctx context.Context, s *consumerScope, phases ...consumerPhase) (ctrl.Result, error) {
	var res ctrl.Result
	for _, phase := range phases {
		r, done, err := phase(ctx, s)
		switch {
		case err != nil:
			return ctrl.Result{}, err
		case done:
			return r, nil
		}
		if r.RequeueAfter > 0 {
			res.RequeueAfter = shorter(res.RequeueAfter, r.RequeueAfter)
		}
	}
	return res, nil
}

func (r *MessageConsumerReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the controller: its pods, the Instances, Topics and
// ConsumerGroups its consumers wait for, and the labels of Namespaces, whose Pod
// Security level decides which pods it may create.
func (r *MessageConsumerReconciler) SetupWithManager(mgr ctrl.Manager) error {
	consumersIn := func(ctx context.Context, namespace string) ([]reconcile.Request, error) {
		var list mqv1alpha1.MessageConsumerList
		if err := r.List(ctx, &list, client.InNamespace(namespace)); err != nil {
			return nil, err
		}
		var reqs []reconcile.Request
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs, nil
	}
	log := mgr.GetLogger().WithValues("controller", "messageconsumer")
	dependents := func(kind string) handler.EventHandler {
		return enqueueMapped(log.WithValues("watch", kind), func(ctx context.Context, o client.Object) ([]reconcile.Request, error) {
			return consumersIn(ctx, o.GetNamespace())
		})
	}
	namespaced := enqueueMapped(log.WithValues("watch", "Namespace"), func(ctx context.Context, o client.Object) ([]reconcile.Request, error) {
		return consumersIn(ctx, o.GetName())
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&mqv1alpha1.MessageConsumer{}).
		Owns(&corev1.Pod{}).
		Watches(&mqv1alpha1.Instance{}, dependents("Instance")).
		Watches(&mqv1alpha1.Topic{}, dependents("Topic")).
		Watches(&mqv1alpha1.ConsumerGroup{}, dependents("ConsumerGroup")).
		Watches(&corev1.Namespace{}, namespaced, builder.OnlyMetadata, builder.WithPredicates(predicate.LabelChangedPredicate{})).
		Named("messageconsumer").
		Complete(r)
}
