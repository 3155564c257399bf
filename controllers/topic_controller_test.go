package controllers

import (
	"context"
	"errors"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// readyInstance creates an Instance in ns and waits until it is Ready.
func readyInstance(ctx context.Context, ns, name string) *mqv1alpha1.Instance {
	GinkgoHelper()
	inst := newInstance(ns, name)
	Expect(k8sClient.Create(ctx, inst)).To(Succeed())
	expectReady(ctx, inst)
	return inst
}

func newTopic(ns, name, instance string) *mqv1alpha1.Topic {
	return &mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: mqv1alpha1.TopicSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: instance}}}
}

func newGroup(ns, name, instance string, p mqv1alpha1.Protocol) *mqv1alpha1.ConsumerGroup {
	return &mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: mqv1alpha1.ConsumerGroupSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: instance}, Protocol: p}}
}

// condition reads obj's condition typ as it is now in the apiserver.
func condition(g Gomega, ctx context.Context, obj brokerObject, typ string) *metav1.Condition {
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	c := meta.FindStatusCondition(obj.GetConditions(), typ)
	g.Expect(c).NotTo(BeNil(), "no %s condition yet", typ)
	return c
}

func expectCondition(ctx context.Context, obj brokerObject, typ string, status metav1.ConditionStatus, reason string) *metav1.Condition {
	GinkgoHelper()
	var c *metav1.Condition
	Eventually(func(g Gomega) {
		c = condition(g, ctx, obj, typ)
		g.Expect(c.Status).To(Equal(status), "%s: %s", c.Reason, c.Message)
		g.Expect(c.Reason).To(Equal(reason), c.Message)
	}).Should(Succeed())
	return c
}

var _ = Describe("Topic and ConsumerGroup controllers", func() {
	It("passes the Instance's auto-creation policy to the broker, and adopts what clients created", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "auto")
		inst.Spec.AutoCreate = mqv1alpha1.AutoCreate{Topics: true, Groups: true}
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		id := inst.Status.InstanceID
		Expect(testBroker.AutoCreatePolicyOf(id)).To(Equal(broker.AutoCreatePolicy{Topics: true, Groups: true}))

		// A client creates a topic by using it; declaring it afterwards adopts it.
		_, err := testBroker.AutoCreateTopic(id, broker.TopicConfig{Name: "clicks"})
		Expect(err).NotTo(HaveOccurred())
		topic := newTopic(ns, "clicks", "auto")
		topic.Spec.Queues = 8
		Expect(k8sClient.Create(ctx, topic)).To(Succeed())
		expectCondition(ctx, topic, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		info, err := testBroker.Topic(id, "clicks")
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Owner).To(Equal(string(topic.UID)))
		Expect(info.Queues).To(Equal(8))

		// Withdrawing the policy reaches the broker too.
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
		inst.Spec.AutoCreate = mqv1alpha1.AutoCreate{}
		Expect(k8sClient.Update(ctx, inst)).To(Succeed())
		Eventually(func() (broker.AutoCreatePolicy, error) { return testBroker.AutoCreatePolicyOf(id) }).Should(Equal(broker.AutoCreatePolicy{}))
	})

	It("declare topics and groups in the broker with status, and delete them by policy", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "demo")
		id := inst.Status.InstanceID

		orders := newTopic(ns, "orders", "demo")
		orders.Spec.TopicName = "MQ_ORDER"
		orders.Spec.MessageType = "Ordered"
		orders.Spec.Queues = 4
		kept := newTopic(ns, "kept", "demo")
		kept.Spec.DeletionPolicy = mqv1alpha1.DeletionPolicyRetain
		group := newGroup(ns, "orders-group", "demo", "HTTP")
		group.Spec.GroupID = "GID_orders"
		for _, o := range []client.Object{orders, kept, group} {
			Expect(k8sClient.Create(ctx, o)).To(Succeed())
		}
		expectCondition(ctx, orders, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		expectCondition(ctx, kept, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		expectCondition(ctx, group, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		expectCondition(ctx, orders, mqv1alpha1.ConditionSynced, metav1.ConditionTrue, mqv1alpha1.ReasonInSync)

		info, err := testBroker.Topic(id, "MQ_ORDER")
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Type).To(Equal(broker.Ordered))
		Expect(info.Queues).To(Equal(4))
		Expect(orders.Status.TopicName).To(Equal("MQ_ORDER"))
		Expect(orders.Status.Queues).To(BeEquivalentTo(4))
		Expect(orders.Status.ObservedGeneration).To(Equal(orders.Generation))
		gi, err := testBroker.Group(id, "GID_orders")
		Expect(err).NotTo(HaveOccurred())
		Expect(gi.Protocol).To(Equal(broker.HTTP))
		Expect(gi.MaxRedeliveries).To(Equal(16))

		// Queues grow in place.
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(orders), orders)).To(Succeed())
		orders.Spec.Queues = 6
		Expect(k8sClient.Update(ctx, orders)).To(Succeed())
		Eventually(func() int { i, _ := testBroker.Topic(id, "MQ_ORDER"); return i.Queues }).Should(Equal(6))
		Eventually(func(g Gomega) {
			var evs eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
			var reasons []string
			for _, e := range evs.Items {
				if e.Regarding.Name == "orders" {
					reasons = append(reasons, e.Reason)
				}
			}
			g.Expect(reasons).To(ContainElements("Declared", "Updated"))
		}).Should(Succeed())

		for _, o := range []client.Object{orders, kept, group} {
			Expect(k8sClient.Delete(ctx, o)).To(Succeed())
		}
		for _, o := range []client.Object{orders, kept, group} {
			Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), o)) }).Should(BeTrue())
		}
		_, err = testBroker.Topic(id, "MQ_ORDER")
		Expect(errors.Is(err, broker.ErrTopicNotFound)).To(BeTrue(), "Delete policy must remove the topic")
		_, err = testBroker.Topic(id, "kept")
		Expect(err).NotTo(HaveOccurred(), "Retain policy must keep the topic")
		_, err = testBroker.Group(id, "GID_orders")
		Expect(errors.Is(err, broker.ErrGroupNotFound)).To(BeTrue())
	})

	It("waits for its Instance with a clear reason and proceeds once it is Ready", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		t := newTopic(ns, "early", "later")
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		c := expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonInstanceNotReady)
		Expect(c.Message).To(ContainSubstring(ns + "/later"))
		readyInstance(ctx, ns, "later")
		expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
	})

	It("reports a name conflict and leaves the first declaration alone", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "demo")
		first := newTopic(ns, "first", "demo")
		first.Spec.TopicName = "Shared"
		Expect(k8sClient.Create(ctx, first)).To(Succeed())
		expectCondition(ctx, first, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		second := newTopic(ns, "second", "demo")
		second.Spec.TopicName = "Shared"
		second.Spec.MessageType = "Transactional"
		Expect(k8sClient.Create(ctx, second)).To(Succeed())
		expectCondition(ctx, second, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonNameConflict)
		info, err := testBroker.Topic(inst.Status.InstanceID, "Shared")
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Type).To(Equal(broker.Normal))
		Expect(info.Owner).To(Equal(string(first.UID)))
		// Deleting the loser must not delete the owner's topic.
		Expect(k8sClient.Delete(ctx, second)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(second), second))
		}).Should(BeTrue())
		_, err = testBroker.Topic(inst.Status.InstanceID, "Shared")
		Expect(err).NotTo(HaveOccurred())
	})

	It("repairs a topic deleted in the broker behind its back, and says so", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "demo")
		t := newTopic(ns, "drifty", "demo")
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		Expect(testBroker.DeleteTopic(inst.Status.InstanceID, "drifty", string(t.UID))).To(Succeed())
		// The repair is visible as a Warning event on the Topic (the Synced condition
		// says DriftRepaired until the next resync finds the broker in sync again).
		Eventually(func(g Gomega) {
			var evs eventsv1.EventList
			g.Expect(k8sClient.List(ctx, &evs, client.InNamespace(ns))).To(Succeed())
			found := false
			for _, e := range evs.Items {
				if e.Reason == mqv1alpha1.ReasonDriftRepaired && e.Regarding.Name == "drifty" && strings.Contains(e.Note, "deleted from the broker") {
					found = true
				}
			}
			g.Expect(found).To(BeTrue(), "no DriftRepaired event")
		}).Should(Succeed())
		_, err := testBroker.Topic(inst.Status.InstanceID, "drifty")
		Expect(err).NotTo(HaveOccurred())
	})

	It("never leaves children in Terminating when their Instance is gone", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "doomed")
		t := newTopic(ns, "orphan", "doomed")
		g := newGroup(ns, "orphan-group", "doomed", "TCP")
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		Expect(k8sClient.Create(ctx, g)).To(Succeed())
		expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		Expect(k8sClient.Delete(ctx, inst)).To(Succeed())
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)) }).Should(BeTrue())
		Expect(k8sClient.Delete(ctx, t)).To(Succeed())
		Expect(k8sClient.Delete(ctx, g)).To(Succeed())
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(t), t)) }).Should(BeTrue())
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(g), g)) }).Should(BeTrue())
	})

	It("refuses invalid objects and changes to what the broker cannot change", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		for name, mutate := range map[string]func(*mqv1alpha1.Topic){
			"bad.name":       func(*mqv1alpha1.Topic) {},
			"bad-topic-name": func(t *mqv1alpha1.Topic) { t.Spec.TopicName = "has space" },
			"bad-type":       func(t *mqv1alpha1.Topic) { t.Spec.MessageType = "Delay" },
			"no-queues":      func(t *mqv1alpha1.Topic) { t.Spec.Queues = -1 },
		} {
			t := newTopic(ns, name, "demo")
			mutate(t)
			err := k8sClient.Create(ctx, t)
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%s: %v", name, err)
		}
		t := newTopic(ns, "stable", "demo")
		t.Spec.Queues = 4
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		for msg, mutate := range map[string]func(*mqv1alpha1.Topic){
			"messageType is immutable":  func(t *mqv1alpha1.Topic) { t.Spec.MessageType = "Ordered" },
			"queues may grow but never": func(t *mqv1alpha1.Topic) { t.Spec.Queues = 2 },
			"topicName is immutable":    func(t *mqv1alpha1.Topic) { t.Spec.TopicName = "Other" },
			"instanceRef is immutable":  func(t *mqv1alpha1.Topic) { t.Spec.InstanceRef.Name = "other" },
		} {
			// The controller updates the object too: retry on conflicts.
			Eventually(func(g Gomega) {
				changed := &mqv1alpha1.Topic{}
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(t), changed)).To(Succeed())
				mutate(changed)
				err := k8sClient.Update(ctx, changed)
				g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%s: %v", msg, err)
				g.Expect(err.Error()).To(ContainSubstring(msg))
			}).Should(Succeed())
		}
		grp := newGroup(ns, "group-x", "demo", "TCP")
		Expect(k8sClient.Create(ctx, grp)).To(Succeed())
		Eventually(func(g Gomega) {
			changed := &mqv1alpha1.ConsumerGroup{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(grp), changed)).To(Succeed())
			changed.Spec.Protocol = "HTTP"
			err := k8sClient.Update(ctx, changed)
			g.Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%v", err)
			g.Expect(err.Error()).To(ContainSubstring("protocol is immutable"))
		}).Should(Succeed())
	})

	It("serves other namespaces only where the Instance allows them", func(ctx SpecContext) {
		home := newNamespace(ctx)
		app := newNamespace(ctx)
		inst := readyInstance(ctx, home, "shared")
		t := newTopic(app, "remote", "shared")
		t.Spec.InstanceRef.Namespace = home
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		c := expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonNamespaceNotAllowed)
		Expect(c.Message).To(ContainSubstring(app))
		_, err := testBroker.Topic(inst.Status.InstanceID, "remote")
		Expect(errors.Is(err, broker.ErrTopicNotFound)).To(BeTrue(), "a namespace not allowed must not declare anything")

		// Allowing the namespace wakes the waiting Topic through the Instance watch.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			inst.Spec.AllowedNamespaces = []string{app}
			g.Expect(k8sClient.Update(ctx, inst)).To(Succeed())
		}).Should(Succeed())
		expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		_, err = testBroker.Topic(inst.Status.InstanceID, "remote")
		Expect(err).NotTo(HaveOccurred())

		Expect(k8sClient.Delete(ctx, t)).To(Succeed())
		Eventually(func() error { _, err := testBroker.Topic(inst.Status.InstanceID, "remote"); return err }).Should(MatchError(broker.ErrTopicNotFound))
	})

	It("leaves the broker alone while paused, Retain-like on delete, and resumes", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "demo")
		id := inst.Status.InstanceID
		t := newTopic(ns, "paused", "demo")
		Expect(k8sClient.Create(ctx, t)).To(Succeed())
		expectCondition(ctx, t, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		Expect(gaugeValue("Topic", ns, "paused")).To(Equal(1.0))

		setPaused := func(paused bool) {
			Eventually(func(g Gomega) {
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(t), t)).To(Succeed())
				if paused {
					t.Annotations = map[string]string{mqv1alpha1.PausedAnnotation: "true"}
				} else {
					delete(t.Annotations, mqv1alpha1.PausedAnnotation)
				}
				g.Expect(k8sClient.Update(ctx, t)).To(Succeed())
			}).Should(Succeed())
		}
		setPaused(true)
		expectCondition(ctx, t, mqv1alpha1.ConditionSynced, metav1.ConditionUnknown, mqv1alpha1.ReasonPaused)
		// A change made outside the operator stays while paused: resyncs run every
		// testResync, so a few of them pass while we wait on the status.
		Expect(testBroker.DeleteTopic(id, "paused", string(t.UID))).To(Succeed())
		Consistently(func() error { _, err := testBroker.Topic(id, "paused"); return err }, 3*testResync).Should(MatchError(broker.ErrTopicNotFound))

		// Resuming repairs it (the DriftRepaired reason lasts one resync, so wait on
		// the broker, then on Synced being True again).
		setPaused(false)
		Eventually(func() error { _, err := testBroker.Topic(id, "paused"); return err }).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(condition(g, ctx, t, mqv1alpha1.ConditionSynced).Status).To(Equal(metav1.ConditionTrue))
		}).Should(Succeed())

		setPaused(true)
		expectCondition(ctx, t, mqv1alpha1.ConditionSynced, metav1.ConditionUnknown, mqv1alpha1.ReasonPaused)
		Expect(k8sClient.Delete(ctx, t)).To(Succeed())
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(t), t)) }).Should(BeTrue())
		_, err := testBroker.Topic(id, "paused")
		Expect(err).NotTo(HaveOccurred(), "deleting a paused Topic must keep the broker's topic")
		Eventually(func() float64 { return gaugeValue("Topic", ns, "paused") }).Should(Equal(-1.0), "a deleted object's series must go")
	})
})

// gaugeValue reads orderly_resource_ready for one object; -1 when there is no series.
func gaugeValue(kind, ns, name string) float64 {
	GinkgoHelper()
	families, err := ctrlmetrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != "orderly_resource_ready" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["namespace"] == ns && labels["name"] == name {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}
