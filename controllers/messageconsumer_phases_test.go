package controllers

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
)

// TestRunPhases: phases run in order until one fails or ends the pass; the pass
// requeues after the soonest delay asked for, unless a phase ends it, whose result
// then stands alone.
func TestRunPhases(t *testing.T) {
	var ran []string
	phase := func(name string, after time.Duration, done bool, err error) consumerPhase {
		return func(context.Context, *consumerScope) (ctrl.Result, bool, error) {
			ran = append(ran, name)
			return ctrl.Result{RequeueAfter: after}, done, err
		}
	}
	failed := errors.New("failed")
	for _, tc := range []struct {
		name    string
		phases  []consumerPhase
		want    ctrl.Result
		wantErr error
		wantRan []string
	}{
		{"the soonest requeue", []consumerPhase{phase("a", 5*time.Second, false, nil), phase("b", 0, false, nil), phase("c", 2*time.Second, false, nil)},
			ctrl.Result{RequeueAfter: 2 * time.Second}, nil, []string{"a", "b", "c"}},
		{"a phase ends the pass", []consumerPhase{phase("a", 2*time.Second, false, nil), phase("b", 7*time.Second, true, nil), phase("c", time.Second, false, nil)},
			ctrl.Result{RequeueAfter: 7 * time.Second}, nil, []string{"a", "b"}},
		{"a phase fails", []consumerPhase{phase("a", time.Second, false, nil), phase("b", 0, false, failed), phase("c", 0, false, nil)},
			ctrl.Result{}, failed, []string{"a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran = nil
			got, err := runPhases(context.Background(), &consumerScope{}, tc.phases...)
			if got != tc.want || !errors.Is(err, tc.wantErr) || !slices.Equal(ran, tc.wantRan) {
				t.Errorf("ran %v, returned %+v, %v; want %v, %+v, %v", ran, got, err, tc.wantRan, tc.want, tc.wantErr)
			}
		})
	}
}

// TestCountFinished: each finished pod that holds the tracking finalizer is counted
// once, and released; a pod stopped by a deletion is no failure.
func TestCountFinished(t *testing.T) {
	now := metav1.Now()
	pod := func(uid string, phase corev1.PodPhase, tracked bool, result string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: uid, UID: types.UID(uid)}, Status: corev1.PodStatus{Phase: phase}}
		if tracked {
			p.Finalizers = []string{TrackingFinalizer}
		}
		if result != "" {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: result}}}}
		}
		return p
	}
	stopped := pod("stopped", corev1.PodFailed, true, `{"handled":1}`)
	stopped.DeletionTimestamp = &now
	pods := []*corev1.Pod{
		pod("running", corev1.PodRunning, true, ""),
		pod("succeeded", corev1.PodSucceeded, true, `{"handled":4,"failed":1}`),
		pod("failed", corev1.PodFailed, true, ""),
		stopped,
		pod("counted", corev1.PodSucceeded, true, `{"handled":100}`), // counted in an earlier pass
		pod("released", corev1.PodSucceeded, false, `{"handled":100}`),
	}
	counts := podCounts{succeeded: 1, messagesHandled: 100, countedPods: []string{"counted", "gone", "released"}}
	release := countFinished(&counts, pods)

	want := podCounts{succeeded: 2, failed: 1, messagesHandled: 105, handlerFailures: 1,
		countedPods: []string{"counted", "failed", "stopped", "succeeded"}}
	if !reflect.DeepEqual(counts, want) {
		t.Errorf("counts %+v, want %+v", counts, want)
	}
	var names []string
	for _, p := range release {
		names = append(names, p.Name)
	}
	if want := []string{"succeeded", "failed", "stopped", "counted"}; !slices.Equal(names, want) {
		t.Errorf("released %v, want %v", names, want)
	}
}
