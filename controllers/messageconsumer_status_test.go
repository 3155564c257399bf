package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/utils/ptr"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
)

// TestDeriveStatus runs deriveStatus over what a pass may have found, without an
// apiserver: each case is a consumer as read, the findings its phases recorded, and
// how the status read must change.
func TestDeriveStatus(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	now := t0.Add(time.Hour)
	const readyMsg = "Instance, Topic and ConsumerGroup are Ready"
	// read is a consumer at generation 3 whose last pass saw generation 2 running.
	read := func() *mqv1alpha1.MessageConsumer {
		return &mqv1alpha1.MessageConsumer{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mc", Generation: 3},
			Spec: mqv1alpha1.MessageConsumerSpec{Topic: "work", Parallelism: ptr.To[int32](3),
				CompletionPolicy: mqv1alpha1.CompletionPolicy{Mode: mqv1alpha1.CompletionDrain}},
			Status: mqv1alpha1.MessageConsumerStatus{
				ObservedGeneration: 2, State: mqv1alpha1.ConsumerRunning,
				Active: 2, Ready: 1, Succeeded: 1, Failed: 1, MessagesHandled: 10, HandlerFailures: 2,
				EffectiveParallelism: 3, StartTime: &t0, TemplateHash: "old", CountedPods: []string{"uid-1"},
				Conditions: []metav1.Condition{{Type: mqv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
					Reason: mqv1alpha1.ReasonReconciled, Message: readyMsg, ObservedGeneration: 2, LastTransitionTime: t0}},
			},
		}
	}
	topic := func(typ mqv1alpha1.MessageType, queues int32) *dependencies {
		return &dependencies{
			instance: &mqv1alpha1.Instance{}, group: &mqv1alpha1.ConsumerGroup{},
			topic: &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Name: "work"},
				Spec: mqv1alpha1.TopicSpec{MessageType: typ}, Status: mqv1alpha1.TopicStatus{Queues: queues}},
		}
	}
	pod := func(ready bool) *corev1.Pod {
		p := &corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		if ready {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		}
		return p
	}
	// running records what a pass over a consumer that goes on running finds.
	running := func(s *consumerScope) {
		s.deps, s.checked, s.hash = topic(mqv1alpha1.MessageTypeNormal, 8), true, "new"
		s.startTime = s.mc.Status.StartTime
		s.rolledOver, s.activeCounted, s.active = true, true, []*corev1.Pod{pod(true), pod(true), pod(false)}
	}
	cond := func(typ string, status metav1.ConditionStatus, reason, msg string, at time.Time) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: 3, LastTransitionTime: metav1.NewTime(at)}
	}
	readyAgain := cond(mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, readyMsg, t0.Time)

	for _, tc := range []struct {
		name  string
		read  func(*mqv1alpha1.MessageConsumer) // changes to the consumer as read
		found func(*consumerScope)              // what the phases recorded
		want  func(*mqv1alpha1.MessageConsumerStatus)
	}{{
		name:  "nothing found: the pods could not be listed",
		found: func(*consumerScope) {},
		want:  func(*mqv1alpha1.MessageConsumerStatus) {},
	}, {
		name: "pods finished since the last pass are counted",
		found: func(s *consumerScope) {
			s.counts = podCounts{succeeded: 2, failed: 1, messagesHandled: 15, handlerFailures: 3, countedPods: []string{"uid-1", "uid-2"}}
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Succeeded, st.MessagesHandled, st.HandlerFailures, st.CountedPods = 2, 15, 3, []string{"uid-1", "uid-2"}
		},
	}, {
		name: "the running pods' share is added to the finished pods' counts",
		found: func(s *consumerScope) {
			s.progress = mqv1alpha1.ConsumerCounts{MessagesHandled: 4, HandlerFailures: 1}
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.MessagesHandled, st.HandlerFailures = 14, 3
			st.InProgress = &mqv1alpha1.ConsumerCounts{MessagesHandled: 4, HandlerFailures: 1}
		},
	}, {
		name: "waiting for a dependency keeps the pods as they were",
		found: func(s *consumerScope) {
			s.waiting = &refusal{mqv1alpha1.ReasonWaitingForDependencies, `Topic "work" is not Ready`}
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{cond(mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonWaitingForDependencies, `Topic "work" is not Ready`, now)}
			st.State = mqv1alpha1.ConsumerWaiting
		},
	}, {
		name: "a refused template",
		found: func(s *consumerScope) {
			running(s)
			s.refused = &refusal{mqv1alpha1.ReasonPodSecurityViolation, "Pods would violate PodSecurity"}
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{cond(mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonPodSecurityViolation, "Pods would violate PodSecurity", now)}
			st.State = mqv1alpha1.ConsumerWaiting
			st.TemplateHash, st.Active, st.Ready = "new", 3, 2
		},
	}, {
		name:  "running: the pods of the current template are counted",
		found: running,
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{readyAgain}
			st.TemplateHash, st.Active, st.Ready = "new", 3, 2
		},
	}, {
		name: "parallelism capped by an ordered topic's queues",
		found: func(s *consumerScope) {
			running(s)
			s.deps = topic(mqv1alpha1.MessageTypeOrdered, 2)
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{cond(mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonParallelismCapped,
				"Topic work is ordered with 2 queues: no two pods hold one queue, so at most 2 of the 3 pods can work", t0.Time)}
			st.EffectiveParallelism = 2
			st.TemplateHash, st.Active, st.Ready = "new", 3, 2
		},
	}, {
		name: "a first start",
		read: func(mc *mqv1alpha1.MessageConsumer) { mc.Status = mqv1alpha1.MessageConsumerStatus{} },
		found: func(s *consumerScope) {
			running(s)
			s.startTime, s.active = &metav1.Time{Time: now}, nil
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{cond(mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled, readyMsg, now)}
			st.State, st.EffectiveParallelism, st.StartTime, st.TemplateHash = mqv1alpha1.ConsumerRunning, 3, &metav1.Time{Time: now}, "new"
		},
	}, {
		name: "suspended: the pods stop and the start time goes",
		found: func(s *consumerScope) {
			s.deps, s.checked, s.hash = topic(mqv1alpha1.MessageTypeNormal, 8), true, "new"
			s.suspended, s.stopped = true, true
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{readyAgain, cond(mqv1alpha1.ConditionSuspended, metav1.ConditionTrue, mqv1alpha1.ReasonSuspended,
				"spec.suspend is true; pods finish the message in hand and stop", now)}
			st.State, st.StartTime, st.Active, st.Ready = mqv1alpha1.ConsumerSuspended, nil, 0, 0
		},
	}, {
		name: "resumed: the deadline starts again",
		read: func(mc *mqv1alpha1.MessageConsumer) {
			mc.Status.StartTime, mc.Status.Active, mc.Status.Ready = nil, 0, 0
			mc.Status.Conditions = append(mc.Status.Conditions, metav1.Condition{Type: mqv1alpha1.ConditionSuspended, Status: metav1.ConditionTrue,
				Reason: mqv1alpha1.ReasonSuspended, ObservedGeneration: 2, LastTransitionTime: t0})
		},
		found: func(s *consumerScope) {
			running(s)
			s.startTime, s.active = &metav1.Time{Time: now}, nil
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{readyAgain, cond(mqv1alpha1.ConditionSuspended, metav1.ConditionFalse, mqv1alpha1.ReasonResumed, "spec.suspend is false", now)}
			st.StartTime, st.TemplateHash = &metav1.Time{Time: now}, "new"
		},
	}, {
		name: "past the deadline: failed before any rollover",
		found: func(s *consumerScope) {
			s.deps, s.checked, s.hash, s.startTime = topic(mqv1alpha1.MessageTypeNormal, 8), true, "new", s.mc.Status.StartTime
			s.outcome = &outcome{mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonDeadlineExceeded, "Active for longer than activeDeadlineSeconds (60)"}
			s.stopped = true
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{readyAgain, cond(mqv1alpha1.ConditionFailed, metav1.ConditionTrue, mqv1alpha1.ReasonDeadlineExceeded,
				"Active for longer than activeDeadlineSeconds (60)", now)}
			st.State, st.Active, st.Ready = mqv1alpha1.ConsumerFailed, 0, 0
		},
	}, {
		name: "drained: complete, with a completion time",
		found: func(s *consumerScope) {
			running(s)
			s.outcome = &outcome{mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonDrained, "Group GID_work has consumed everything on topic MQ_WORK"}
			s.stopped = true
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Conditions = []metav1.Condition{readyAgain, cond(mqv1alpha1.ConditionComplete, metav1.ConditionTrue, mqv1alpha1.ReasonDrained,
				"Group GID_work has consumed everything on topic MQ_WORK", now)}
			st.State, st.CompletionTime, st.TemplateHash, st.Active, st.Ready = mqv1alpha1.ConsumerComplete, &metav1.Time{Time: now}, "new", 0, 0
		},
	}, {
		name: "finished in an earlier pass: what is left of the pods stops, nothing else changes",
		read: func(mc *mqv1alpha1.MessageConsumer) {
			mc.Status.CompletionTime = &t0
			mc.Status.Conditions = append(mc.Status.Conditions, metav1.Condition{Type: mqv1alpha1.ConditionComplete, Status: metav1.ConditionTrue,
				Reason: mqv1alpha1.ReasonDrained, ObservedGeneration: 2, LastTransitionTime: t0})
		},
		found: func(s *consumerScope) { s.stopped = true },
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.State, st.Active, st.Ready = mqv1alpha1.ConsumerComplete, 0, 0
		},
	}, {
		name: "a deleted consumer's pods stop",
		read: func(mc *mqv1alpha1.MessageConsumer) { mc.DeletionTimestamp = &t0 },
		found: func(s *consumerScope) {
			s.counts.succeeded = 2
			s.stopped, s.removeFinalizer = true, true
		},
		want: func(st *mqv1alpha1.MessageConsumerStatus) {
			st.Succeeded, st.Active, st.Ready = 2, 0, 0
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			mc := read()
			if tc.read != nil {
				tc.read(mc)
			}
			want := mc.Status.DeepCopy()
			want.ObservedGeneration = mc.Generation // on every pass
			tc.want(want)

			s := newConsumerScope(mc, now)
			tc.found(s)
			deriveStatus(s)
			if !equality.Semantic.DeepEqual(*want, mc.Status) {
				t.Errorf("status (-want +got):\n%s", diff.Diff(*want, mc.Status))
			}
		})
	}
}

// TestState: the Failed and Complete conditions are final and win over the others,
// then Suspended, then Ready.
func TestState(t *testing.T) {
	c := func(typ string, status metav1.ConditionStatus) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status}
	}
	for _, tc := range []struct {
		conds []metav1.Condition
		want  mqv1alpha1.ConsumerState
	}{
		{nil, mqv1alpha1.ConsumerWaiting},
		{[]metav1.Condition{c(mqv1alpha1.ConditionReady, metav1.ConditionFalse)}, mqv1alpha1.ConsumerWaiting},
		{[]metav1.Condition{c(mqv1alpha1.ConditionReady, metav1.ConditionTrue)}, mqv1alpha1.ConsumerRunning},
		{[]metav1.Condition{c(mqv1alpha1.ConditionReady, metav1.ConditionTrue), c(mqv1alpha1.ConditionSuspended, metav1.ConditionFalse)}, mqv1alpha1.ConsumerRunning},
		{[]metav1.Condition{c(mqv1alpha1.ConditionReady, metav1.ConditionFalse), c(mqv1alpha1.ConditionSuspended, metav1.ConditionTrue)}, mqv1alpha1.ConsumerSuspended},
		{[]metav1.Condition{c(mqv1alpha1.ConditionSuspended, metav1.ConditionTrue), c(mqv1alpha1.ConditionComplete, metav1.ConditionTrue)}, mqv1alpha1.ConsumerComplete},
		{[]metav1.Condition{c(mqv1alpha1.ConditionComplete, metav1.ConditionTrue), c(mqv1alpha1.ConditionFailed, metav1.ConditionTrue)}, mqv1alpha1.ConsumerFailed},
	} {
		if got := state(tc.conds); got != tc.want {
			t.Errorf("state(%v) = %s, want %s", tc.conds, got, tc.want)
		}
	}
}
