package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
)

// testPod builds the pod the controller would create from a template, as podFor
// builds it, without an apiserver.
func testPod(t *testing.T, mutate func(*corev1.PodSpec)) *corev1.Pod {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := mqv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	mc := &mqv1alpha1.MessageConsumer{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "mc", UID: "uid"},
		Spec: mqv1alpha1.MessageConsumerSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "handler", Image: "busybox", Command: []string{"sh", "-c", "cat"}}},
		}}},
	}
	if mutate != nil {
		mutate(&mc.Spec.Template.Spec)
	}
	deps := dependencies{
		instance: &mqv1alpha1.Instance{Status: mqv1alpha1.InstanceStatus{CredentialsSecret: "demo-credentials"}},
		topic:    &mqv1alpha1.Topic{},
		group:    &mqv1alpha1.ConsumerGroup{},
	}
	r := &MessageConsumerReconciler{Scheme: scheme, RuntimeImage: "orderly:test"}
	pod, err := r.podFor(mc, deps, "hash", 0)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

func TestServiceAccountOnlyWhenNamed(t *testing.T) {
	pod := testPod(t, func(s *corev1.PodSpec) { s.AutomountServiceAccountToken = ptr.To(true) })
	if pod.Spec.ServiceAccountName != "" || !ptr.Equal(pod.Spec.AutomountServiceAccountToken, ptr.To(false)) {
		t.Errorf("unnamed: serviceAccountName %q, automount %v; want none, false", pod.Spec.ServiceAccountName, pod.Spec.AutomountServiceAccountToken)
	}
	pod = testPod(t, func(s *corev1.PodSpec) { s.ServiceAccountName = "reader" })
	if pod.Spec.ServiceAccountName != "reader" || pod.Spec.AutomountServiceAccountToken != nil {
		t.Errorf("named: serviceAccountName %q, automount %v; want reader, unset", pod.Spec.ServiceAccountName, pod.Spec.AutomountServiceAccountToken)
	}
	pod = testPod(t, func(s *corev1.PodSpec) {
		s.ServiceAccountName = "reader"
		s.AutomountServiceAccountToken = ptr.To(false)
	})
	if !ptr.Equal(pod.Spec.AutomountServiceAccountToken, ptr.To(false)) {
		t.Errorf("named without a token: automount %v, want false", pod.Spec.AutomountServiceAccountToken)
	}
}
