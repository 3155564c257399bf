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

// GroupBroker is the part of the broker the ConsumerGroup controller reconciles into.
type GroupBroker interface {
	EnsureGroup(instanceID string, cfg broker.GroupConfig) (broker.GroupInfo, error)
	DeleteGroup(instanceID, id, owner string) error
	GroupStats(instanceID, id string) (broker.GroupStats, error)
}

// +kubebuilder:rbac:groups=mq.orderly.dev,resources=consumergroups,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=consumergroups/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mq.orderly.dev,resources=consumergroups/finalizers,verbs=update

// groupKind is the ConsumerGroup's part of the generic reconcile.
type groupKind struct{ broker GroupBroker }

func (groupKind) newObject() *mqv1alpha1.ConsumerGroup { return &mqv1alpha1.ConsumerGroup{} }
func (groupKind) name() string                         { return "ConsumerGroup" }
func (groupKind) instanceRef(g *mqv1alpha1.ConsumerGroup) mqv1alpha1.InstanceReference {
	return g.Spec.InstanceRef
}
func (groupKind) policy(g *mqv1alpha1.ConsumerGroup) mqv1alpha1.DeletionPolicy {
	return g.Spec.DeletionPolicy
}
func (groupKind) setObservedGeneration(g *mqv1alpha1.ConsumerGroup) {
	g.Status.ObservedGeneration = g.Generation
}
func (groupKind) observedGeneration(g *mqv1alpha1.ConsumerGroup) int64 {
	return g.Status.ObservedGeneration
}
func (groupKind) status(g *mqv1alpha1.ConsumerGroup) any { return g.Status }

func (k groupKind) declare(_ context.Context, instanceID string, g *mqv1alpha1.ConsumerGroup) (string, error) {
	id := g.BrokerName()
	var drift string
	if _, err := k.broker.GroupStats(instanceID, id); errors.Is(err, broker.ErrGroupNotFound) && g.Status.GroupID != "" {
		drift = fmt.Sprintf("group %q was deleted from the broker", id)
	}
	_, err := timed("EnsureGroup", func() (broker.GroupInfo, error) {
		return k.broker.EnsureGroup(instanceID, broker.GroupConfig{
			ID: id, Protocol: broker.Protocol(g.Spec.Protocol), MaxRedeliveries: int(g.Spec.MaxRedeliveries), Owner: string(g.UID),
		})
	})
	if err != nil {
		return "", err
	}
	g.Status.GroupID = id
	return drift, nil
}

func (k groupKind) remove(_ context.Context, instanceID string, g *mqv1alpha1.ConsumerGroup) error {
	_, err := timed("DeleteGroup", func() (struct{}, error) {
		return struct{}{}, k.broker.DeleteGroup(instanceID, g.BrokerName(), string(g.UID))
	})
	return err
}

func (k groupKind) observe(_ context.Context, instanceID string, g *mqv1alpha1.ConsumerGroup) error {
	stats, err := k.broker.GroupStats(instanceID, g.BrokerName())
	if err != nil {
		return err
	}
	g.Status.Backlog, g.Status.Topics = 0, nil
	for _, t := range stats.Topics {
		g.Status.Backlog += t.Backlog
		if len(g.Status.Topics) < 64 {
			g.Status.Topics = append(g.Status.Topics, mqv1alpha1.TopicBacklog{Topic: t.Topic, Backlog: t.Backlog, InFlight: t.InFlight})
		}
	}
	g.Status.DeadLetters = stats.DeadLetters
	if !stats.LastConsumeTime.IsZero() {
		t := metav1.NewTime(stats.LastConsumeTime)
		g.Status.LastConsumeTime = &t
	}
	now := metav1.Now()
	g.Status.LastSyncTime = &now
	return nil
}

// NewConsumerGroupReconciler returns the ConsumerGroup controller.
func NewConsumerGroupReconciler(c client.Client, recorder eventRecorder, b GroupBroker, resync time.Duration) *ConsumerGroupReconciler {
	return &ConsumerGroupReconciler{brokerObjectReconciler[*mqv1alpha1.ConsumerGroup]{Client: c, Recorder: recorder, Kind: groupKind{b}, Resync: resync}}
}

// ConsumerGroupReconciler reconciles ConsumerGroups into the broker.
type ConsumerGroupReconciler struct {
	brokerObjectReconciler[*mqv1alpha1.ConsumerGroup]
}

// SetupWithManager registers the controller.
func (r *ConsumerGroupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return r.setup(mgr, func() client.ObjectList { return &mqv1alpha1.ConsumerGroupList{} },
		func(l client.ObjectList) []*mqv1alpha1.ConsumerGroup {
			return pointers(l.(*mqv1alpha1.ConsumerGroupList).Items)
		})
}
