package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// TopicBroker is the part of the broker the Topic controller reconciles into.
type TopicBroker interface {
	EnsureTopic(instanceID string, cfg broker.TopicConfig) (broker.TopicInfo, error)
	DeleteTopic(instanceID, name, owner string) error
	Topic(instanceID, name string) (broker.TopicInfo, error)
}

// +kubebuilder:rbac:groups=mq.orderly.dev,resources=topics,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=topics/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=topics/finalizers,verbs=update

// topicKind is the Topic's part of the generic reconcile.
type topicKind struct{ broker TopicBroker }

func (topicKind) newObject() *mqv1alpha1.Topic { return &mqv1alpha1.Topic{} }
func (topicKind) name() string                 { return "Topic" }
func (topicKind) instanceRef(t *mqv1alpha1.Topic) mqv1alpha1.InstanceReference {
	return t.Spec.InstanceRef
}
func (topicKind) policy(t *mqv1alpha1.Topic) mqv1alpha1.DeletionPolicy { return t.Spec.DeletionPolicy }
func (topicKind) setObservedGeneration(t *mqv1alpha1.Topic) {
	t.Status.ObservedGeneration = t.Generation
}
func (topicKind) observedGeneration(t *mqv1alpha1.Topic) int64 { return t.Status.ObservedGeneration }
func (topicKind) status(t *mqv1alpha1.Topic) any               { return t.Status }

func (k topicKind) declare(_ context.Context, instanceID string, t *mqv1alpha1.Topic) (string, error) {
	name := t.BrokerName()
	var drift string
	before, err := timed("GetTopic", func() (broker.TopicInfo, error) { return k.broker.Topic(instanceID, name) })
	switch {
	case errors.Is(err, broker.ErrTopicNotFound) && t.Status.TopicName != "":
		drift = fmt.Sprintf("topic %q was deleted from the broker", name)
	case err == nil && before.Owner == string(t.UID) && t.Status.Queues != 0 && int32(before.Queues) != t.Status.Queues:
		drift = fmt.Sprintf("topic %q had %d queues in the broker, %d applied", name, before.Queues, t.Status.Queues)
	}
	info, err := timed("EnsureTopic", func() (broker.TopicInfo, error) {
		return k.broker.EnsureTopic(instanceID, broker.TopicConfig{
			Name: name, Type: broker.MessageType(t.Spec.MessageType), Queues: int(t.Spec.Queues),
			Retention: time.Duration(t.Spec.RetentionHours) * time.Hour, Owner: string(t.UID),
		})
	})
	if err != nil {
		return "", err
	}
	t.Status.TopicName = name
	t.Status.Queues = int32(info.Queues)
	return drift, nil
}

func (k topicKind) remove(_ context.Context, instanceID string, t *mqv1alpha1.Topic) error {
	_, err := timed("DeleteTopic", func() (struct{}, error) {
		return struct{}{}, k.broker.DeleteTopic(instanceID, t.BrokerName(), string(t.UID))
	})
	return err
}

func (k topicKind) observe(_ context.Context, instanceID string, t *mqv1alpha1.Topic) error {
	info, err := k.broker.Topic(instanceID, t.BrokerName())
	if err != nil {
		return err
	}
	t.Status.Messages, t.Status.Bytes = info.Messages, info.Bytes
	now := metav1.Now()
	t.Status.LastSyncTime = &now
	return nil
}

// NewTopicReconciler returns the Topic controller.
func NewTopicReconciler(c client.Client, recorder eventRecorder, b TopicBroker, resync time.Duration) *TopicReconciler {
	return &TopicReconciler{brokerObjectReconciler[*mqv1alpha1.Topic]{Client: c, Recorder: recorder, Kind: topicKind{b}, Resync: resync}}
}

// TopicReconciler reconciles Topics into the broker.
type TopicReconciler struct {
	brokerObjectReconciler[*mqv1alpha1.Topic]
}

// SetupWithManager registers the controller.
func (r *TopicReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return r.setup(mgr, func() client.ObjectList { return &mqv1alpha1.TopicList{} },
		func(l client.ObjectList) []*mqv1alpha1.Topic { return pointers(l.(*mqv1alpha1.TopicList).Items) })
}

// timed runs one broker admin call and records its latency.
func timed[V any](op string, call func() (V, error)) (V, error) {
	start := time.Now()
	v, err := call()
	brokerCallSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	return v, err
}
