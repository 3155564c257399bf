package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types and reasons shared by every kind in this group.
const (
	// ConditionReady is True when the object's desired state is in effect in the broker.
	ConditionReady = "Ready"

	// ReasonReconciled means the broker holds what the spec declares.
	ReasonReconciled = "Reconciled"
	// ReasonBrokerError means a broker call failed; the message carries the broker's error.
	ReasonBrokerError = "BrokerError"
	// ReasonSecretConflict means a Secret with the chosen name exists and was not created by this object.
	ReasonSecretConflict = "SecretConflict"
	// ReasonInstanceIDConflict means another Instance already owns the broker-side instance id.
	ReasonInstanceIDConflict = "InstanceIDConflict"
	// ReasonDeleting means the object is being removed from the broker.
	ReasonDeleting = "Deleting"
)

// Keys of the connection Secret an Instance generates. An application can mount the
// Secret as its connection settings.
const (
	SecretKeyAccessKeyID     = "accessKeyId"
	SecretKeyAccessKeySecret = "accessKeySecret"
	SecretKeyInstanceID      = "instanceId"
	SecretKeyHTTPEndpoint    = "httpEndpoint"
	SecretKeyTCPEndpoint     = "tcpEndpoint"
	// SecretKeyGRPCEndpoint is the gRPC endpoint (host:port) for the RocketMQ 5.x
	// clients, when the manager serves it.
	SecretKeyGRPCEndpoint = "grpcEndpoint"
	// SecretKeyCACert holds the PEM of the CA the endpoints' TLS certificate chains
	// to, when they serve TLS.
	SecretKeyCACert = "caCert"
)

// InstanceSpec defines the desired state of an Instance.
// +kubebuilder:validation:XValidation:rule="has(self.instanceId) == has(oldSelf.instanceId) && (!has(self.instanceId) || self.instanceId == oldSelf.instanceId)",message="instanceId is immutable: applications address the instance by it"
type InstanceSpec struct {
	// instanceId is the broker-side id of the instance: the `ns` parameter of the mq-http
	// SDKs and the namespace of the TCP clients (`instanceId%topic` on the wire). It
	// defaults to MQ_INST_<namespace>_<name> (dots in the name become underscores), so an
	// Instance deleted and applied again keeps the id its applications are configured
	// with. Set it to keep the id of an instance migrated from a cloud console.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9_-]+$`
	InstanceID string `json:"instanceId,omitempty"`

	// credentialsSecretName is the name of the Secret the operator generates in the
	// Instance's namespace with the AccessKey pair and connection settings. It defaults to
	// <name>-credentials. The operator never overwrites a Secret it did not create.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	CredentialsSecretName string `json:"credentialsSecretName,omitempty"`

	// allowedNamespaces lists the namespaces, besides the Instance's own, whose
	// Topics, ConsumerGroups and MessageConsumers may reference this Instance; "*"
	// allows every namespace. Empty means the Instance's own namespace only. Removing a
	// namespace stops the operator from managing its objects in this instance; what
	// they declared stays in the broker.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:Pattern=`^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$`
	AllowedNamespaces []string `json:"allowedNamespaces,omitempty"`

	// autoCreate lets TCP and gRPC (5.x) clients create the instance's topics and
	// consumer groups by using them, as RocketMQ brokers do with autoCreateTopicEnable and
	// autoCreateSubscriptionGroup. Off by default: then a name a client mistypes
	// fails instead of becoming a live topic, and everything the instance holds is
	// declared in Git. Objects created on first use live in the broker only; a Topic
	// or ConsumerGroup declared later with the same name adopts them. The mq-http
	// endpoint never creates anything, like the cloud services it stands in for.
	// +optional
	AutoCreate AutoCreate `json:"autoCreate,omitempty"`

	// limits are the instance's quotas: what its applications, careless or
	// hostile, can take of the broker every tenant shares. Unset fields take the
	// defaults. Past a count, a Topic or ConsumerGroup waits with Ready=False
	// (QuotaExceeded); past a rate or the connection limit, each protocol answers
	// its own throttling error (SYSTEM_BUSY over TCP, 503 Throttling over HTTP) and
	// the other instances are served as before.
	// +optional
	Limits InstanceLimits `json:"limits,omitempty"`
}

// InstanceLimits are an instance's quotas.
type InstanceLimits struct {
	// topics bounds the Topics of the instance (default 256; a group's retry and
	// dead-letter topics do not count).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	Topics int32 `json:"topics,omitempty"`
	// groups bounds its ConsumerGroups (default 256).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	Groups int32 `json:"groups,omitempty"`
	// connections bounds the protocol connections authenticated for it at once
	// (default 1024).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	Connections int32 `json:"connections,omitempty"`
	// publishRate bounds the messages published per second, with a burst of one
	// second's worth (default 20000).
	// +optional
	// +kubebuilder:validation:Minimum=1
	PublishRate int32 `json:"publishRate,omitempty"`
	// publishBytesRate bounds the bytes of message bodies published per second
	// (default 134217728, 128 MiB).
	// +optional
	// +kubebuilder:validation:Minimum=1
	PublishBytesRate int64 `json:"publishBytesRate,omitempty"`
	// maxMessageSize bounds one message body, in bytes (default and at most
	// 4194304, 4 MiB, as on the cloud services).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4194304
	MaxMessageSize int32 `json:"maxMessageSize,omitempty"`
}

// InstanceUsage is what an instance holds against its limits.
type InstanceUsage struct {
	// topics, groups and connections are what it holds now.
	Topics      int32 `json:"topics"`
	Groups      int32 `json:"groups"`
	Connections int32 `json:"connections"`
	// publishRate is messages a second over the last ten seconds or so, rounded.
	PublishRate int32 `json:"publishRate"`
	// limits are the limits in effect, defaults filled in.
	Limits InstanceLimits `json:"limits"`
}

// AutoCreate says what TCP and gRPC clients may create by using it.
type AutoCreate struct {
	// topics: a TCP message sent to a topic that does not exist creates it as a
	// Normal topic with the queue count the client asks for (4 unless the client is
	// configured otherwise, at most 64), and the admin calls that create and delete
	// topics (UPDATE_AND_CREATE_TOPIC, DELETE_TOPIC_IN_BROKER) work on such topics.
	// A gRPC client's route query or send creates a Normal topic with 4 queues.
	// Ordered and transactional topics are always declared.
	// +optional
	Topics bool `json:"topics,omitempty"`
	// groups: a consumer whose group does not exist creates it: protocol TCP for
	// a TCP consumer, HTTP (pop style) for a gRPC consumer.
	// +optional
	Groups bool `json:"groups,omitempty"`
}

// Allows reports whether objects in namespace ns may reference the Instance.
func (i *Instance) Allows(ns string) bool {
	if ns == i.Namespace {
		return true
	}
	for _, allowed := range i.Spec.AllowedNamespaces {
		if allowed == "*" || allowed == ns {
			return true
		}
	}
	return false
}

// InstanceEndpoints are the addresses applications connect to.
type InstanceEndpoints struct {
	// http is the endpoint URL for the mq-http SDKs.
	// +optional
	HTTP string `json:"http,omitempty"`
	// tcp is the name-server address (host:port) for the RocketMQ TCP clients.
	// +optional
	TCP string `json:"tcp,omitempty"`
	// grpc is the endpoint (host:port) for the RocketMQ 5.x gRPC clients; their
	// namespace is the instance id.
	// +optional
	GRPC string `json:"grpc,omitempty"`
}

// InstanceStatus defines the observed state of an Instance.
type InstanceStatus struct {
	// usage is what the instance holds against its limits, refreshed about once a
	// minute.
	// +optional
	Usage *InstanceUsage `json:"usage,omitempty"`

	// observedGeneration is the generation of the spec this status describes. It is
	// written on every reconcile, whether it succeeded or not; the Ready condition says
	// whether that generation took effect.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// instanceId is the broker-side id in effect.
	// +optional
	InstanceID string `json:"instanceId,omitempty"`

	// endpoints are the addresses applications connect to.
	// +optional
	Endpoints InstanceEndpoints `json:"endpoints,omitempty"`

	// credentialsSecret is the name of the Secret holding the AccessKey pair and the
	// connection settings.
	// +optional
	CredentialsSecret string `json:"credentialsSecret,omitempty"`

	// conditions describe the Instance's state. Ready is True once the broker serves
	// the instance with the credentials in the Secret.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Instance is a tenant of the embedded broker, like an instance in a cloud console: it
// owns its topics, consumer groups and credentials, and sees no other instance's.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mqi;mqinstance,categories=orderly
// +kubebuilder:printcolumn:name="Instance ID",type=string,JSONPath=`.status.instanceId`
// +kubebuilder:printcolumn:name="HTTP",type=string,JSONPath=`.status.endpoints.http`
// +kubebuilder:printcolumn:name="TCP",type=string,JSONPath=`.status.endpoints.tcp`,priority=1
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.credentialsSecret`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Instance struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec InstanceSpec `json:"spec,omitempty"`
	// +optional
	Status InstanceStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// InstanceList contains a list of Instance.
type InstanceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Instance `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Instance{}, &InstanceList{})
}

// GetConditions returns the Instance's status conditions.
func (i *Instance) GetConditions() []metav1.Condition { return i.Status.Conditions }

// SetConditions replaces the Instance's status conditions.
func (i *Instance) SetConditions(c []metav1.Condition) { i.Status.Conditions = c }
