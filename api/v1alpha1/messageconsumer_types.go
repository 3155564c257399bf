package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types and reasons of MessageConsumers, in Job's vocabulary.
const (
	// ConditionComplete is True once the consumer's work is done.
	ConditionComplete = "Complete"
	// ConditionFailed is True once the consumer gave up.
	ConditionFailed = "Failed"
	// ConditionSuspended is True while spec.suspend holds the pods off.
	ConditionSuspended = "Suspended"

	// ReasonBackoffLimitExceeded means more pods failed than spec.backoffLimit allows.
	ReasonBackoffLimitExceeded = "BackoffLimitExceeded"
	// ReasonDeadlineExceeded means spec.activeDeadlineSeconds passed.
	ReasonDeadlineExceeded = "DeadlineExceeded"
	// ReasonDrained means the group has nothing left on the topic and nothing in flight.
	ReasonDrained = "Drained"
	// ReasonMessagesHandled means spec.completionPolicy.messages were handled.
	ReasonMessagesHandled = "MessagesHandled"
	// ReasonWaitingForDependencies means the Instance, Topic or ConsumerGroup is
	// missing or not Ready.
	ReasonWaitingForDependencies = "WaitingForDependencies"
	// ReasonProtocolNotSupported means the group's protocol cannot run consumers yet.
	ReasonProtocolNotSupported = "ProtocolNotSupported"
	// ReasonPodSecurityViolation means the pods the template makes would violate the
	// Pod Security level the namespace enforces; none are created.
	ReasonPodSecurityViolation = "PodSecurityViolation"
	// ReasonServiceAccountNotNamed means the template mounts a ServiceAccount token
	// without naming the ServiceAccount; none are created.
	ReasonServiceAccountNotNamed = "ServiceAccountNotNamed"
	// ReasonParallelismCapped (with Ready=True) means the topic is ordered with fewer
	// queues than spec.parallelism: pods beyond the queue count would idle, so
	// status.effectiveParallelism is lower.
	ReasonParallelismCapped = "ParallelismCapped"
	// ReasonSuspended (with Suspended=True) means spec.suspend is true.
	ReasonSuspended = "Suspended"
	// ReasonResumed (with Suspended=False) means spec.suspend was set back to false.
	ReasonResumed = "Resumed"
)

// CompletionMode says when a MessageConsumer's work is done.
// +kubebuilder:validation:Enum=Drain;Messages;Forever
type CompletionMode string

const (
	// CompletionDrain completes once the group has consumed everything on the topic:
	// no backlog and nothing in flight.
	CompletionDrain CompletionMode = "Drain"
	// CompletionMessages completes once completionPolicy.messages were handled.
	CompletionMessages CompletionMode = "Messages"
	// CompletionForever never completes: a steady worker, whose failed pods are replaced.
	CompletionForever CompletionMode = "Forever"
)

// CompletionPolicy says when the work is done.
// +kubebuilder:validation:XValidation:rule="self.mode != 'Messages' || has(self.messages)",message="messages is required with mode Messages"
type CompletionPolicy struct {
	// mode is Drain (default), Messages or Forever.
	// +kubebuilder:default=Drain
	// +optional
	Mode CompletionMode `json:"mode,omitempty"`
	// messages to handle successfully, with mode Messages.
	// +kubebuilder:validation:Minimum=1
	// +optional
	Messages *int64 `json:"messages,omitempty"`
}

// LocalReference names an object in the same namespace.
type LocalReference struct {
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// MessageConsumerSpec defines the desired state of a MessageConsumer.
// +kubebuilder:validation:XValidation:rule="self.instanceRef == oldSelf.instanceRef && self.topic == oldSelf.topic && self.consumerGroupRef == oldSelf.consumerGroupRef",message="instanceRef, topic and consumerGroupRef are immutable: create another MessageConsumer"
// +kubebuilder:validation:XValidation:rule="self.completionPolicy == oldSelf.completionPolicy",message="completionPolicy is immutable"
type MessageConsumerSpec struct {
	// instanceRef is the Instance to consume from, in the MessageConsumer's namespace:
	// its pods read the AccessKey pair from the Instance's Secret.
	// +required
	InstanceRef LocalReference `json:"instanceRef"`

	// topic is the name of a Topic object of that Instance.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Topic string `json:"topic"`

	// consumerGroupRef names the ConsumerGroup whose progress the pods advance. Give
	// each MessageConsumer a group of its own: other consumers of the group share
	// its messages.
	// +required
	ConsumerGroupRef LocalReference `json:"consumerGroupRef"`

	// tagFilter selects messages by tag: "*" (default) or "A||B".
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	TagFilter string `json:"tagFilter,omitempty"`

	// template is the pod template. Its first container runs the handler: its
	// command (required, since the image's entrypoint cannot be read here) is run
	// once per message with the body on stdin and the metadata in ORDERLY_*
	// environment variables; exit code 0 acknowledges the message, anything else
	// leaves it for redelivery. restartPolicy is always Never: failed pods are
	// replaced, within backoffLimit. The pods must meet the Pod Security level the
	// namespace enforces (label pod-security.kubernetes.io/enforce, restricted when
	// unset), and they get a ServiceAccount token only when serviceAccountName names
	// the ServiceAccount.
	// +required
	Template corev1.PodTemplateSpec `json:"template"`

	// parallelism is how many pods run at once. On an ordered topic no two pods ever
	// hold messages of one queue, so pods beyond the queue count idle; status says so.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +optional
	Parallelism *int32 `json:"parallelism,omitempty"`

	// completionPolicy says when the work is done: Drain (default), Messages, Forever.
	// +kubebuilder:default={mode: Drain}
	// +optional
	CompletionPolicy CompletionPolicy `json:"completionPolicy,omitempty"`

	// handlerTimeoutSeconds bounds one run of the handler; a message whose handler
	// fails, times out, or whose pod dies comes back after this long.
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=43200
	// +optional
	HandlerTimeoutSeconds int32 `json:"handlerTimeoutSeconds,omitempty"`

	// backoffLimit is how many pods may fail before the MessageConsumer fails. A
	// handler failing on a message does not fail its pod: the message is redelivered
	// and, past the group's maxRedeliveries, dead-lettered.
	// +kubebuilder:default=6
	// +kubebuilder:validation:Minimum=0
	// +optional
	BackoffLimit *int32 `json:"backoffLimit,omitempty"`

	// activeDeadlineSeconds bounds the time from start; past it the pods are stopped
	// and the MessageConsumer fails with DeadlineExceeded.
	// +kubebuilder:validation:Minimum=1
	// +optional
	ActiveDeadlineSeconds *int64 `json:"activeDeadlineSeconds,omitempty"`

	// ttlSecondsAfterFinished deletes the MessageConsumer this long after it
	// completed or failed.
	// +kubebuilder:validation:Minimum=0
	// +optional
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// suspend stops the pods (each finishes its message in hand) and creates none
	// until it is false again. The active deadline restarts on resume, as Job's does.
	// +optional
	Suspend *bool `json:"suspend,omitempty"`
}

// ConsumerState summarises a MessageConsumer's conditions for `kubectl get`.
type ConsumerState string

const (
	// ConsumerWaiting: Ready is not True (a dependency is missing or not usable, or
	// the namespace refuses the pods), and no other state applies.
	ConsumerWaiting ConsumerState = "Waiting"
	// ConsumerRunning: Ready is True.
	ConsumerRunning ConsumerState = "Running"
	// ConsumerSuspended: Suspended is True.
	ConsumerSuspended ConsumerState = "Suspended"
	// ConsumerComplete: Complete is True.
	ConsumerComplete ConsumerState = "Complete"
	// ConsumerFailed: Failed is True; it wins over every other condition.
	ConsumerFailed ConsumerState = "Failed"
)

// ConsumerCounts count a MessageConsumer's messages.
type ConsumerCounts struct {
	// +optional
	MessagesHandled int64 `json:"messagesHandled,omitempty"`
	// +optional
	HandlerFailures int64 `json:"handlerFailures,omitempty"`
}

// MessageConsumerStatus defines the observed state of a MessageConsumer.
type MessageConsumerStatus struct {
	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// state summarises the conditions: Waiting (for the Instance, Topic or group),
	// Running, Suspended, Complete or Failed. The conditions are authoritative.
	// +optional
	State ConsumerState `json:"state,omitempty"`
	// active pods (created and not finished); ready of them are running.
	// +optional
	Active int32 `json:"active,omitempty"`
	// +optional
	Ready int32 `json:"ready,omitempty"`
	// succeeded and failed pods.
	// +optional
	Succeeded int32 `json:"succeeded,omitempty"`
	// +optional
	Failed int32 `json:"failed,omitempty"`
	// messagesHandled were acknowledged after the handler succeeded, and
	// handlerFailures are handler runs that failed: what the finished pods
	// reported when they ended, plus inProgress.
	// +optional
	MessagesHandled int64 `json:"messagesHandled,omitempty"`
	// +optional
	HandlerFailures int64 `json:"handlerFailures,omitempty"`
	// inProgress is the running pods' share of messagesHandled and
	// handlerFailures: what each reported to the broker with its latest consume
	// call, read every few seconds while pods run. A pod's share becomes its
	// final count when it finishes.
	// +optional
	InProgress *ConsumerCounts `json:"inProgress,omitempty"`
	// effectiveParallelism is how many pods can work at once: parallelism, capped
	// by the queue count on an ordered topic.
	// +optional
	EffectiveParallelism int32 `json:"effectiveParallelism,omitempty"`
	// startTime is when the pods were first started (again, after a resume).
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// completionTime is when the work completed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// countedPods are the UIDs of finished pods whose counts are in this status
	// while they still hold their tracking finalizer: a pod is counted once even if
	// it is seen again before the finalizer's removal shows.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=1000
	CountedPods []string `json:"countedPods,omitempty"`
	// templateHash identifies the pod template the active pods should run.
	// +optional
	TemplateHash string `json:"templateHash,omitempty"`
	// conditions: Complete, Failed, Suspended, Ready (the dependencies are usable
	// and the namespace's Pod Security level allows the pods).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MessageConsumer runs a handler over a topic's messages in pods, like a Job for a
// queue: until the topic is drained, until a number of messages is handled, or
// forever; in order on an ordered topic.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mqc;mqconsumer,categories=orderly
// +kubebuilder:validation:XValidation:rule="has(self.spec.template.spec.containers) && size(self.spec.template.spec.containers) > 0 && has(self.spec.template.spec.containers[0].command) && size(self.spec.template.spec.containers[0].command) > 0",message="spec.template.spec.containers[0].command is required: it is the handler the runtime runs for each message"
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Topic",type=string,JSONPath=`.spec.topic`
// +kubebuilder:printcolumn:name="Active",type=integer,JSONPath=`.status.active`
// +kubebuilder:printcolumn:name="Handled",type=integer,JSONPath=`.status.messagesHandled`
// +kubebuilder:printcolumn:name="Failures",type=integer,JSONPath=`.status.handlerFailures`,priority=1
// +kubebuilder:printcolumn:name="Start",type=date,JSONPath=`.status.startTime`,priority=1
// +kubebuilder:printcolumn:name="Completed",type=date,JSONPath=`.status.completionTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MessageConsumer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec MessageConsumerSpec `json:"spec"`
	// +optional
	Status MessageConsumerStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// MessageConsumerList contains a list of MessageConsumer.
type MessageConsumerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MessageConsumer `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MessageConsumer{}, &MessageConsumerList{})
}

// GetConditions returns the MessageConsumer's status conditions.
func (m *MessageConsumer) GetConditions() []metav1.Condition { return m.Status.Conditions }

// SetConditions replaces the MessageConsumer's status conditions.
func (m *MessageConsumer) SetConditions(c []metav1.Condition) { m.Status.Conditions = c }
