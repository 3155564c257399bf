package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Condition types and reasons of Topics and ConsumerGroups.
const (
	// ConditionSynced is True when the broker matched the spec at the last check;
	// False while it is being repaired after a change made outside the operator.
	ConditionSynced = "Synced"

	// ReasonInstanceNotReady means the referenced Instance is missing or not Ready.
	ReasonInstanceNotReady = "InstanceNotReady"
	// ReasonNameConflict means another object already declares the broker-side name.
	ReasonNameConflict = "NameConflict"
	// ReasonDriftRepaired means the broker differed from the spec and was repaired.
	ReasonDriftRepaired = "DriftRepaired"
	// ReasonInSync means the broker matched the spec.
	ReasonInSync = "InSync"
	// ReasonNamespaceNotAllowed means the referenced Instance is in another namespace
	// and its spec.allowedNamespaces does not list the referring one.
	ReasonNamespaceNotAllowed = "NamespaceNotAllowed"
	// ReasonQuotaExceeded means declaring the object would take its Instance past
	// one of spec.limits.
	ReasonQuotaExceeded = "QuotaExceeded"
	// ReasonPaused means the object carries the pause annotation.
	ReasonPaused = "Paused"
)

// DeletionPolicy says what happens in the broker when the object is deleted.
// +kubebuilder:validation:Enum=Delete;Retain
type DeletionPolicy string

const (
	// DeletionPolicyDelete removes the broker-side object and its messages.
	DeletionPolicyDelete DeletionPolicy = "Delete"
	// DeletionPolicyRetain leaves the broker-side object in place.
	DeletionPolicyRetain DeletionPolicy = "Retain"
)

// MessageType is what a topic carries.
// +kubebuilder:validation:Enum=Normal;Ordered;Transactional
type MessageType string

const (
	// MessageTypeNormal topics carry normal and timer messages, delivered in no
	// particular order.
	MessageTypeNormal MessageType = "Normal"
	// MessageTypeOrdered topics deliver each queue's messages in publish order; a
	// message's sharding key picks its queue, and queues=1 is global order.
	MessageTypeOrdered MessageType = "Ordered"
	// MessageTypeTransactional topics carry half messages that become visible when
	// their transaction commits.
	MessageTypeTransactional MessageType = "Transactional"
)

// InstanceReference names an Instance.
type InstanceReference struct {
	// name of the Instance.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// namespace of the Instance; it defaults to the referring object's own. An
	// Instance in another namespace serves the reference only if its
	// spec.allowedNamespaces lists the referring namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// Key is the Instance's namespaced name, seen from an object in namespace from.
func (r InstanceReference) Key(from string) types.NamespacedName {
	ns := r.Namespace
	if ns == "" {
		ns = from
	}
	return types.NamespacedName{Namespace: ns, Name: r.Name}
}

// PausedAnnotation set to "true" on a Topic or ConsumerGroup stops the operator from
// touching its broker-side object: nothing is declared, repaired or deleted until the
// annotation is removed. Deleting a paused object keeps the broker-side object, as
// deletionPolicy Retain would.
const PausedAnnotation = "mq.orderly.dev/paused"

// IsPaused reports whether obj carries the pause annotation.
func IsPaused(obj metav1.Object) bool { return obj.GetAnnotations()[PausedAnnotation] == "true" }

// TopicSpec defines the desired state of a Topic.
// +kubebuilder:validation:XValidation:rule="self.instanceRef == oldSelf.instanceRef",message="instanceRef is immutable: a topic cannot move between instances"
// +kubebuilder:validation:XValidation:rule="has(self.topicName) == has(oldSelf.topicName) && (!has(self.topicName) || self.topicName == oldSelf.topicName)",message="topicName is immutable: applications address the topic by it"
// +kubebuilder:validation:XValidation:rule="self.messageType == oldSelf.messageType",message="messageType is immutable: the broker cannot change a topic's type"
// +kubebuilder:validation:XValidation:rule="self.queues >= oldSelf.queues",message="queues may grow but never shrink"
type TopicSpec struct {
	// instanceRef is the Instance the topic belongs to.
	// +required
	InstanceRef InstanceReference `json:"instanceRef"`

	// topicName is the broker-side name applications use; it defaults to
	// metadata.name, so names like TopicA or MQ_ORDER from existing code can be kept.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=127
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_-]+$`
	TopicName string `json:"topicName,omitempty"`

	// messageType is Normal, Ordered (queues=1 is global order, more are partitions
	// by sharding key) or Transactional.
	// +kubebuilder:default=Normal
	// +optional
	MessageType MessageType `json:"messageType,omitempty"`

	// queues is the number of queues (partitions). It may grow, never shrink.
	// +kubebuilder:default=8
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	// +optional
	Queues int32 `json:"queues,omitempty"`

	// retentionHours is how long messages stay deliverable.
	// +kubebuilder:default=72
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8760
	// +optional
	RetentionHours int32 `json:"retentionHours,omitempty"`

	// deletionPolicy says whether deleting the Topic deletes it, and its messages,
	// from the broker (Delete) or leaves it there (Retain).
	// +kubebuilder:default=Delete
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// TopicStatus defines the observed state of a Topic.
type TopicStatus struct {
	// observedGeneration is the generation this status describes; written on every
	// reconcile, whether or not it succeeded.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// topicName is the broker-side name in effect.
	// +optional
	TopicName string `json:"topicName,omitempty"`
	// queues in the broker.
	// +optional
	Queues int32 `json:"queues,omitempty"`
	// messages deliverable, and their bytes, as of lastSyncTime.
	// +optional
	Messages int64 `json:"messages,omitempty"`
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
	// lastSyncTime is when the broker was last compared with the spec.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`
	// conditions: Ready, and Synced.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Topic is a topic of an Instance, declared in Git.
// +kubebuilder:validation:XValidation:rule="has(self.spec.topicName) || self.metadata.name.matches('^[a-zA-Z0-9_-]{1,127}$')",message="metadata.name is used as the topic name and may hold only letters, digits, '_' and '-'; set spec.topicName to use another name"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mqt;mqtopic,categories=orderly
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.instanceRef.name`
// +kubebuilder:printcolumn:name="Topic",type=string,JSONPath=`.status.topicName`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.messageType`
// +kubebuilder:printcolumn:name="Queues",type=integer,JSONPath=`.status.queues`
// +kubebuilder:printcolumn:name="Messages",type=integer,JSONPath=`.status.messages`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Synced",type=string,JSONPath=`.status.conditions[?(@.type=="Synced")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Topic struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec TopicSpec `json:"spec"`
	// +optional
	Status TopicStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// TopicList contains a list of Topic.
type TopicList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Topic `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Topic{}, &TopicList{})
}

// BrokerName is the topic's broker-side name.
func (t *Topic) BrokerName() string {
	if t.Spec.TopicName != "" {
		return t.Spec.TopicName
	}
	return t.Name
}

// GetConditions returns the Topic's status conditions.
func (t *Topic) GetConditions() []metav1.Condition { return t.Status.Conditions }

// SetConditions replaces the Topic's status conditions.
func (t *Topic) SetConditions(c []metav1.Condition) { t.Status.Conditions = c }
