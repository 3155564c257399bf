package controllers

import (
	"context"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// progressBroker answers WorkerProgress with fixed reports.
type progressBroker struct {
	ConsumerBroker
	reports map[string]broker.WorkerProgress
}

func (p progressBroker) WorkerProgress(string, string) (map[string]broker.WorkerProgress, error) {
	return p.reports, nil
}

// The totals a MessageConsumer shows while its pods run: finished pods' final
// counts plus what the running ones last reported. Passes over the same consumer
// as its pods work and finish must never show a total going backwards, though a
// pod's final count replaces its report in a pass that does not read the
// reports again.
func TestProgressTotalsNeverGoBackwards(t *testing.T) {
	tracked := func(uid string, phase corev1.PodPhase, handled, failed int64) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Finalizers: []string{TrackingFinalizer}},
			Status: corev1.PodStatus{Phase: phase}}
		if phase == corev1.PodSucceeded {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				Message: `{"handled":` + itoa(handled) + `,"failed":` + itoa(failed) + `}`}}}}
		}
		return p
	}
	deps := &dependencies{instance: &mqv1alpha1.Instance{}, group: &mqv1alpha1.ConsumerGroup{}}
	mc := &mqv1alpha1.MessageConsumer{}
	// pass runs account and readProgress over pods, as Reconcile does, and
	// returns the consumer with the status it would write.
	pass := func(reports map[string]broker.WorkerProgress, pods ...*corev1.Pod) (handled, failed int64) {
		t.Helper()
		r := &MessageConsumerReconciler{Broker: progressBroker{reports: reports}}
		s := newConsumerScope(mc.DeepCopy(), metav1.Now().Time)
		s.pods, s.deps = pods, deps
		if _, done, err := r.account(context.Background(), s); err != nil {
			t.Fatal(err)
		} else if !done {
			if _, _, err := r.readProgress(context.Background(), s); err != nil {
				t.Fatal(err)
			}
		}
		deriveStatus(s)
		mc.Status = s.mc.Status
		// Pods released after the pass lose their tracking finalizer.
		for _, p := range s.release {
			p.Finalizers = nil
		}
		return mc.Status.MessagesHandled, mc.Status.HandlerFailures
	}

	a, b := tracked("a", corev1.PodRunning, 0, 0), tracked("b", corev1.PodRunning, 0, 0)
	var last int64
	check := func(step string, handled, failed, wantHandled, wantFailed int64) {
		t.Helper()
		if handled != wantHandled || failed != wantFailed {
			t.Fatalf("%s: status shows %d handled, %d failed; want %d, %d", step, handled, failed, wantHandled, wantFailed)
		}
		if handled < last {
			t.Fatalf("%s: total went back from %d to %d", step, last, handled)
		}
		last = handled
	}
	h, f := pass(map[string]broker.WorkerProgress{"a": {Worker: "a", Handled: 10}, "b": {Worker: "b", Handled: 20, Failed: 1}}, a, b)
	check("both running", h, f, 30, 1)
	if mc.Status.InProgress == nil || mc.Status.InProgress.MessagesHandled != 30 {
		t.Fatalf("inProgress %+v", mc.Status.InProgress)
	}
	// a finishes with 12 handled, more than it last reported; the pass that
	// counts it does not read the reports.
	a = tracked("a", corev1.PodSucceeded, 12, 0)
	h, f = pass(nil, a, b)
	check("a counted", h, f, 30, 1)
	h, f = pass(map[string]broker.WorkerProgress{"a": {Worker: "a", Handled: 10}, "b": {Worker: "b", Handled: 25, Failed: 1}}, a, b)
	check("b read again", h, f, 37, 1)
	b = tracked("b", corev1.PodSucceeded, 26, 2)
	h, f = pass(nil, a, b)
	check("b counted", h, f, 38, 2)
	h, f = pass(nil, a, b)
	check("all finished", h, f, 38, 2)
	if mc.Status.InProgress != nil {
		t.Fatalf("inProgress %+v with no pod running", mc.Status.InProgress)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
