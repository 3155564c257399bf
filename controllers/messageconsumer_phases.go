package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/consumer"
)

// The phases of a MessageConsumer's pass, in the order Reconcile runs them. Each is
// a consumerPhase: it records what it finds on the scope, and deriveStatus makes the
// status from that.

// account adds the counts of the pods that finished since they were last counted,
// and records those pods for their tracking finalizer to go once the counts are
// written. A pass that counted a pod ends there: its status is written (with the
// optimistic lock) before anything acts on the counts, and the next pass goes on
// from the stored status. A pass working from a stale read would otherwise decide
// on counts the stored status has moved past, and start pods for messages
// already handled, before its status patch found the conflict.
func (r *MessageConsumerReconciler) account(_ context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	before := s.counts
	s.release = countFinished(&s.counts, s.pods)
	if !slices.ContainsFunc(s.pods, running) {
		s.progress = mqv1alpha1.ConsumerCounts{}
	}
	if len(s.counts.countedPods) > len(before.countedPods) {
		// The pods just counted leave the running share. A pod's final count is at
		// least what it last reported, so taking the final counts off it keeps the
		// totals from going backwards until readProgress reads the rest again.
		s.progress.MessagesHandled = max(0, s.progress.MessagesHandled-(s.counts.messagesHandled-before.messagesHandled))
		s.progress.HandlerFailures = max(0, s.progress.HandlerFailures-(s.counts.handlerFailures-before.handlerFailures))
		return ctrl.Result{RequeueAfter: time.Millisecond}, true, nil
	}
	return ctrl.Result{}, false, nil
}

// running reports whether a pod counts toward the running share: it holds its
// tracking finalizer and has not finished.
func running(p *corev1.Pod) bool {
	return controllerutil.ContainsFinalizer(p, TrackingFinalizer) && !isTerminal(p)
}

// readProgress reads the running pods' counts so far from the broker, where each
// pod's runtime reports them with every consume, and asks to run again while pods
// run so the counts keep moving. The broker being unable to answer is not this
// pass's failure: the counts stay as they were.
func (r *MessageConsumerReconciler) readProgress(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	if !slices.ContainsFunc(s.pods, running) {
		return ctrl.Result{}, false, nil
	}
	period := r.ProgressPeriod
	if period <= 0 {
		period = DefaultProgressPeriod
	}
	reports, err := r.Broker.WorkerProgress(s.deps.instance.Status.InstanceID, s.deps.group.Status.GroupID)
	if err != nil {
		logf.FromContext(ctx).V(1).Info("cannot read the pods' progress", "error", err.Error())
		return ctrl.Result{RequeueAfter: period}, false, nil
	}
	var p mqv1alpha1.ConsumerCounts
	for _, pod := range s.pods {
		if rep, ok := reports[string(pod.UID)]; ok && running(pod) {
			p.MessagesHandled += rep.Handled
			p.HandlerFailures += rep.Failed
		}
	}
	s.progress = p
	return ctrl.Result{RequeueAfter: period}, false, nil
}

// countFinished adds to counts the finished pods that still hold the tracking
// finalizer, and returns the pods whose finalizer may go once counts are written. A
// pod is counted once: its UID stays in countedPods until the pod is seen without
// the finalizer, so a pod seen again through a cache that has not caught up with the
// finalizer's removal is not counted twice.
func countFinished(counts *podCounts, pods []*corev1.Pod) []*corev1.Pod {
	counted := map[string]bool{}
	for _, uid := range counts.countedPods {
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
			counts.succeeded++
		case p.DeletionTimestamp.IsZero():
			counts.failed++
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
		counts.messagesHandled += res.Handled
		counts.handlerFailures += res.Failed
	}
	// Forget the pods seen without their finalizer (or gone): they cannot come back
	// with it.
	counts.countedPods = counts.countedPods[:0:0]
	for uid := range counted {
		if tracked[uid] {
			counts.countedPods = append(counts.countedPods, uid)
		}
	}
	slices.Sort(counts.countedPods)
	return release
}

// stopForDeletion stops a deleted consumer's pods. Once none runs any more, its
// finalizer may go, after the status with the last pods' counts is written.
func (r *MessageConsumerReconciler) stopForDeletion(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	if n := r.stopPods(ctx, s, "MessageConsumer deleted"); n > 0 {
		return ctrl.Result{}, true, nil // pod events wake us as they finish
	}
	s.removeFinalizer = true
	return ctrl.Result{}, true, nil
}

// reconcileFinished ends the pass of a consumer that completed or failed in an
// earlier one: what is left of its pods is stopped, and it waits out its TTL.
func (r *MessageConsumerReconciler) reconcileFinished(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	if !finished(s.mc) {
		return ctrl.Result{}, false, nil
	}
	r.stopPods(ctx, s, "MessageConsumer finished")
	res, err := r.expireAfterTTL(ctx, s)
	return res, true, err
}

// resolveDependencies reads the Instance, Topic and ConsumerGroup. The pass ends
// if one is not usable: the watches on them wake the consumer when that changes.
func (r *MessageConsumerReconciler) resolveDependencies(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	deps, waiting, err := r.dependencies(ctx, s.mc)
	switch {
	case err != nil:
		return ctrl.Result{}, false, err
	case waiting != nil:
		s.waiting = waiting
		return ctrl.Result{}, true, nil
	}
	s.deps = &deps
	return ctrl.Result{}, false, nil
}

// dependencies resolves the Instance, Topic and ConsumerGroup, and says why the
// consumer waits when one is not usable.
func (r *MessageConsumerReconciler) dependencies(ctx context.Context, mc *mqv1alpha1.MessageConsumer) (dependencies, *refusal, error) {
	deps := dependencies{&mqv1alpha1.Instance{}, &mqv1alpha1.Topic{}, &mqv1alpha1.ConsumerGroup{}}
	wait := func(msg string) (dependencies, *refusal, error) {
		return deps, &refusal{mqv1alpha1.ReasonWaitingForDependencies, msg}, nil
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
			return deps, nil, err
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
		return deps, &refusal{mqv1alpha1.ReasonProtocolNotSupported,
			fmt.Sprintf("ConsumerGroup %q uses %s; the consumer runtime consumes through HTTP groups: give this MessageConsumer an HTTP ConsumerGroup", deps.group.Name, deps.group.Spec.Protocol)}, nil
	}
	return deps, nil, nil
}

// admitTemplate checks the template's pods against the namespace's Pod Security
// level. A refused template creates no pods, and it does not roll over the pods of
// an older one either: they keep working until it is fixed. So the pass goes on
// either way. A refusal is announced in an Event when it is new.
func (r *MessageConsumerReconciler) admitTemplate(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	s.hash = templateHash(s.mc)
	refused, err := r.admit(ctx, s.mc, *s.deps, s.hash)
	if err != nil {
		return ctrl.Result{}, false, err
	}
	if refused != nil {
		// The status is as read: prev is what the last pass said.
		prev := meta.FindStatusCondition(s.mc.Status.Conditions, mqv1alpha1.ConditionReady)
		if prev == nil || prev.Status != metav1.ConditionFalse || prev.Reason != refused.reason || prev.Message != refused.message || prev.ObservedGeneration != s.mc.Generation {
			r.Recorder.Eventf(s.mc, nil, corev1.EventTypeWarning, refused.reason, "Reconcile", "%s", refused.message)
		}
	}
	s.checked, s.refused = true, refused
	return ctrl.Result{}, false, nil
}

// reconcileSuspend stops the pods while spec.suspend is true, each finishing the
// message in hand, and ends the pass. Otherwise it records when the pods started:
// as the status says, or now on a first start or a resume, since the active
// deadline restarts on resume, as Job's does.
func (r *MessageConsumerReconciler) reconcileSuspend(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	if ptr.Deref(s.mc.Spec.Suspend, false) {
		s.suspended = true
		r.stopPods(ctx, s, "MessageConsumer suspended")
		return ctrl.Result{}, true, nil
	}
	s.startTime = s.mc.Status.StartTime
	if s.startTime == nil {
		s.startTime = &metav1.Time{Time: s.now}
	}
	return ctrl.Result{}, false, nil
}

// reconcileLimits fails the consumer past activeDeadlineSeconds or backoffLimit,
// as a Job fails, and otherwise wakes it when the deadline comes.
func (r *MessageConsumerReconciler) reconcileLimits(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	var res ctrl.Result
	if d := s.mc.Spec.ActiveDeadlineSeconds; d != nil {
		left := s.startTime.Add(time.Duration(*d) * time.Second).Sub(s.now)
		if left <= 0 {
			return r.finish(ctx, s, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonDeadlineExceeded,
				fmt.Sprintf("Active for longer than activeDeadlineSeconds (%d)", *d))
		}
		res.RequeueAfter = left
	}
	if limit := ptr.Deref(s.mc.Spec.BackoffLimit, 6); s.counts.failed > limit {
		return r.finish(ctx, s, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonBackoffLimitExceeded,
			fmt.Sprintf("%d pods failed, more than backoffLimit (%d)", s.counts.failed, limit))
	}
	return res, false, nil
}

// rollOver stops the pods of another template than the current one, each finishing
// its message in hand (new pods start as slots free up), unless the current
// template is refused. It records the pods that have not finished.
func (r *MessageConsumerReconciler) rollOver(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	s.rolledOver = true
	var active []*corev1.Pod
	for _, p := range s.pods {
		switch {
		case isTerminal(p):
		case s.refused == nil && p.DeletionTimestamp.IsZero() && p.Labels[TemplateHashLabel] != s.hash:
			if err := r.deletePod(ctx, p); err != nil {
				return ctrl.Result{}, false, err
			}
			r.Recorder.Eventf(s.mc, p, corev1.EventTypeNormal, "RollingOver", "Reconcile", "Stopping pod %s of an older template", p.Name)
			active = append(active, p)
		default:
			active = append(active, p)
		}
	}
	s.active, s.activeCounted = active, true
	return ctrl.Result{}, false, nil
}

// reconcileCompletion completes the consumer once its completion policy is met.
func (r *MessageConsumerReconciler) reconcileCompletion(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	done, reason, msg, err := r.workDone(s)
	switch {
	case err != nil:
		return ctrl.Result{}, false, err
	case done:
		return r.finish(ctx, s, mqv1alpha1.ConditionComplete, reason, msg)
	}
	return ctrl.Result{}, false, nil
}

// workDone reports whether the completion policy is met.
func (r *MessageConsumerReconciler) workDone(s *consumerScope) (bool, string, string, error) {
	switch s.mc.Spec.CompletionPolicy.Mode {
	case mqv1alpha1.CompletionForever:
		return false, "", "", nil
	case mqv1alpha1.CompletionMessages:
		n := ptr.Deref(s.mc.Spec.CompletionPolicy.Messages, 0)
		if s.counts.messagesHandled >= n {
			return true, mqv1alpha1.ReasonMessagesHandled, fmt.Sprintf("%d messages handled", s.counts.messagesHandled), nil
		}
		return false, "", "", nil
	}
	// Drain: a pod found nothing left, and the broker agrees that the group has no
	// backlog on the topic and nothing in flight.
	if s.counts.succeeded == 0 {
		return false, "", "", nil
	}
	backlog, inFlight, err := r.backlog(*s.deps)
	if err != nil {
		return false, "", "", err
	}
	if backlog == 0 && inFlight == 0 {
		return true, mqv1alpha1.ReasonDrained, fmt.Sprintf("Group %s has consumed everything on topic %s", s.deps.group.Status.GroupID, s.deps.topic.Status.TopicName), nil
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

// scaleUp starts pods up to the effective parallelism, unless the template is
// refused. A draining consumer is polled: its completion is decided on the
// broker's counts, which no watch reports.
func (r *MessageConsumerReconciler) scaleUp(ctx context.Context, s *consumerScope) (ctrl.Result, bool, error) {
	if s.refused == nil {
		if err := r.startPods(ctx, s); err != nil {
			return ctrl.Result{}, false, err
		}
	}
	if draining(s.mc) {
		return ctrl.Result{RequeueAfter: 2 * time.Second}, false, nil
	}
	return ctrl.Result{}, false, nil
}

// startPods creates pods up to the effective parallelism.
func (r *MessageConsumerReconciler) startPods(ctx context.Context, s *consumerScope) error {
	mc, deps := s.mc, *s.deps
	want := int(effectiveParallelism(mc, deps.topic))
	if draining(mc) {
		// Once a pod has drained, new pods are needed only for what came back or
		// arrived since.
		if s.counts.succeeded > 0 {
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
		unassigned = ptr.Deref(mc.Spec.CompletionPolicy.Messages, 0) - s.counts.messagesHandled
		for _, p := range s.active {
			b, _ := strconv.ParseInt(p.Annotations[BudgetAnnotation], 10, 64)
			unassigned -= b
		}
	}
	for i := len(s.active); i < want; i++ {
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
		pod, err := r.podFor(mc, deps, s.hash, budget)
		if err != nil {
			return err
		}
		if err := r.Create(ctx, pod); err != nil {
			if namespaceTerminating(err) {
				// The namespace controller deleted the pods first and deletes the
				// consumer next, which wakes it: retrying would only fail until then.
				ctrl.LoggerFrom(ctx).V(1).Info("Not replacing pods: the namespace is being deleted")
				return nil
			}
			return fmt.Errorf("failed to create a pod: %w", err)
		}
		r.Recorder.Eventf(mc, pod, corev1.EventTypeNormal, "SuccessfulCreate", "Reconcile", "Created pod %s", pod.Name)
	}
	return nil
}

// finish ends the consumer's work: the outcome's condition turns True, the pods
// still running are stopped, and the consumer waits out its TTL.
func (r *MessageConsumerReconciler) finish(ctx context.Context, s *consumerScope, condition, reason, msg string) (ctrl.Result, bool, error) {
	s.outcome = &outcome{condition, reason, msg}
	if condition == mqv1alpha1.ConditionComplete {
		r.Recorder.Eventf(s.mc, nil, corev1.EventTypeNormal, "Completed", "Reconcile", "%s", msg)
	} else {
		r.Recorder.Eventf(s.mc, nil, corev1.EventTypeWarning, reason, "Reconcile", "%s", msg)
	}
	r.stopPods(ctx, s, "MessageConsumer finished")
	res, err := r.expireAfterTTL(ctx, s)
	return res, true, err
}

// expireAfterTTL deletes a finished MessageConsumer once its TTL has passed: from
// when its Complete or Failed condition turned True, or from now if that happens in
// this pass.
func (r *MessageConsumerReconciler) expireAfterTTL(ctx context.Context, s *consumerScope) (ctrl.Result, error) {
	ttl := s.mc.Spec.TTLSecondsAfterFinished
	if ttl == nil {
		return ctrl.Result{}, nil
	}
	finishedAt := s.now
	for _, typ := range []string{mqv1alpha1.ConditionComplete, mqv1alpha1.ConditionFailed} {
		if c := meta.FindStatusCondition(s.mc.Status.Conditions, typ); c != nil && c.Status == metav1.ConditionTrue {
			finishedAt = c.LastTransitionTime.Time
		}
	}
	left := finishedAt.Add(time.Duration(*ttl) * time.Second).Sub(s.now)
	if left > 0 {
		return ctrl.Result{RequeueAfter: left}, nil
	}
	r.Recorder.Eventf(s.mc, nil, corev1.EventTypeNormal, "Expired", "Reconcile", "Deleting after ttlSecondsAfterFinished (%d)", *ttl)
	return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, s.mc, client.PropagationPolicy(metav1.DeletePropagationBackground)))
}

// stopPods deletes the pods still running, gracefully (the runtime finishes the
// message in hand on SIGTERM), and returns how many pods have not finished. A pod
// it fails to delete is logged and tried again on the next pass.
func (r *MessageConsumerReconciler) stopPods(ctx context.Context, s *consumerScope, why string) int {
	n := 0
	for _, p := range s.pods {
		if isTerminal(p) {
			continue
		}
		n++
		if p.DeletionTimestamp.IsZero() {
			if err := r.deletePod(ctx, p); err != nil {
				ctrl.LoggerFrom(ctx).Error(err, "Failed to stop pod", "pod", p.Name)
				continue
			}
			r.Recorder.Eventf(s.mc, p, corev1.EventTypeNormal, "SuccessfulDelete", "Reconcile", "%s: stopping pod %s", why, p.Name)
		}
	}
	s.stopped = true
	return n
}

func (r *MessageConsumerReconciler) deletePod(ctx context.Context, p *corev1.Pod) error {
	return client.IgnoreNotFound(r.Delete(ctx, p))
}

// releasePods removes the tracking finalizer of finished pods whose counts are in
// the status.
func (r *MessageConsumerReconciler) releasePods(ctx context.Context, pods []*corev1.Pod) error {
	for _, p := range pods {
		patch := client.MergeFrom(p.DeepCopy())
		controllerutil.RemoveFinalizer(p, TrackingFinalizer)
		if err := r.Patch(ctx, p, patch); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("failed to release pod %s: %w", p.Name, err)
		}
	}
	return nil
}

// effectiveParallelism is how many pods can work at once: spec.parallelism, capped
// by the queue count on an ordered topic, where no two pods hold one queue.
func effectiveParallelism(mc *mqv1alpha1.MessageConsumer, t *mqv1alpha1.Topic) int32 {
	p := ptr.Deref(mc.Spec.Parallelism, 1)
	if t.Spec.MessageType == mqv1alpha1.MessageTypeOrdered && t.Status.Queues > 0 {
		p = min(p, t.Status.Queues)
	}
	return p
}

// draining reports whether the consumer completes by draining its topic, the
// default completion mode.
func draining(mc *mqv1alpha1.MessageConsumer) bool {
	return mc.Spec.CompletionPolicy.Mode == mqv1alpha1.CompletionDrain || mc.Spec.CompletionPolicy.Mode == ""
}

// shorter is the shorter of two requeue delays, zero meaning none.
func shorter(a, b time.Duration) time.Duration {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}
