package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

var nsCounter atomic.Int64

// newNamespace creates a namespace of the spec's own.
func newNamespace(ctx context.Context) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("test-%d-%d", GinkgoParallelProcess(), nsCounter.Add(1))}}
	Expect(k8sClient.Create(ctx, ns)).To(Succeed())
	return ns.Name
}

func newInstance(ns, name string) *mqv1alpha1.Instance {
	return &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

// readyCondition returns the Instance's Ready condition as it is now in the apiserver.
func readyCondition(g Gomega, ctx context.Context, inst *mqv1alpha1.Instance) *metav1.Condition {
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
	c := meta.FindStatusCondition(inst.Status.Conditions, mqv1alpha1.ConditionReady)
	g.Expect(c).NotTo(BeNil(), "no Ready condition yet")
	return c
}

func expectReady(ctx context.Context, inst *mqv1alpha1.Instance) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		c := readyCondition(g, ctx, inst)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "Ready: %s: %s", c.Reason, c.Message)
		g.Expect(c.ObservedGeneration).To(Equal(inst.Generation))
		g.Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
	}).Should(Succeed())
}

func expectNotReady(ctx context.Context, inst *mqv1alpha1.Instance, reason string) *metav1.Condition {
	GinkgoHelper()
	var cond *metav1.Condition
	Eventually(func(g Gomega) {
		cond = readyCondition(g, ctx, inst)
		g.Expect(cond.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(cond.Reason).To(Equal(reason))
		g.Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
	}).Should(Succeed())
	return cond
}

func getSecret(ctx context.Context, ns, name string) *corev1.Secret {
	GinkgoHelper()
	s := &corev1.Secret{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s)).To(Succeed())
	return s
}

var _ = Describe("Instance controller", func() {
	It("serves a new Instance with generated credentials, status and a connection Secret", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "orders")
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)

		wantID := "MQ_INST_" + ns + "_orders"
		Expect(inst.Status.InstanceID).To(Equal(wantID))
		Expect(inst.Status.Endpoints.HTTP).To(Equal(testEndpoints.HTTP))
		Expect(inst.Status.Endpoints.TCP).To(Equal(testEndpoints.TCP))
		Expect(inst.Status.Endpoints.GRPC).To(Equal(testEndpoints.GRPC))
		Expect(inst.Status.CredentialsSecret).To(Equal("orders-credentials"))
		Expect(inst.Finalizers).To(ContainElement(BrokerCleanupFinalizer))

		secret := getSecret(ctx, ns, "orders-credentials")
		Expect(metav1.IsControlledBy(secret, inst)).To(BeTrue(), "Secret must be owned by the Instance")
		Expect(secret.Labels).To(HaveKeyWithValue(ManagedByLabel, ManagedByValue))
		Expect(secret.Data).To(HaveKeyWithValue(mqv1alpha1.SecretKeyInstanceID, []byte(wantID)))
		Expect(secret.Data).To(HaveKeyWithValue(mqv1alpha1.SecretKeyHTTPEndpoint, []byte(testEndpoints.HTTP)))
		Expect(secret.Data).To(HaveKeyWithValue(mqv1alpha1.SecretKeyTCPEndpoint, []byte(testEndpoints.TCP)))
		Expect(secret.Data).To(HaveKeyWithValue(mqv1alpha1.SecretKeyGRPCEndpoint, []byte(testEndpoints.GRPC)))
		ak := string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID])
		sk := string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret])
		Expect(ak).To(HaveLen(24))
		Expect(sk).To(HaveLen(30))

		// The broker authenticates exactly the Secret's key pair, for this instance.
		id, secretInBroker, ok := testBroker.LookupAccessKey(ak)
		Expect(ok).To(BeTrue())
		Expect(id).To(Equal(wantID))
		Expect(secretInBroker).To(Equal(sk))
	})

	It("uses spec.instanceId and refuses to change it", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "migrated")
		inst.Spec.InstanceID = "MQ_INST_1234567890_BXmigrated" + ns
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		Expect(inst.Status.InstanceID).To(Equal(inst.Spec.InstanceID))
		_, err := testBroker.Instance(inst.Spec.InstanceID)
		Expect(err).NotTo(HaveOccurred())

		changed := inst.DeepCopy()
		changed.Spec.InstanceID = "MQ_INST_other"
		err = k8sClient.Update(ctx, changed)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("instanceId is immutable"))

		removed := inst.DeepCopy()
		removed.Spec.InstanceID = ""
		Expect(k8sClient.Update(ctx, removed)).NotTo(Succeed(), "dropping instanceId would change the derived id")
	})

	It("refuses an id that would not be a valid RocketMQ namespace", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "bad")
		inst.Spec.InstanceID = "has%percent"
		err := k8sClient.Create(ctx, inst)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec.instanceId"))
	})

	It("never overwrites a Secret it did not create", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		foreign := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "payments-credentials"},
			StringData: map[string]string{"password": "someone-elses"},
		}
		Expect(k8sClient.Create(ctx, foreign)).To(Succeed())

		inst := newInstance(ns, "payments")
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		cond := expectNotReady(ctx, inst, mqv1alpha1.ReasonSecretConflict)
		Expect(cond.Message).To(ContainSubstring("payments-credentials"))

		s := getSecret(ctx, ns, "payments-credentials")
		Expect(s.Data).To(Equal(map[string][]byte{"password": []byte("someone-elses")}))
		Expect(s.OwnerReferences).To(BeEmpty())
		_, err := testBroker.Instance(EffectiveInstanceID(inst))
		Expect(errors.Is(err, broker.ErrInstanceNotFound)).To(BeTrue(), "a conflicted Instance must not reach the broker")

		// Choosing another Secret name resolves it.
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
		inst.Spec.CredentialsSecretName = "payments-mq"
		Expect(k8sClient.Update(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		Expect(inst.Status.CredentialsSecret).To(Equal("payments-mq"))
		Expect(getSecret(ctx, ns, "payments-mq").Data).To(HaveKey(mqv1alpha1.SecretKeyAccessKeyID))
		Expect(getSecret(ctx, ns, "payments-credentials").Data).To(Equal(map[string][]byte{"password": []byte("someone-elses")}))
	})

	It("recreates a deleted Secret with new keys and restores edited settings", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "rotate")
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		old := getSecret(ctx, ns, "rotate-credentials")
		oldKey := string(old.Data[mqv1alpha1.SecretKeyAccessKeyID])

		Expect(k8sClient.Delete(ctx, old)).To(Succeed())
		var newKey string
		Eventually(func(g Gomega) {
			s := &corev1.Secret{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(old), s)).To(Succeed())
			g.Expect(s.UID).NotTo(Equal(old.UID))
			newKey = string(s.Data[mqv1alpha1.SecretKeyAccessKeyID])
		}).Should(Succeed())
		Expect(newKey).NotTo(Equal(oldKey))
		// Deleting the Secret is how a user rotates: the old key stops working.
		Eventually(func() bool { _, _, ok := testBroker.LookupAccessKey(oldKey); return ok }).Should(BeFalse())
		Eventually(func() bool { _, _, ok := testBroker.LookupAccessKey(newKey); return ok }).Should(BeTrue())

		s := getSecret(ctx, ns, "rotate-credentials")
		s.Data[mqv1alpha1.SecretKeyInstanceID] = []byte("edited")
		Expect(k8sClient.Update(ctx, s)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(getSecret(ctx, ns, "rotate-credentials").Data[mqv1alpha1.SecretKeyInstanceID]).
				To(Equal([]byte(EffectiveInstanceID(inst))))
		}).Should(Succeed())
	})

	It("reports a broker error in Ready and recovers once the cause is gone", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		first := newInstance(ns, "first")
		second := newInstance(ns, "second")
		Expect(k8sClient.Create(ctx, first)).To(Succeed())
		Expect(k8sClient.Create(ctx, second)).To(Succeed())
		expectReady(ctx, first)
		expectReady(ctx, second)

		// Copy first's key into second's Secret: a key authenticates one instance only.
		firstKey := getSecret(ctx, ns, "first-credentials").Data[mqv1alpha1.SecretKeyAccessKeyID]
		s := getSecret(ctx, ns, "second-credentials")
		s.Data[mqv1alpha1.SecretKeyAccessKeyID] = firstKey
		Expect(k8sClient.Update(ctx, s)).To(Succeed())
		cond := expectNotReady(ctx, second, mqv1alpha1.ReasonBrokerError)
		Expect(cond.Message).To(ContainSubstring("already authenticates for another instance"))
		id, _, _ := testBroker.LookupAccessKey(string(firstKey))
		Expect(id).To(Equal(EffectiveInstanceID(first)), "the key must stay with its instance")

		// Clearing the key makes the operator generate a fresh one.
		s = getSecret(ctx, ns, "second-credentials")
		delete(s.Data, mqv1alpha1.SecretKeyAccessKeyID)
		Expect(k8sClient.Update(ctx, s)).To(Succeed())
		expectReady(ctx, second)
	})

	It("keeps a contested instance id with the Instance that declared it first and hands it over on deletion", func(ctx SpecContext) {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		shared := "MQ_INST_shared_" + nsA
		owner := newInstance(nsA, "owner")
		owner.Spec.InstanceID = shared
		Expect(k8sClient.Create(ctx, owner)).To(Succeed())
		expectReady(ctx, owner)

		late := newInstance(nsB, "late")
		late.Spec.InstanceID = shared
		Expect(k8sClient.Create(ctx, late)).To(Succeed())
		cond := expectNotReady(ctx, late, mqv1alpha1.ReasonInstanceIDConflict)
		Expect(cond.Message).To(ContainSubstring(nsA + "/owner"))
		ownerKey := string(getSecret(ctx, nsA, "owner-credentials").Data[mqv1alpha1.SecretKeyAccessKeyID])
		info, err := testBroker.Instance(shared)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.AccessKeyIDs).To(Equal([]string{ownerKey}), "the later Instance must not touch the tenant")

		Expect(k8sClient.Delete(ctx, owner)).To(Succeed())
		expectReady(ctx, late)
		lateKey := string(getSecret(ctx, nsB, "late-credentials").Data[mqv1alpha1.SecretKeyAccessKeyID])
		Eventually(func(g Gomega) {
			info, err := testBroker.Instance(shared)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.AccessKeyIDs).To(Equal([]string{lateKey}))
		}).Should(Succeed())

		// Deleting the Instance that lost the conflict earlier must not have removed the
		// tenant; deleting the owner now does.
		Expect(k8sClient.Delete(ctx, late)).To(Succeed())
		Eventually(func() error { _, err := testBroker.Instance(shared); return err }).Should(MatchError(broker.ErrInstanceNotFound))
	})

	It("does not remove the owner's tenant when a conflicted Instance is deleted", func(ctx SpecContext) {
		nsA, nsB := newNamespace(ctx), newNamespace(ctx)
		shared := "MQ_INST_kept_" + nsA
		owner := newInstance(nsA, "owner")
		owner.Spec.InstanceID = shared
		Expect(k8sClient.Create(ctx, owner)).To(Succeed())
		expectReady(ctx, owner)
		loser := newInstance(nsB, "loser")
		loser.Spec.InstanceID = shared
		Expect(k8sClient.Create(ctx, loser)).To(Succeed())
		expectNotReady(ctx, loser, mqv1alpha1.ReasonInstanceIDConflict)

		Expect(k8sClient.Delete(ctx, loser)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(loser), loser))
		}).Should(BeTrue())
		_, err := testBroker.Instance(shared)
		Expect(err).NotTo(HaveOccurred())
		expectReady(ctx, owner)
	})

	It("removes the tenant from the broker before the Instance goes away", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "short-lived")
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		id := inst.Status.InstanceID
		key := string(getSecret(ctx, ns, "short-lived-credentials").Data[mqv1alpha1.SecretKeyAccessKeyID])

		Expect(k8sClient.Delete(ctx, inst)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst))
		}).Should(BeTrue())
		_, err := testBroker.Instance(id)
		Expect(err).To(MatchError(broker.ErrInstanceNotFound))
		_, _, ok := testBroker.LookupAccessKey(key)
		Expect(ok).To(BeFalse(), "a deleted instance's key must not authenticate")
	})
})

var _ = Describe("Instance tenancy", func() {
	It("refuses a custom id in the derived form of another namespace's Instances", func(ctx SpecContext) {
		victim := newNamespace(ctx)
		ns := newNamespace(ctx)
		inst := newInstance(ns, "squatter")
		inst.Spec.InstanceID = "MQ_INST_" + victim + "_app"
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		cond := expectNotReady(ctx, inst, mqv1alpha1.ReasonInstanceIDConflict)
		Expect(cond.Message).To(ContainSubstring(victim))
		_, err := testBroker.Instance(inst.Spec.InstanceID)
		Expect(errors.Is(err, broker.ErrInstanceNotFound)).To(BeTrue(), "the squatter reached the broker: %v", err)
		// The namespace's own Instance gets its derived id.
		own := newInstance(victim, "app")
		Expect(k8sClient.Create(ctx, own)).To(Succeed())
		expectReady(ctx, own)
		Expect(own.Status.InstanceID).To(Equal("MQ_INST_" + victim + "_app"))
	})

	It("lets only the same namespace and name adopt a tenant whose Instance vanished", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		id := "MQ_INST_contested_" + ns
		Expect(testBroker.EnsureInstance(broker.InstanceConfig{ID: id, Owner: "uid-gone", Declarer: ns + "/original"})).To(Succeed())
		other := newInstance(ns, "impostor")
		other.Spec.InstanceID = id
		Expect(k8sClient.Create(ctx, other)).To(Succeed())
		expectNotReady(ctx, other, mqv1alpha1.ReasonInstanceIDConflict)
		heir := newInstance(ns, "original")
		heir.Spec.InstanceID = id
		Expect(k8sClient.Create(ctx, heir)).To(Succeed())
		expectReady(ctx, heir)
		info, err := testBroker.Instance(id)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Owner).To(Equal(string(heir.UID)))
	})
})

var _ = Describe("Instance adoption", func() {
	It("adopts a tenant whose owning Instance is gone without running its finalizer", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		id := "MQ_INST_orphan_" + ns
		// What a force-removed finalizer leaves behind: a tenant owned by a UID that no
		// Instance has any more.
		Expect(testBroker.EnsureInstance(broker.InstanceConfig{ID: id, Owner: "uid-of-a-deleted-instance",
			Credentials: []broker.Credential{{AccessKeyID: "orphankey" + ns, AccessKeySecret: "s"}}})).To(Succeed())

		inst := newInstance(ns, "heir")
		inst.Spec.InstanceID = id
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		info, err := testBroker.Instance(id)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.Owner).To(Equal(string(inst.UID)))
		_, _, ok := testBroker.LookupAccessKey("orphankey" + ns)
		Expect(ok).To(BeFalse(), "the vanished owner's key must stop working")
	})
})

var _ = Describe("Instance limits", func() {
	It("holds Topics past the quota with QuotaExceeded, and shows usage against the limits", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		inst := newInstance(ns, "small")
		inst.Spec.Limits = mqv1alpha1.InstanceLimits{Topics: 1, PublishRate: 50}
		Expect(k8sClient.Create(ctx, inst)).To(Succeed())
		expectReady(ctx, inst)
		first := newTopic(ns, "first", "small")
		Expect(k8sClient.Create(ctx, first)).To(Succeed())
		expectCondition(ctx, first, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		second := newTopic(ns, "second", "small")
		Expect(k8sClient.Create(ctx, second)).To(Succeed())
		c := expectCondition(ctx, second, mqv1alpha1.ConditionReady, metav1.ConditionFalse, mqv1alpha1.ReasonQuotaExceeded)
		Expect(c.Message).To(ContainSubstring("limit of 1 topics"))
		// Raising the limit lets it through.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			inst.Spec.Limits.Topics = 2
			g.Expect(k8sClient.Update(ctx, inst)).To(Succeed())
		}).Should(Succeed())
		expectCondition(ctx, second, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
		// Usage is refreshed each minute and on every reconcile; an annotation
		// brings the next one now.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			inst.Annotations = map[string]string{"test/refresh": "1"}
			g.Expect(k8sClient.Update(ctx, inst)).To(Succeed())
		}).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			g.Expect(inst.Status.Usage).NotTo(BeNil())
			g.Expect(inst.Status.Usage.Topics).To(Equal(int32(2)))
			g.Expect(inst.Status.Usage.Limits.Topics).To(Equal(int32(2)))
			g.Expect(inst.Status.Usage.Limits.PublishRate).To(Equal(int32(50)))
			g.Expect(inst.Status.Usage.Limits.MaxMessageSize).To(Equal(int32(broker.MaxBodySize)))
		}).Should(Succeed())
	})

	It("refuses a maximum message size over 4 MiB", func(ctx SpecContext) {
		inst := newInstance(newNamespace(ctx), "big")
		inst.Spec.Limits.MaxMessageSize = broker.MaxBodySize + 1
		err := k8sClient.Create(ctx, inst)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "got %v", err)
	})
})
