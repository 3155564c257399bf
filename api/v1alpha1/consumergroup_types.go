package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Protocol is how a consumer group's clients consume.
// +kubebuilder:validation:Enum=HTTP;TCP
type Protocol string

const (
	// ProtocolHTTP groups are used through the mq-http SDKs; MessageConsumers
	// consume only through these.
	ProtocolHTTP Protocol = "HTTP"
	// ProtocolTCP groups are used through the RocketMQ TCP clients.
	ProtocolTCP Protocol = "TCP"
)

// ConsumerGroupSpec defines the desired state of a ConsumerGroup.
// +kubebuilder:validation:XValidation:rule="self.instanceRef == oldSelf.instanceRef",message="instanceRef is immutable: a group cannot move between instances"
// +kubebuilder:validation:XValidation:rule="has(self.groupId) == has(oldSelf.groupId) && (!has(self.groupId) || self.groupId == oldSelf.groupId)",message="groupId is immutable: applications address the group by it"
// +kubebuilder:validation:XValidation:rule="self.protocol == oldSelf.protocol",message="protocol is immutable: a group is used through one protocol"
type ConsumerGroupSpec struct {
	// instanceRef is the Instance the group belongs to.
	// +required
	InstanceRef InstanceReference `json:"instanceRef"`

	// groupId is the broker-side group id applications use (for example GID_orders);
	// it defaults to metadata.name.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=127
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_-]+$`
	GroupID string `json:"groupId,omitempty"`

	// protocol is HTTP (the mq-http SDKs) or TCP (the RocketMQ clients); a group is
	// used through one only.
	// +kubebuilder:default=HTTP
	// +optional
	Protocol Protocol `json:"protocol,omitempty"`

	// maxRedeliveries is how many times a message is delivered again before it goes
	// to the group's dead letters.
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxRedeliveries int32 `json:"maxRedeliveries,omitempty"`

	// deletionPolicy says whether deleting the ConsumerGroup deletes it and its
	// progress from the broker (Delete) or leaves it there (Retain).
	// +kubebuilder:default=Delete
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// TopicBacklog is a group's backlog on one topic.
type TopicBacklog struct {
	// topic is the broker-side topic name.
	Topic string `json:"topic"`
	// backlog is how many messages the group has not consumed yet.
	Backlog int64 `json:"backlog"`
	// inFlight is how many are handed out and not yet acknowledged.
	// +optional
	InFlight int64 `json:"inFlight,omitempty"`
}

// ConsumerGroupStatus defines the observed state of a ConsumerGroup.
type ConsumerGroupStatus struct {
	// observedGeneration is the generation this status describes; written on every
	// reconcile, whether or not it succeeded.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// groupId is the broker-side id in effect.
	// +optional
	GroupID string `json:"groupId,omitempty"`
	// backlog is the total over topics, and topics the per-topic detail.
	// +optional
	Backlog int64 `json:"backlog,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Topics []TopicBacklog `json:"topics,omitempty"`
	// deadLetters is how many messages wait in the group's dead letters.
	// +optional
	DeadLetters int64 `json:"deadLetters,omitempty"`
	// lastConsumeTime is when the group last consumed.
	// +optional
	LastConsumeTime *metav1.Time `json:"lastConsumeTime,omitempty"`
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

// ConsumerGroup is a consumer group of an Instance, declared in Git.
// +kubebuilder:validation:XValidation:rule="has(self.spec.groupId) || self.metadata.name.matches('^[a-zA-Z0-9_-]{1,127}$')",message="metadata.name is used as the group id and may hold only letters, digits, '_' and '-'; set spec.groupId to use another id"
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mqg;mqgroup,categories=orderly
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.instanceRef.name`
// +kubebuilder:printcolumn:name="Group",type=string,JSONPath=`.status.groupId`
// +kubebuilder:printcolumn:name="Protocol",type=string,JSONPath=`.spec.protocol`
// +kubebuilder:printcolumn:name="Backlog",type=integer,JSONPath=`.status.backlog`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Synced",type=string,JSONPath=`.status.conditions[?(@.type=="Synced")].status`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ConsumerGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec ConsumerGroupSpec `json:"spec"`
	// +optional
	Status ConsumerGroupStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// ConsumerGroupList contains a list of ConsumerGroup.
type ConsumerGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ConsumerGroup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ConsumerGroup{}, &ConsumerGroupList{})
}

// BrokerName is the group's broker-side id.
func (g *ConsumerGroup) BrokerName() string {
	if g.Spec.GroupID != "" {
		return g.Spec.GroupID
	}
	return g.Name
}

// GetConditions returns the group's status conditions.
func (g *ConsumerGroup) GetConditions() []metav1.Condition { return g.Status.Conditions }

// SetConditions replaces the group's status conditions.
func (g *ConsumerGroup) SetConditions(c []metav1.Condition) { g.Status.Conditions = c }
