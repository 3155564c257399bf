package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
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
	"github.com/orderly-dev/orderly/internal/consumer"
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
}

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
}

// dependencies are what a MessageConsumer consumes through.
type dependencies struct {
	instance *mqv1alpha1.Instance
	topic    *mqv1alpha1.Topic
	group    *mqv1alpha1.ConsumerGroup
}

func (r *MessageConsumerReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	mc := &mqv1alpha1.MessageConsumer{}
	if err := r.Get(ctx, req.NamespacedName, mc); err != nil {
		if apierrors.IsNotFound(err) {
			forgetResourceState("MessageConsumer", req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := mc.DeepCopy()
	statusWritten := false
	defer func() {
		mc.Status.ObservedGeneration = mc.Generation
		mc.Status.State = state(mc)
		recordResourceState("MessageConsumer", mc)
		if !statusWritten {
			err = errors.Join(err, patchStatus(ctx, r.Client, before, mc, consumerStatus, client.MergeFromWithOptimisticLock{}))
		}
		// A conflict means this pass worked from a stale read: run again on a
		// fresh one, without counting it as an error.
		if apierrors.IsConflict(err) {
			res, err = ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
		}
	}()

	pods, err := r.pods(ctx, mc)
	if err != nil {
		return ctrl.Result{}, err
	}
	// Finished pods' counts go into the status first, and only then do the pods let
	// go of their tracking finalizer: a crash in between can count a pod twice, never
	// lose one.
	if counted := r.account(mc, pods); len(counted) > 0 {
		if err := patchStatus(ctx, r.Client, before, mc, consumerStatus, client.MergeFromWithOptimisticLock{}); err != nil {
			return ctrl.Result{}, err
		}
		before = mc.DeepCopy()
		for _, p := range counted {
			if err := r.releasePod(ctx, p); err != nil {
				return ctrl.Result{}, err
			}
		}
	}

	if !mc.DeletionTimestamp.IsZero() {
		if n := r.stopPods(ctx, mc, pods, "MessageConsumer deleted"); n > 0 {
			return ctrl.Result{}, nil // pod events wake us as they finish
		}
		if controllerutil.RemoveFinalizer(mc, ConsumerFinalizer) {
			statusWritten = true // the object is going away
			return ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, mc))
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(mc, ConsumerFinalizer) {
		if err := r.Update(ctx, mc); err != nil {
			return ctrl.Result{}, err
		}
	}

	if finished(mc) {
		r.stopPods(ctx, mc, pods, "MessageConsumer finished")
		return r.expireAfterTTL(ctx, mc)
	}

	deps, ok, err := r.dependencies(ctx, mc)
	if err != nil || !ok {
		return ctrl.Result{}, err
	}
	// A template the namespace does not allow creates no pods, and it does not roll
	// over the pods of an older one either: they keep working until it is fixed.
	hash := templateHash(mc)
	refused, err := r.admit(ctx, mc, deps, hash)
	if err != nil {
		return ctrl.Result{}, err
	}
	mc.Status.EffectiveParallelism = effectiveParallelism(mc, deps.topic)
	switch {
	case refused != nil:
		r.refuse(mc, refused)
	case mc.Status.EffectiveParallelism < ptr.Deref(mc.Spec.Parallelism, 1):
		r.setCondition(mc, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonParallelismCapped,
			fmt.Sprintf("Topic %s is ordered with %d queues: no two pods hold one queue, so at most %d of the %d pods can work",
				deps.topic.Name, deps.topic.Status.Queues, mc.Status.EffectiveParallelism, ptr.Deref(mc.Spec.Parallelism, 1)))
	default:
		r.setCondition(mc, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, "Instance, Topic and ConsumerGroup are Ready")
	}

	if ptr.Deref(mc.Spec.Suspend, false) {
		r.setCondition(mc, mqv1alpha1.ConditionSuspended, metav1.ConditionTrue, mqv1alpha1.ReasonSuspended, "spec.suspend is true; pods finish the message in hand and stop")
		mc.Status.StartTime = nil // the deadline restarts on resume
		r.stopPods(ctx, mc, pods, "MessageConsumer suspended")
		return ctrl.Result{}, nil
	}
	if meta.IsStatusConditionTrue(mc.Status.Conditions, mqv1alpha1.ConditionSuspended) {
		r.setCondition(mc, mqv1alpha1.ConditionSuspended, metav1.ConditionFalse, mqv1alpha1.ReasonResumed, "spec.suspend is false")
	}
	now := r.now()
	if mc.Status.StartTime == nil {
		mc.Status.StartTime = &metav1.Time{Time: now}
	}

	var requeue time.Duration
	if d := mc.Spec.ActiveDeadlineSeconds; d != nil {
		left := mc.Status.StartTime.Add(time.Duration(*d) * time.Second).Sub(now)
		if left <= 0 {
			return r.finish(ctx, mc, pods, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonDeadlineExceeded,
				fmt.Sprintf("Active for longer than activeDeadlineSeconds (%d)", *d))
		}
		requeue = left
	}
	if mc.Status.Failed > ptr.Deref(mc.Spec.BackoffLimit, 6) {
		return r.finish(ctx, mc, pods, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonBackoffLimitExceeded,
			fmt.Sprintf("%d pods failed, more than backoffLimit (%d)", mc.Status.Failed, ptr.Deref(mc.Spec.BackoffLimit, 6)))
	}

	// Pods of another template roll over: each finishes its message in hand.
	mc.Status.TemplateHash = hash
	var active []*corev1.Pod
	for _, p := range pods {
		switch {
		case isTerminal(p):
		case refused == nil && p.DeletionTimestamp.IsZero() && p.Labels[TemplateHashLabel] != hash:
			if err := r.deletePod(ctx, p); err != nil {
				return ctrl.Result{}, err
			}
			r.Recorder.Eventf(mc, p, corev1.EventTypeNormal, "RollingOver", "Reconcile", "Stopping pod %s of an older template", p.Name)
			active = append(active, p)
		default:
			active = append(active, p)
		}
	}
	mc.Status.Active, mc.Status.Ready = int32(len(active)), ready(active)

	done, reason, msg, err := r.workDone(mc, deps)
	if err != nil {
		return ctrl.Result{}, err
	}
	if done {
		return r.finish(ctx, mc, pods, mqv1alpha1.ConditionComplete, reason, msg)
	}
	if refused == nil {
		if err := r.startPods(ctx, mc, deps, active, hash); err != nil {
			return ctrl.Result{}, err
		}
	}
	// Drain completion is decided on the broker's counts, which no watch reports.
	if mc.Spec.CompletionPolicy.Mode == mqv1alpha1.CompletionDrain || mc.Spec.CompletionPolicy.Mode == "" {
		requeue = shorter(requeue, 2*time.Second)
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// workDone reports whether the completion policy is met.
func (r *MessageConsumerReconciler) workDone(mc *mqv1alpha1.MessageConsumer, deps dependencies) (bool, string, string, error) {
	switch mc.Spec.CompletionPolicy.Mode {
	case mqv1alpha1.CompletionForever:
		return false, "", "", nil
	case mqv1alpha1.CompletionMessages:
		n := ptr.Deref(mc.Spec.CompletionPolicy.Messages, 0)
		if mc.Status.MessagesHandled >= n {
			return true, mqv1alpha1.ReasonMessagesHandled, fmt.Sprintf("%d messages handled", mc.Status.MessagesHandled), nil
		}
		return false, "", "", nil
	}
	// Drain: a pod found nothing left, and the broker agrees that the group has no
	// backlog on the topic and nothing in flight.
	if mc.Status.Succeeded == 0 {
		return false, "", "", nil
	}
	backlog, inFlight, err := r.backlog(deps)
	if err != nil {
		return false, "", "", err
	}
	if backlog == 0 && inFlight == 0 {
		return true, mqv1alpha1.ReasonDrained, fmt.Sprintf("Group %s has consumed everything on topic %s", deps.group.Status.GroupID, deps.topic.Status.TopicName), nil
	}
	return false, "", "", nil
}

func (r *MessageConsumerReconciler) backlog(deps dependencies) (backlog, inFlight int64, err error) {
	stats, err := r.Broker.GroupStats(deps.instance.Status.InstanceID, deps.group.Status.GroupID)
	if err != nil {
		return 0, 0, err
	}
	for _, t := range stats.Topics {
		if t.Topic == deps.topic.Status.TopicName {
			return t.Backlog, t.InFlight, nil
		}
	}
	// The group has not consumed the topic yet: its backlog is the topic's.
	return deps.topic.Status.Messages, 0, nil
}

// startPods creates pods up to the effective parallelism.
func (r *MessageConsumerReconciler) startPods(ctx context.Context, mc *mqv1alpha1.MessageConsumer, deps dependencies, active []*corev1.Pod, hash string) error {
	want := int(mc.Status.EffectiveParallelism)
	if mc.Spec.CompletionPolicy.Mode == mqv1alpha1.CompletionDrain || mc.Spec.CompletionPolicy.Mode == "" {
		// Once a pod has drained, new pods are needed only for what came back or
		// arrived since.
		if mc.Status.Succeeded > 0 {
			backlog, _, err := r.backlog(deps)
			if err != nil {
				return err
			}
			if backlog == 0 {
				return nil
			}
		}
	}
	var unassigned int64
	if mc.Spec.CompletionPolicy.Mode == mqv1alpha1.CompletionMessages {
		unassigned = ptr.Deref(mc.Spec.CompletionPolicy.Messages, 0) - mc.Status.MessagesHandled
		for _, p := range active {
			b, _ := strconv.ParseInt(p.Annotations[BudgetAnnotation], 10, 64)
			unassigned -= b
		}
	}
	for i := len(active); i < want; i++ {
		var budget int64
		if mc.Spec.CompletionPolicy.Mode == mqv1alpha1.CompletionMessages {
			if unassigned <= 0 {
				return nil
			}
			// Shares never add up to more than what is left, so the pods never
			// handle more than asked.
			budget = (unassigned + int64(want-i) - 1) / int64(want-i)
			unassigned -= budget
		}
		pod, err := r.podFor(mc, deps, hash, budget)
		if err != nil {
			return err
		}
		if err := r.Create(ctx, pod); err != nil {
			return fmt.Errorf("failed to create a pod: %w", err)
		}
		r.Recorder.Eventf(mc, pod, corev1.EventTypeNormal, "SuccessfulCreate", "Reconcile", "Created pod %s", pod.Name)
	}
	return nil
}

// refuse records a refusal in the Ready condition, and in an Event when it is new.
func (r *MessageConsumerReconciler) refuse(mc *mqv1alpha1.MessageConsumer, why *refusal) {
	prev := meta.FindStatusCondition(mc.Status.Conditions, mqv1alpha1.ConditionReady)
	if prev == nil || prev.Status != metav1.ConditionFalse || prev.Reason != why.reason || prev.Message != why.message || prev.ObservedGeneration != mc.Generation {
		r.Recorder.Eventf(mc, nil, corev1.EventTypeWarning, why.reason, "Reconcile", "%s", why.message)
	}
	r.setCondition(mc, mqv1alpha1.ConditionReady, metav1.ConditionFalse, why.reason, why.message)
}

// dependencies resolves the Instance, Topic and ConsumerGroup, and says in the
// status why the consumer waits when one is not usable.
func (r *MessageConsumerReconciler) dependencies(ctx context.Context, mc *mqv1alpha1.MessageConsumer) (dependencies, bool, error) {
	deps := dependencies{&mqv1alpha1.Instance{}, &mqv1alpha1.Topic{}, &mqv1alpha1.ConsumerGroup{}}
	wait := func(msg string) (dependencies, bool, error) {
		r.setCondition(mc, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonWaitingForDependencies, msg)
		return deps, false, nil
	}
	for _, d := range []struct {
		kind, name string
		obj        client.Object
		conds      func() []metav1.Condition
	}{
		{"Instance", mc.Spec.InstanceRef.Name, deps.instance, func() []metav1.Condition { return deps.instance.Status.Conditions }},
		{"Topic", mc.Spec.Topic, deps.topic, func() []metav1.Condition { return deps.topic.Status.Conditions }},
		{"ConsumerGroup", mc.Spec.ConsumerGroupRef.Name, deps.group, func() []metav1.Condition { return deps.group.Status.Conditions }},
	} {
		if err := r.Get(ctx, client.ObjectKey{Namespace: mc.Namespace, Name: d.name}, d.obj); err != nil {
			if apierrors.IsNotFound(err) {
				return wait(fmt.Sprintf("%s %q does not exist", d.kind, d.name))
			}
			return deps, false, err
		}
		if !meta.IsStatusConditionTrue(d.conds(), mqv1alpha1.ConditionReady) {
			return wait(fmt.Sprintf("%s %q is not Ready", d.kind, d.name))
		}
	}
	for _, ref := range []mqv1alpha1.InstanceReference{deps.topic.Spec.InstanceRef, deps.group.Spec.InstanceRef} {
		if ref.Key(mc.Namespace) != client.ObjectKeyFromObject(deps.instance) {
			return wait(fmt.Sprintf("Topic %q and ConsumerGroup %q must both belong to Instance %q", mc.Spec.Topic, mc.Spec.ConsumerGroupRef.Name, mc.Spec.InstanceRef.Name))
		}
	}
	if deps.group.Spec.Protocol != mqv1alpha1.ProtocolHTTP {
		r.setCondition(mc, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonProtocolNotSupported,
			fmt.Sprintf("ConsumerGroup %q uses %s; the consumer runtime consumes through HTTP groups: give this MessageConsumer an HTTP ConsumerGroup", deps.group.Name, deps.group.Spec.Protocol))
		return deps, false, nil
	}
	return deps, true, nil
}

func effectiveParallelism(mc *mqv1alpha1.MessageConsumer, t *mqv1alpha1.Topic) int32 {
	p := ptr.Deref(mc.Spec.Parallelism, 1)
	if t.Spec.MessageType == mqv1alpha1.MessageTypeOrdered && t.Status.Queues > 0 {
		p = min(p, t.Status.Queues)
	}
	return p
}

// account adds the counts of finished pods that still hold the tracking finalizer
// to the status, and returns the pods whose finalizer may now go. A pod is counted
// once: its UID stays in status.countedPods until the pod is seen without the
// finalizer, so a pod seen again through a cache that has not caught up with the
// finalizer's removal is not counted twice.
func (r *MessageConsumerReconciler) account(mc *mqv1alpha1.MessageConsumer, pods []*corev1.Pod) []*corev1.Pod {
	counted := map[string]bool{}
	for _, uid := range mc.Status.CountedPods {
		counted[uid] = true
	}
	tracked := map[string]bool{}
	var release []*corev1.Pod
	for _, p := range pods {
		if !controllerutil.ContainsFinalizer(p, TrackingFinalizer) {
			continue
		}
		uid := string(p.UID)
		tracked[uid] = true
		if !isTerminal(p) {
			continue
		}
		release = append(release, p)
		if counted[uid] {
			continue
		}
		counted[uid] = true
		switch {
		case p.Status.Phase == corev1.PodSucceeded:
			mc.Status.Succeeded++
		case p.DeletionTimestamp.IsZero():
			mc.Status.Failed++
		default:
			// Stopped by a deletion (a rollover, suspend, completion, or a person):
			// not a failure of the pod's own, so it does not count toward backoffLimit.
		}
		var res consumer.Result
		for _, cs := range p.Status.ContainerStatuses {
			if t := cs.State.Terminated; t != nil && t.Message != "" {
				_ = json.Unmarshal([]byte(t.Message), &res) // a pod that died early reports nothing
			}
		}
		mc.Status.MessagesHandled += res.Handled
		mc.Status.HandlerFailures += res.Failed
	}
	// Forget the pods seen without their finalizer (or gone): they cannot come back
	// with it.
	mc.Status.CountedPods = mc.Status.CountedPods[:0:0]
	for uid := range counted {
		if tracked[uid] {
			mc.Status.CountedPods = append(mc.Status.CountedPods, uid)
		}
	}
	slices.Sort(mc.Status.CountedPods)
	return release
}

func (r *MessageConsumerReconciler) releasePod(ctx context.Context, p *corev1.Pod) error {
	patch := client.MergeFrom(p.DeepCopy())
	controllerutil.RemoveFinalizer(p, TrackingFinalizer)
	return client.IgnoreNotFound(r.Patch(ctx, p, patch))
}

// stopPods deletes the pods still running, gracefully (the runtime finishes the
// message in hand on SIGTERM), and returns how many pods have not finished.
func (r *MessageConsumerReconciler) stopPods(ctx context.Context, mc *mqv1alpha1.MessageConsumer, pods []*corev1.Pod, why string) int {
	n := 0
	for _, p := range pods {
		if isTerminal(p) {
			continue
		}
		n++
		if p.DeletionTimestamp.IsZero() {
			if err := r.deletePod(ctx, p); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Failed to stop pod", "pod", p.Name)
				continue
			}
			r.Recorder.Eventf(mc, p, corev1.EventTypeNormal, "SuccessfulDelete", "Reconcile", "%s: stopping pod %s", why, p.Name)
		}
	}
	mc.Status.Active, mc.Status.Ready = 0, 0
	return n
}

func (r *MessageConsumerReconciler) deletePod(ctx context.Context, p *corev1.Pod) error {
	return client.IgnoreNotFound(r.Delete(ctx, p))
}

func (r *MessageConsumerReconciler) finish(ctx context.Context, mc *mqv1alpha1.MessageConsumer, pods []*corev1.Pod, typ, reason, msg string) (ctrl.Result, error) {
	r.setCondition(mc, typ, metav1.ConditionTrue, reason, msg)
	now := metav1.NewTime(r.now())
	if typ == mqv1alpha1.ConditionComplete {
		mc.Status.CompletionTime = &now
		r.Recorder.Eventf(mc, nil, corev1.EventTypeNormal, "Completed", "Reconcile", "%s", msg)
	} else {
		r.Recorder.Eventf(mc, nil, corev1.EventTypeWarning, reason, "Reconcile", "%s", msg)
	}
	r.stopPods(ctx, mc, pods, "MessageConsumer finished")
	return r.expireAfterTTL(ctx, mc)
}

// expireAfterTTL deletes a finished MessageConsumer once its TTL has passed.
func (r *MessageConsumerReconciler) expireAfterTTL(ctx context.Context, mc *mqv1alpha1.MessageConsumer) (ctrl.Result, error) {
	ttl := mc.Spec.TTLSecondsAfterFinished
	if ttl == nil {
		return ctrl.Result{}, nil
	}
	var finishedAt time.Time
	for _, typ := range []string{mqv1alpha1.ConditionComplete, mqv1alpha1.ConditionFailed} {
		if c := meta.FindStatusCondition(mc.Status.Conditions, typ); c != nil && c.Status == metav1.ConditionTrue {
			finishedAt = c.LastTransitionTime.Time
		}
	}
	if finishedAt.IsZero() {
		finishedAt = r.now()
	}
	left := finishedAt.Add(time.Duration(*ttl) * time.Second).Sub(r.now())
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	r.Recorder.Eventf(mc, nil, corev1.EventTypeNormal, "Expired", "Reconcile", "Deleting after ttlSecondsAfterFinished (%d)", *ttl)
	return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, mc, client.PropagationPolicy(metav1.DeletePropagationBackground)))
}

func (r *MessageConsumerReconciler) pods(ctx context.Context, mc *mqv1alpha1.MessageConsumer) ([]*corev1.Pod, error) {
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(mc.Namespace), client.MatchingLabels{ConsumerLabel: mc.Name}); err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for i := range list.Items {
		if metav1.IsControlledBy(&list.Items[i], mc) {
			out = append(out, &list.Items[i])
		}
	}
	return out, nil
}

func (r *MessageConsumerReconciler) setCondition(mc *mqv1alpha1.MessageConsumer, typ string, status metav1.ConditionStatus, reason, msg string) {
	setCondition(mc, typ, status, reason, msg)
}

// consumerStatus is the part of a MessageConsumer that patchStatus writes.
func consumerStatus(mc *mqv1alpha1.MessageConsumer) any { return mc.Status }

func (r *MessageConsumerReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// state summarises the conditions for the Status column.
func state(mc *mqv1alpha1.MessageConsumer) mqv1alpha1.ConsumerState {
	conds := mc.Status.Conditions
	switch {
	case meta.IsStatusConditionTrue(conds, mqv1alpha1.ConditionFailed):
		return mqv1alpha1.ConsumerFailed
	case meta.IsStatusConditionTrue(conds, mqv1alpha1.ConditionComplete):
		return mqv1alpha1.ConsumerComplete
	case meta.IsStatusConditionTrue(conds, mqv1alpha1.ConditionSuspended):
		return mqv1alpha1.ConsumerSuspended
	case meta.IsStatusConditionTrue(conds, mqv1alpha1.ConditionReady):
		return mqv1alpha1.ConsumerRunning
	}
	return mqv1alpha1.ConsumerWaiting
}

func finished(mc *mqv1alpha1.MessageConsumer) bool {
	return meta.IsStatusConditionTrue(mc.Status.Conditions, mqv1alpha1.ConditionComplete) ||
		meta.IsStatusConditionTrue(mc.Status.Conditions, mqv1alpha1.ConditionFailed)
}

func shorter(a, b time.Duration) time.Duration {
	if a == 0 || b < a {
		return b
	}
	return a
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
