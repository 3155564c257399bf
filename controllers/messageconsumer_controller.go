package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
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
