package controllers

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// These run against the suite's kube-controller-manager, as in a cluster: its
// namespace controller deletes what a deleted namespace holds and its garbage
// collector what a deleted owner owned, and neither finishes while a finalizer of
// ours holds an object.
var _ = Describe("Deletion through kube-controller-manager", func() {
	// The namespace controller deletes everything at once, in no order: Instances,
	// their Topics and groups, the MessageConsumer and its running pods, Secrets.
	It("deletes a namespace with an Instance, its topics, groups and a running MessageConsumer, and leaves nothing in the broker", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 4, 3)
		ordered := newTopic(e.ns, "ordered", "demo")
		ordered.Spec.TopicName, ordered.Spec.MessageType = "MQ_ORDERED", mqv1alpha1.MessageTypeOrdered
		retained := newTopic(e.ns, "retained", "demo")
		retained.Spec.TopicName, retained.Spec.DeletionPolicy = "MQ_RETAINED", mqv1alpha1.DeletionPolicyRetain
		tcp := newGroup(e.ns, "tcp", "demo", "TCP")
		tcp.Spec.GroupID = "GID_tcp"
		for _, o := range []brokerObject{ordered, retained, tcp} {
			Expect(k8sClient.Create(ctx, o)).To(Succeed())
			expectCondition(ctx, o, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		}
		mc := e.messageConsumer("drain", 2, mqv1alpha1.CompletionForever)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		Eventually(func(g Gomega) {
			running := 0
			for _, p := range consumerPods(ctx, mc) {
				if p.Status.Phase == corev1.PodRunning {
					running++
				}
			}
			g.Expect(running).To(Equal(2))
		}).Should(Succeed())
		e.publish(ctx, 3, 0)
		Eventually(func() []string { all, _ := e.handled(); return all }).Should(HaveLen(3))

		id := e.inst.Status.InstanceID
		secret := client.ObjectKey{Namespace: e.ns, Name: e.inst.Status.CredentialsSecret}
		Expect(k8sClient.Get(ctx, secret, &corev1.Secret{})).To(Succeed())
		_, err := testBroker.Topic(id, "MQ_RETAINED")
		Expect(err).NotTo(HaveOccurred())

		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}
		Expect(k8sClient.Delete(ctx, ns)).To(Succeed())
		Eventually(func(g Gomega) {
			err := k8sClient.Get(ctx, client.ObjectKeyFromObject(ns), ns)
			if err == nil {
				g.Expect(err).To(HaveOccurred(), "namespace %s still %s: %+v", e.ns, ns.Status.Phase, ns.Status.Conditions)
			}
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "%v", err)
		}).WithTimeout(3 * time.Minute).Should(Succeed())

		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, secret, &corev1.Secret{}))).To(BeTrue(), "the Instance's Secret is gone")
		_, err = testBroker.Instance(id)
		Expect(err).To(MatchError(broker.ErrInstanceNotFound))
		for _, i := range testBroker.Instances() {
			Expect(i.ID).NotTo(Equal(id))
		}
		for _, topic := range []string{"MQ_WORK", "MQ_ORDERED", "MQ_RETAINED"} {
			_, err := testBroker.Topic(id, topic)
			Expect(err).To(HaveOccurred(), "topic %s", topic)
		}
		for _, group := range []string{"GID_workers", "GID_tcp"} {
			_, err := testBroker.Group(id, group)
			Expect(err).To(HaveOccurred(), "group %s", group)
		}
		_, _, ok := testBroker.LookupAccessKey(e.client.AccessKeyID)
		Expect(ok).To(BeFalse(), "the Instance's AccessKey still authenticates")
	})

	It("collects an Instance's Secret when the Instance is deleted", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := readyInstance(ctx, ns, "short-lived")
		key := client.ObjectKey{Namespace: ns, Name: inst.Status.CredentialsSecret}
		s := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, key, s)).To(Succeed())
		Expect(s.OwnerReferences).To(ContainElement(HaveField("UID", inst.UID)))
		// An unrelated Secret in the namespace stays.
		other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unrelated"}}
		Expect(k8sClient.Create(ctx, other)).To(Succeed())

		Expect(k8sClient.Delete(ctx, inst)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, key, &corev1.Secret{}))
		}).WithTimeout(time.Minute).Should(BeTrue(), "the Secret outlived its Instance")
		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst))).To(BeTrue())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(other), other)).To(Succeed())
		_, err := testBroker.Instance(inst.Status.InstanceID)
		Expect(err).To(MatchError(broker.ErrInstanceNotFound))
	})
})
