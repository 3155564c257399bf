package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/consumer"
)

// podFor builds a pod from the template: the init container installs the runtime,
// the first container's command is wrapped by it, and the configuration and
// credentials are in its environment (the credentials by reference to the
// Instance's Secret, never by value).
func (r *MessageConsumerReconciler) podFor(mc *mqv1alpha1.MessageConsumer, deps dependencies, hash string, budget int64) (*corev1.Pod, error) {
	tmpl := mc.Spec.Template.DeepCopy()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: mc.Namespace, GenerateName: mc.Name + "-",
		Labels: tmpl.Labels, Annotations: tmpl.Annotations, Finalizers: []string{TrackingFinalizer},
	}, Spec: tmpl.Spec}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[ConsumerLabel] = mc.Name
	pod.Labels[TemplateHashLabel] = hash
	if budget > 0 {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[BudgetAnnotation] = strconv.FormatInt(budget, 10)
	}
	spec := &pod.Spec
	spec.RestartPolicy = corev1.RestartPolicyNever
	// A pod runs as a ServiceAccount only if the template names it. Otherwise the
	// apiserver would fall back to the namespace's "default" ServiceAccount and mount
	// its token: credentials that whoever wrote the template was never given.
	if spec.ServiceAccountName == "" && spec.DeprecatedServiceAccount == "" {
		spec.AutomountServiceAccountToken = ptr.To(false)
	}
	if spec.SecurityContext == nil {
		spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	if spec.SecurityContext.RunAsNonRoot == nil {
		spec.SecurityContext.RunAsNonRoot = ptr.To(true)
	}
	if spec.SecurityContext.SeccompProfile == nil {
		spec.SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	}
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: RuntimeVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	// The init container meets the restricted level on its own, whatever the
	// template's pod-level settings: it only copies a file. It runs as the pod's user
	// (the operator image's non-root user when the template names none, so that a
	// platform assigning users, as OpenShift does, still can), and it is non-root
	// unless the template runs the whole pod as root, which only a baseline or
	// privileged namespace allows: the kubelet would refuse to start it otherwise.
	runtimeSC := &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	if ptr.Deref(spec.SecurityContext.RunAsUser, -1) != 0 {
		runtimeSC.RunAsNonRoot = ptr.To(true)
	}
	spec.InitContainers = append([]corev1.Container{{
		Name: "install-orderly-runtime", Image: r.RuntimeImage,
		Command:         []string{"/orderly", "install-runtime", RuntimePath},
		VolumeMounts:    []corev1.VolumeMount{{Name: RuntimeVolume, MountPath: RuntimeDir}},
		SecurityContext: restrictedContainer(runtimeSC),
	}}, spec.InitContainers...)

	c := &spec.Containers[0]
	c.Command = append([]string{RuntimePath, "consume", "--"}, append(c.Command, c.Args...)...)
	c.Args = nil
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: RuntimeVolume, MountPath: RuntimeDir, ReadOnly: true})
	c.SecurityContext = restrictedContainer(c.SecurityContext)
	c.TerminationMessagePath = corev1.TerminationMessagePathDefault
	secret := deps.instance.Status.CredentialsSecret
	secretRef := func(key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}
	}
	mode := mc.Spec.CompletionPolicy.Mode
	if mode == "" {
		mode = mqv1alpha1.CompletionDrain
	}
	env := []corev1.EnvVar{
		{Name: consumer.EnvEndpoint, ValueFrom: secretRef(mqv1alpha1.SecretKeyHTTPEndpoint)},
		{Name: consumer.EnvInstanceID, ValueFrom: secretRef(mqv1alpha1.SecretKeyInstanceID)},
		{Name: consumer.EnvAccessKeyID, ValueFrom: secretRef(mqv1alpha1.SecretKeyAccessKeyID)},
		{Name: consumer.EnvAccessKeySecret, ValueFrom: secretRef(mqv1alpha1.SecretKeyAccessKeySecret)},
		// Present when the endpoints serve TLS with a CA of their own.
		{Name: consumer.EnvCACert, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: mqv1alpha1.SecretKeyCACert, Optional: ptr.To(true)}}},
		{Name: consumer.EnvTopic, Value: deps.topic.Status.TopicName},
		{Name: consumer.EnvGroup, Value: deps.group.Status.GroupID},
		{Name: consumer.EnvTagFilter, Value: mc.Spec.TagFilter},
		{Name: consumer.EnvOrdered, Value: strconv.FormatBool(deps.topic.Spec.MessageType == mqv1alpha1.MessageTypeOrdered)},
		{Name: consumer.EnvMode, Value: string(mode)},
		{Name: consumer.EnvHandlerTimeout, Value: strconv.Itoa(int(mc.Spec.HandlerTimeoutSeconds))},
		{Name: consumer.EnvTerminationLog, Value: corev1.TerminationMessagePathDefault},
		// The runtime names itself by the pod's UID in the progress it reports.
		{Name: consumer.EnvWorker, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
	}
	if budget > 0 {
		env = append(env, corev1.EnvVar{Name: consumer.EnvMaxMessages, Value: strconv.FormatInt(budget, 10)})
	}
	c.Env = append(env, c.Env...)
	if err := controllerutil.SetControllerReference(mc, pod, r.Scheme); err != nil {
		return nil, err
	}
	return pod, nil
}

// restrictedContainer fills in what the user left unset with the restricted
// defaults: a read-only root filesystem, no privilege escalation, no capabilities.
func restrictedContainer(sc *corev1.SecurityContext) *corev1.SecurityContext {
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.ReadOnlyRootFilesystem == nil {
		sc.ReadOnlyRootFilesystem = ptr.To(true)
	}
	if sc.AllowPrivilegeEscalation == nil {
		sc.AllowPrivilegeEscalation = ptr.To(false)
	}
	if sc.Capabilities == nil {
		sc.Capabilities = &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}
	}
	return sc
}

// podSecurity evaluates pods with the checks the apiserver's PodSecurity admission
// runs by default. It is built once and only read after that.
var podSecurity = sync.OnceValues(func() (policy.Evaluator, error) {
	e, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return nil, fmt.Errorf("failed to build the Pod Security evaluator: %w", err)
	}
	return e, nil
})

// refusal is why the controller creates none of a MessageConsumer's pods.
type refusal struct {
	reason, message string
}

// admit builds a pod exactly as startPods would create it and checks it; it
// returns nil if the pod may be created. The pods differ only in their budget
// annotation and variable, which no check reads.
func (r *MessageConsumerReconciler) admit(ctx context.Context, mc *mqv1alpha1.MessageConsumer, deps dependencies, hash string) (*refusal, error) {
	pod, err := r.podFor(mc, deps, hash, 0)
	if err != nil {
		return nil, err
	}
	// The namespace's labels come from the manager's metadata-only cache of
	// Namespaces, which the controller watches for relabelling.
	ns := &metav1.PartialObjectMetadata{}
	ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	if err := r.Get(ctx, client.ObjectKey{Name: mc.Namespace}, ns); err != nil {
		return nil, fmt.Errorf("failed to read namespace %s: %w", mc.Namespace, err)
	}
	return checkPod(ns.Name, ns.Labels, pod)
}

// checkPod checks a pod the controller would create in a namespace with these
// labels: against the namespace's Pod Security level, as the apiserver's PodSecurity
// admission would, and for a ServiceAccount token that the template mounts without
// naming the ServiceAccount. It returns nil if the pod may be created.
func checkPod(namespace string, nsLabels map[string]string, pod *corev1.Pod) (*refusal, error) {
	if pod.Spec.ServiceAccountName == "" && pod.Spec.DeprecatedServiceAccount == "" {
		for _, v := range pod.Spec.Volumes {
			if v.Projected == nil {
				continue
			}
			for _, src := range v.Projected.Sources {
				if src.ServiceAccountToken != nil {
					return &refusal{mqv1alpha1.ReasonServiceAccountNotNamed, fmt.Sprintf(
						"Volume %q projects a ServiceAccount token, but the template names no serviceAccountName: name the ServiceAccount the pods are to run as", v.Name)}, nil
				}
			}
		}
	}
	lv, note := podSecurityLevel(nsLabels)
	e, err := podSecurity()
	if err != nil {
		return nil, err
	}
	res := policy.AggregateCheckResults(e.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec))
	if res.Allowed {
		return nil, nil
	}
	// The checks' details name containers, volumes, ports, capabilities and
	// profiles, never an environment variable's value.
	return &refusal{mqv1alpha1.ReasonPodSecurityViolation, fmt.Sprintf(
		"Pods would violate PodSecurity %q of namespace %s%s: %s. No pods are created until the template conforms or the namespace's %s label allows them",
		lv.String(), namespace, note, res.ForbiddenDetail(), api.EnforceLevelLabel)}, nil
}

// podSecurityLevel is the Pod Security level and version a namespace enforces: its
// pod-security.kubernetes.io/enforce and enforce-version labels, restricted and
// latest when unset. A value that does not parse counts as restricted or latest, as
// it does for the apiserver's admission; the note says so.
func podSecurityLevel(nsLabels map[string]string) (api.LevelVersion, string) {
	lv := api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}
	var notes []string
	if v, ok := nsLabels[api.EnforceLevelLabel]; ok {
		level, err := api.ParseLevel(v)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s=%q %v", api.EnforceLevelLabel, v, err))
		}
		lv.Level = level
	}
	if v, ok := nsLabels[api.EnforceVersionLabel]; ok {
		version, err := api.ParseVersion(v)
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s=%q %v", api.EnforceVersionLabel, v, err))
		}
		lv.Version = version
	}
	if len(notes) == 0 {
		if _, ok := nsLabels[api.EnforceLevelLabel]; !ok {
			return lv, " (no " + api.EnforceLevelLabel + " label: restricted applies)"
		}
		return lv, ""
	}
	return lv, " (invalid labels: " + strings.Join(notes, "; ") + ")"
}

func isTerminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func ready(pods []*corev1.Pod) int32 {
	var n int32
	for _, p := range pods {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n
}

// templateHash identifies what a pod is made from: the template and the settings
// the runtime reads.
func templateHash(mc *mqv1alpha1.MessageConsumer) string {
	h := fnv.New32a()
	b, _ := json.Marshal(struct {
		T   corev1.PodTemplateSpec
		Tag string
		TO  int32
	}{mc.Spec.Template, mc.Spec.TagFilter, mc.Spec.HandlerTimeoutSeconds})
	h.Write(b)
	return strconv.FormatUint(uint64(h.Sum32()), 36)
}
