package controllers

import (
	"strings"
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

func TestCheckPod(t *testing.T) {
	const (
		level   = "pod-security.kubernetes.io/enforce"
		version = "pod-security.kubernetes.io/enforce-version"
	)
	restricted := map[string]string{level: "restricted"}
	baseline := map[string]string{level: "baseline"}
	privileged := map[string]string{level: "privileged"}
	hostPath := func(s *corev1.PodSpec) {
		s.Volumes = append(s.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}})
	}
	hostNetwork := func(s *corev1.PodSpec) { s.HostNetwork = true }
	privilegedContainer := func(s *corev1.PodSpec) {
		s.HostPID = true
		s.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	}
	// Allowed by baseline, not by restricted.
	escalating := func(s *corev1.PodSpec) {
		s.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(true)}
	}
	rootUser := func(s *corev1.PodSpec) {
		s.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(false), RunAsUser: ptr.To[int64](0)}
	}
	sidecar := func(s *corev1.PodSpec) {
		s.Containers = append(s.Containers, corev1.Container{Name: "sidecar", Image: "busybox"})
	}
	projectedToken := func(s *corev1.PodSpec) {
		s.Volumes = append(s.Volumes, corev1.Volume{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}})
	}

	for _, tc := range []struct {
		name   string
		labels map[string]string
		mutate func(*corev1.PodSpec)
		// reason is the refusal's reason, "" when the pod is allowed; want are
		// substrings of its message.
		reason string
		want   []string
	}{
		{name: "plain template, no label", labels: nil},
		{name: "plain template, restricted", labels: restricted},
		{name: "plain template, restricted v1.25", labels: map[string]string{level: "restricted", version: "v1.25"}},
		{name: "privileged container, no label", mutate: privilegedContainer, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{`"restricted:latest"`, "no pod-security.kubernetes.io/enforce label", "privileged (container \"handler\"", "host namespaces (hostPID=true)"}},
		{name: "hostPath, restricted", labels: restricted, mutate: hostPath, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{`restricted volume types (volume "host" uses restricted volume type "hostPath")`}},
		{name: "hostNetwork, restricted", labels: restricted, mutate: hostNetwork, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{"host namespaces (hostNetwork=true)"}},
		{name: "hostPath, baseline", labels: baseline, mutate: hostPath, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{`"baseline:latest"`, "hostPath volumes"}},
		{name: "privilege escalation, restricted", labels: restricted, mutate: escalating, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{"allowPrivilegeEscalation != false (container \"handler\""}},
		{name: "privilege escalation, baseline", labels: baseline, mutate: escalating},
		{name: "root user, restricted", labels: restricted, mutate: rootUser, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{"runAsNonRoot != true", "runAsUser=0"}},
		{name: "root user, baseline", labels: baseline, mutate: rootUser},
		{name: "sidecar as written, restricted", labels: restricted, mutate: sidecar, reason: mqv1alpha1.ReasonPodSecurityViolation,
			want: []string{`container "sidecar"`}},
		{name: "everything, privileged", labels: privileged, mutate: func(s *corev1.PodSpec) {
			privilegedContainer(s)
			hostPath(s)
			hostNetwork(s)
		}},
		{name: "invalid level counts as restricted", labels: map[string]string{level: "open"}, mutate: hostNetwork,
			reason: mqv1alpha1.ReasonPodSecurityViolation, want: []string{`"restricted:latest"`, `pod-security.kubernetes.io/enforce="open" must be one of`}},
		{name: "invalid version counts as latest", labels: map[string]string{level: "baseline", version: "2"}, mutate: hostNetwork,
			reason: mqv1alpha1.ReasonPodSecurityViolation, want: []string{`"baseline:latest"`, `enforce-version="2"`}},
		{name: "projected token without a ServiceAccount", labels: privileged, mutate: projectedToken,
			reason: mqv1alpha1.ReasonServiceAccountNotNamed, want: []string{`Volume "token"`, "names no serviceAccountName"}},
		{name: "projected token of a named ServiceAccount", labels: restricted, mutate: func(s *corev1.PodSpec) {
			projectedToken(s)
			s.ServiceAccountName = "reader"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkPod("ns", tc.labels, testPod(t, tc.mutate))
			if err != nil {
				t.Fatal(err)
			}
			if tc.reason == "" {
				if got != nil {
					t.Fatalf("refused: %s: %s", got.reason, got.message)
				}
				return
			}
			if got == nil {
				t.Fatalf("allowed, want %s", tc.reason)
			}
			if got.reason != tc.reason {
				t.Errorf("reason %s, want %s (%s)", got.reason, tc.reason, got.message)
			}
			for _, w := range tc.want {
				if !strings.Contains(got.message, w) {
					t.Errorf("message %q does not contain %q", got.message, w)
				}
			}
		})
	}
}

// The parts the controller adds meet the restricted level by themselves, whatever
// the template's pod-level settings.
func TestInjectedPartsAreRestricted(t *testing.T) {
	for _, tc := range []struct {
		name string
		pod  *corev1.PodSecurityContext
		// nonRoot is whether the init container must say runAsNonRoot itself; it
		// cannot when the template runs the pod as root.
		nonRoot bool
	}{
		{name: "template sets nothing", nonRoot: true},
		{name: "template allows root and no seccomp", nonRoot: true, pod: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr.To(false), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}},
		{name: "template runs as a user", nonRoot: true, pod: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}},
		{name: "template runs as root", nonRoot: false, pod: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod(t, func(s *corev1.PodSpec) { s.SecurityContext = tc.pod })
			init := pod.Spec.InitContainers[0]
			if init.Name != "install-orderly-runtime" {
				t.Fatalf("first init container is %q", init.Name)
			}
			if init.SecurityContext.RunAsUser != nil {
				t.Errorf("runAsUser %d: the init container runs as the pod's user", *init.SecurityContext.RunAsUser)
			}
			if got := ptr.Deref(init.SecurityContext.RunAsNonRoot, false); got != tc.nonRoot {
				t.Errorf("runAsNonRoot %v, want %v", got, tc.nonRoot)
			}
			if !tc.nonRoot {
				return
			}
			// The init container alone, in a pod that says nothing itself.
			alone := &corev1.Pod{Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{init},
				Containers:     []corev1.Container{{Name: "noop", Image: "x", SecurityContext: init.SecurityContext}},
				Volumes:        pod.Spec.Volumes,
			}}
			if got, err := checkPod("ns", nil, alone); err != nil || got != nil {
				t.Fatalf("the init container alone: %v %+v", err, got)
			}
		})
	}
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
