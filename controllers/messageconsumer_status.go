package controllers

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
)

// deriveStatus makes a MessageConsumer's status from what one pass found, recorded
// on its scope: the only function that writes the status, and one that reads
// nothing else, so that plain table tests cover every way the status can turn out.
//
// What the pass learnt nothing about keeps the value it was read with: a consumer
// waiting for its dependencies still reports the pods it had, a finished one the
// template its pods ran. Every condition set in a pass takes the pass's time as its
// transition time, and the consumer's generation as its observedGeneration.
func deriveStatus(s *consumerScope) {
	st := &s.mc.Status
	// observedGeneration is written on every pass, failed or not: the conditions
	// say what became of that generation.
	st.ObservedGeneration = s.mc.Generation
	st.Succeeded, st.Failed = s.counts.succeeded, s.counts.failed
	st.MessagesHandled = s.counts.messagesHandled + s.progress.MessagesHandled
	st.HandlerFailures = s.counts.handlerFailures + s.progress.HandlerFailures
	st.InProgress = nil
	if s.progress != (mqv1alpha1.ConsumerCounts{}) {
		st.InProgress = ptr.To(s.progress)
	}
	st.CountedPods = s.counts.countedPods

	set := func(typ string, status metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg,
			ObservedGeneration: s.mc.Generation, LastTransitionTime: metav1.NewTime(s.now)})
	}

	// Ready: whether the pods can run.
	switch {
	case s.waiting != nil:
		set(mqv1alpha1.ConditionReady, metav1.ConditionFalse, s.waiting.reason, s.waiting.message)
	case s.checked:
		st.EffectiveParallelism = effectiveParallelism(s.mc, s.deps.topic)
		want := ptr.Deref(s.mc.Spec.Parallelism, 1)
		switch {
		case s.refused != nil:
			set(mqv1alpha1.ConditionReady, metav1.ConditionFalse, s.refused.reason, s.refused.message)
		case st.EffectiveParallelism < want:
			set(mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonParallelismCapped,
				fmt.Sprintf("Topic %s is ordered with %d queues: no two pods hold one queue, so at most %d of the %d pods can work",
					s.deps.topic.Name, s.deps.topic.Status.Queues, st.EffectiveParallelism, want))
		default:
			set(mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, "Instance, Topic and ConsumerGroup are Ready")
		}
	}

	switch {
	case s.suspended:
		set(mqv1alpha1.ConditionSuspended, metav1.ConditionTrue, mqv1alpha1.ReasonSuspended, "spec.suspend is true; pods finish the message in hand and stop")
		st.StartTime = nil // the deadline restarts on resume
	case s.startTime != nil:
		if meta.IsStatusConditionTrue(st.Conditions, mqv1alpha1.ConditionSuspended) {
			set(mqv1alpha1.ConditionSuspended, metav1.ConditionFalse, mqv1alpha1.ReasonResumed, "spec.suspend is false")
		}
		st.StartTime = s.startTime
	}

	// The template the active pods should run: the current one, once the pods of
	// others are being stopped.
	if s.rolledOver {
		st.TemplateHash = s.hash
	}
	switch {
	case s.stopped:
		// Pods asked to stop no longer count as active, although they may take a
		// while to finish their message in hand.
		st.Active, st.Ready = 0, 0
	case s.activeCounted:
		st.Active, st.Ready = int32(len(s.active)), ready(s.active)
	}

	if o := s.outcome; o != nil {
		set(o.condition, metav1.ConditionTrue, o.reason, o.message)
		if o.condition == mqv1alpha1.ConditionComplete {
			st.CompletionTime = &metav1.Time{Time: s.now}
		}
	}

	st.State = state(st.Conditions)
}

// state summarises the conditions for the Status column: Failed and Complete are
// final and win, then Suspended, then Ready.
func state(conds []metav1.Condition) mqv1alpha1.ConsumerState {
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

// finished reports whether the consumer's work ended in an earlier pass.
func finished(mc *mqv1alpha1.MessageConsumer) bool {
	return meta.IsStatusConditionTrue(mc.Status.Conditions, mqv1alpha1.ConditionComplete) ||
		meta.IsStatusConditionTrue(mc.Status.Conditions, mqv1alpha1.ConditionFailed)
}

// consumerStatus is the part of a MessageConsumer that patchStatus writes.
func consumerStatus(mc *mqv1alpha1.MessageConsumer) any { return mc.Status }
