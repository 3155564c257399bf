package controllers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/consumer"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

// consumerEnv is one spec's Instance, Topic and group, and a directory the handler
// script records into.
type consumerEnv struct {
	ns, dir string
	inst    *mqv1alpha1.Instance
	topic   *mqv1alpha1.Topic
	group   *mqv1alpha1.ConsumerGroup
	client  *mqhttp.Client
	next    int // the body of the next message published
}

func newConsumerEnv(ctx context.Context, messageType string, queues int32, maxRedeliveries int32) *consumerEnv {
	GinkgoHelper()
	e := &consumerEnv{ns: newNamespace(ctx), dir: GinkgoT().TempDir()}
	e.inst = readyInstance(ctx, e.ns, "demo")
	e.topic = newTopic(e.ns, "work", "demo")
	e.topic.Spec.TopicName = "MQ_WORK"
	e.topic.Spec.MessageType = mqv1alpha1.MessageType(messageType)
	e.topic.Spec.Queues = queues
	e.group = newGroup(e.ns, "workers", "demo", "HTTP")
	e.group.Spec.GroupID = "GID_workers"
	e.group.Spec.MaxRedeliveries = maxRedeliveries
	Expect(k8sClient.Create(ctx, e.topic)).To(Succeed())
	Expect(k8sClient.Create(ctx, e.group)).To(Succeed())
	expectCondition(ctx, e.topic, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
	expectCondition(ctx, e.group, mqv1alpha1.ConditionReady, metav1.ConditionTrue, mqv1alpha1.ReasonReconciled)
	secret := &corev1.Secret{}
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: e.inst.Status.CredentialsSecret}, secret)).To(Succeed())
	e.client = &mqhttp.Client{Endpoint: e.inst.Status.Endpoints.HTTP, InstanceID: e.inst.Status.InstanceID,
		AccessKeyID: string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID]), AccessKeySecret: string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret])}
	return e
}

// publish publishes n messages with bodies counting on from the last publish's;
// body i has sharding key i % keys.
func (e *consumerEnv) publish(ctx context.Context, n, keys int) {
	GinkgoHelper()
	for i := e.next; i < e.next+n; i++ {
		key := ""
		if keys > 0 {
			key = "k" + strconv.Itoa(i%keys)
		}
		_, err := e.client.Publish(ctx, "MQ_WORK", strconv.Itoa(i), "", key)
		Expect(err).NotTo(HaveOccurred())
	}
	e.next += n
}

// The handler: records each message it handles as "key body id consumedTimes" in
// $DIR/handled, and "overlap key" in $DIR/violations if another handler holds the
// same key at the same time; fails for bodies listed in $FAIL; sleeps on its first
// delivery of the body in $SLOW after touching $DIR/slow-started.
const handlerScript = `set -e
body=$(cat)
key=${ORDERLY_SHARDING_KEY:-none}
if ! mkdir "$DIR/lock.$key" 2>/dev/null; then echo "overlap $key" >> "$DIR/violations"; fi
trap 'rmdir "$DIR/lock.$key" 2>/dev/null || true' EXIT
case " $FAIL " in *" $body "*) exit 3 ;; esac
if [ "$body" = "$SLOW" ] && [ "$ORDERLY_CONSUMED_TIMES" = 1 ]; then touch "$DIR/slow-started"; sleep 60; fi
echo "$key $body $ORDERLY_MESSAGE_ID $ORDERLY_CONSUMED_TIMES" >> "$DIR/handled"
`

func (e *consumerEnv) messageConsumer(name string, parallelism int32, mode mqv1alpha1.CompletionMode, env ...corev1.EnvVar) *mqv1alpha1.MessageConsumer {
	return &mqv1alpha1.MessageConsumer{
		ObjectMeta: metav1.ObjectMeta{Namespace: e.ns, Name: name},
		Spec: mqv1alpha1.MessageConsumerSpec{
			InstanceRef: mqv1alpha1.LocalReference{Name: "demo"}, Topic: "work",
			ConsumerGroupRef: mqv1alpha1.LocalReference{Name: "workers"},
			Parallelism:      ptr.To(parallelism),
			CompletionPolicy: mqv1alpha1.CompletionPolicy{Mode: mode},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "handler", Image: "busybox", Command: []string{"sh", "-c", handlerScript},
				Env: append([]corev1.EnvVar{{Name: "DIR", Value: e.dir}, {Name: consumer.EnvIdleSeconds, Value: "1"}}, env...),
			}}}},
		},
	}
}

// handled reads $DIR/handled: per key, the bodies in the order handled.
func (e *consumerEnv) handled() (all []string, perKey map[string][]int) {
	perKey = map[string][]int{}
	b, _ := os.ReadFile(filepath.Join(e.dir, "handled"))
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		n, _ := strconv.Atoi(f[1])
		perKey[f[0]] = append(perKey[f[0]], n)
		all = append(all, f[1])
	}
	return all, perKey
}

func (e *consumerEnv) violations() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "violations"))
	return string(b)
}

func consumerPods(ctx context.Context, mc *mqv1alpha1.MessageConsumer) []corev1.Pod {
	GinkgoHelper()
	var pods corev1.PodList
	Expect(k8sClient.List(ctx, &pods, client.InNamespace(mc.Namespace), client.MatchingLabels{ConsumerLabel: mc.Name})).To(Succeed())
	return pods.Items
}

func expectConsumerCondition(ctx context.Context, mc *mqv1alpha1.MessageConsumer, typ, reason string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
		c := meta.FindStatusCondition(mc.Status.Conditions, typ)
		g.Expect(c).NotTo(BeNil(), "no %s condition; conditions: %+v", typ, mc.Status.Conditions)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%s: %s", c.Reason, c.Message)
		g.Expect(c.Reason).To(Equal(reason), c.Message)
	}, "60s").Should(Succeed())
}

// increasing reports whether xs only grows.
func increasing(xs []int) bool {
	return slices.IsSorted(xs) && len(slices.Compact(slices.Clone(xs))) == len(xs)
}

var _ = Describe("MessageConsumer", func() {
	It("drains an ordered topic with 4 queues over 3 pods: every message once, in per-key order", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Ordered", 4, 16)
		e.publish(ctx, 60, 8)
		mc := e.messageConsumer("drain", 3, mqv1alpha1.CompletionDrain)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())

		// The pods: owned, non-root with a read-only root filesystem, and the
		// credentials by reference only.
		Eventually(func() int { return len(consumerPods(ctx, mc)) }).Should(BeNumerically(">=", 1))
		pod := consumerPods(ctx, mc)[0]
		Expect(metav1.IsControlledBy(&pod, mc)).To(BeTrue())
		Expect(*pod.Spec.SecurityContext.RunAsNonRoot).To(BeTrue())
		Expect(*pod.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
		Expect(pod.Spec.Containers[0].Command[:3]).To(Equal([]string{RuntimePath, "consume", "--"}))
		Expect(pod.Spec.InitContainers[0].Command).To(Equal([]string{"/orderly", "install-runtime", RuntimePath}))
		secret := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: e.inst.Status.CredentialsSecret}, secret)).To(Succeed())
		podJSON, _ := json.Marshal(pod)
		Expect(string(podJSON)).NotTo(ContainSubstring(string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret])))
		Expect(string(podJSON)).To(ContainSubstring(`"secretKeyRef"`))

		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonDrained)
		Expect(mc.Status.CompletionTime).NotTo(BeNil())
		Expect(mc.Status.EffectiveParallelism).To(BeEquivalentTo(3))
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(60))
			g.Expect(mc.Status.Active).To(BeZero())
		}).Should(Succeed())

		all, perKey := e.handled()
		Expect(all).To(HaveLen(60), "every message exactly once")
		Expect(slices.Compact(slices.Sorted(slices.Values(all)))).To(HaveLen(60))
		for key, bodies := range perKey {
			Expect(increasing(bodies)).To(BeTrue(), "key %s handled out of order: %v", key, bodies)
		}
		Expect(e.violations()).To(BeEmpty(), "two pods held one key at once")
		Expect(len(consumerPods(ctx, mc))).To(BeNumerically("<=", 6), "no pod storm")
	})

	It("says so when parallelism exceeds an ordered topic's queues", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Ordered", 2, 16)
		mc := e.messageConsumer("capped", 5, mqv1alpha1.CompletionForever)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			c := meta.FindStatusCondition(mc.Status.Conditions, mqv1alpha1.ConditionReady)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal("ParallelismCapped"))
			g.Expect(c.Message).To(ContainSubstring("at most 2 of the 5 pods"))
			g.Expect(mc.Status.EffectiveParallelism).To(BeEquivalentTo(2))
			g.Expect(mc.Status.Active).To(BeEquivalentTo(2))
		}).Should(Succeed())
		Consistently(func() int { return len(consumerPods(ctx, mc)) }, "2s").Should(Equal(2))
		Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
	})

	It("redelivers what a handler fails and dead-letters it past the group's limit", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 4, 2)
		e.publish(ctx, 10, 0)
		mc := e.messageConsumer("flaky", 2, mqv1alpha1.CompletionDrain, corev1.EnvVar{Name: "FAIL", Value: "3 7"})
		mc.Spec.HandlerTimeoutSeconds = 1
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonDrained)
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(8))
			// Each poison message: its first delivery and two redeliveries failed.
			g.Expect(mc.Status.HandlerFailures).To(BeEquivalentTo(6))
			g.Expect(mc.Status.Failed).To(BeZero(), "handler failures must not fail pods")
		}).Should(Succeed())
		all, _ := e.handled()
		Expect(all).To(ConsistOf("0", "1", "2", "4", "5", "6", "8", "9"))
		dead, _, err := testBroker.DeadLetters(e.inst.Status.InstanceID, "GID_workers", 0, 16)
		Expect(err).NotTo(HaveOccurred())
		var bodies []string
		for _, m := range dead {
			bodies = append(bodies, string(m.Body))
		}
		Expect(bodies).To(ConsistOf("3", "7"))
	})

	It("shows the counts moving while its pods run", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 2, 2)
		e.publish(ctx, 5, 0)
		mc := e.messageConsumer("live", 1, mqv1alpha1.CompletionForever, corev1.EnvVar{Name: "FAIL", Value: "3"})
		mc.Spec.HandlerTimeoutSeconds = 1
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		// A Forever consumer's pod never ends: every count here comes from the
		// broker, where its runtime reports them.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(4))
			// The poison message: its delivery and two redeliveries failed.
			g.Expect(mc.Status.HandlerFailures).To(BeEquivalentTo(3))
			g.Expect(mc.Status.InProgress).To(Equal(&mqv1alpha1.ConsumerCounts{MessagesHandled: 4, HandlerFailures: 3}))
			g.Expect(mc.Status.Active).To(BeEquivalentTo(1))
			g.Expect(mc.Status.Succeeded + mc.Status.Failed).To(BeZero())
		}, "60s").Should(Succeed())
		e.publish(ctx, 2, 0)
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(6))
		}, "30s").Should(Succeed())
		// Deleted, the pod stops and its final count replaces its report: the
		// total stays.
		Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(consumerPods(ctx, mc)).To(BeEmpty())
		}, "30s").Should(Succeed())
	})

	It("loses nothing and breaks no order when a pod is killed mid-message", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Ordered", 1, 16)
		e.publish(ctx, 10, 1)
		mc := e.messageConsumer("killed", 1, mqv1alpha1.CompletionDrain, corev1.EnvVar{Name: "SLOW", Value: "4"})
		mc.Spec.HandlerTimeoutSeconds = 2
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		Eventually(func() error { _, err := os.Stat(filepath.Join(e.dir, "slow-started")); return err }, "30s").Should(Succeed())
		pods := consumerPods(ctx, mc)
		Expect(pods).To(HaveLen(1))
		Expect(testRunner.Kill(pods[0].UID)).To(Succeed())

		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonDrained)
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.Failed).To(BeEquivalentTo(1), "the killed pod")
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(6), "what the replacement handled")
		}).Should(Succeed())
		_, perKey := e.handled()
		Expect(perKey["k0"]).To(Equal([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}))
	})

	It("fails after backoffLimit failed pods, as a Job does", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		// A wrong secret: the runtime cannot consume and its pod fails.
		mc := e.messageConsumer("doomed", 1, mqv1alpha1.CompletionForever, corev1.EnvVar{Name: consumer.EnvAccessKeySecret, Value: "wrong"})
		mc.Spec.BackoffLimit = ptr.To[int32](1)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonBackoffLimitExceeded)
		Expect(mc.Status.Failed).To(BeEquivalentTo(2))
		Consistently(func() int { return len(consumerPods(ctx, mc)) }, "2s").Should(Equal(2), "no pod after failing")
	})

	It("stops at activeDeadlineSeconds, as a Job does", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		mc := e.messageConsumer("deadline", 1, mqv1alpha1.CompletionForever)
		mc.Spec.ActiveDeadlineSeconds = ptr.To[int64](3)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionFailed, mqv1alpha1.ReasonDeadlineExceeded)
		Eventually(func(g Gomega) {
			for _, p := range consumerPods(ctx, mc) {
				g.Expect(isTerminal(&p)).To(BeTrue(), "pod %s still running", p.Name)
				g.Expect(testRunner.Running(p.UID)).To(BeFalse())
			}
		}).Should(Succeed())
	})

	It("suspends and resumes, rolls pods over on a template change, and stops its pods when deleted", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 2, 16)
		mc := e.messageConsumer("worker", 2, mqv1alpha1.CompletionForever)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		running := func(g Gomega) []corev1.Pod {
			var out []corev1.Pod
			for _, p := range consumerPods(ctx, mc) {
				if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp.IsZero() {
					out = append(out, p)
				}
			}
			return out
		}
		Eventually(func(g Gomega) { g.Expect(running(g)).To(HaveLen(2)) }).Should(Succeed())
		e.publish(ctx, 5, 0)
		Eventually(func() []string { all, _ := e.handled(); return all }).Should(HaveLen(5))

		update := func(mutate func(*mqv1alpha1.MessageConsumer)) {
			Eventually(func(g Gomega) {
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
				mutate(mc)
				g.Expect(k8sClient.Update(ctx, mc)).To(Succeed())
			}).Should(Succeed())
		}
		suspended := consumerPods(ctx, mc)
		update(func(mc *mqv1alpha1.MessageConsumer) { mc.Spec.Suspend = ptr.To(true) })
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionSuspended, "Suspended")
		// Stopped means the processes are gone, not only the pods marked deleted:
		// the runner's SIGTERM is asynchronous, and a live one could still handle
		// a message published now.
		Eventually(func(g Gomega) {
			g.Expect(running(g)).To(BeEmpty())
			for _, p := range suspended {
				g.Expect(testRunner.Running(p.UID)).To(BeFalse(), "pod %s still running", p.Name)
			}
		}).Should(Succeed())
		e.publish(ctx, 3, 0) // waits while suspended
		Consistently(func() []string { all, _ := e.handled(); return all }, "2s").Should(HaveLen(5))

		update(func(mc *mqv1alpha1.MessageConsumer) { mc.Spec.Suspend = ptr.To(false) })
		Eventually(func(g Gomega) { g.Expect(running(g)).To(HaveLen(2)) }).Should(Succeed())
		Eventually(func() []string { all, _ := e.handled(); return all }, "30s").Should(HaveLen(8))

		// A template change replaces the pods with pods of the new template.
		oldHash := mc.Status.TemplateHash
		update(func(mc *mqv1alpha1.MessageConsumer) {
			mc.Spec.Template.Spec.Containers[0].Env = append(mc.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "VERSION", Value: "2"})
		})
		Eventually(func(g Gomega) {
			pods := running(g)
			g.Expect(pods).To(HaveLen(2))
			for _, p := range pods {
				g.Expect(p.Labels[TemplateHashLabel]).NotTo(Equal(oldHash))
			}
		}, "30s").Should(Succeed())
		e.publish(ctx, 2, 0)
		Eventually(func() []string { all, _ := e.handled(); return all }, "30s").Should(HaveLen(10))

		Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)) }, "30s").Should(BeTrue())
		Eventually(func(g Gomega) {
			for _, p := range consumerPods(ctx, mc) {
				g.Expect(testRunner.Running(p.UID)).To(BeFalse())
			}
		}).Should(Succeed())
		all, _ := e.handled()
		Expect(slices.Compact(slices.Sorted(slices.Values(all)))).To(HaveLen(10), "every message handled, none twice")
	})

	It("handles exactly the messages asked for, then completes and expires after its TTL", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 4, 16)
		e.publish(ctx, 12, 0)
		mc := e.messageConsumer("some", 2, mqv1alpha1.CompletionMessages)
		mc.Spec.CompletionPolicy.Messages = ptr.To[int64](5)
		mc.Spec.TTLSecondsAfterFinished = ptr.To[int32](2)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonMessagesHandled)
		Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(5))
		all, _ := e.handled()
		Expect(all).To(HaveLen(5))
		Eventually(func() bool { return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)) }, "30s").Should(BeTrue())
		stats, err := testBroker.GroupStats(e.inst.Status.InstanceID, "GID_workers")
		Expect(err).NotTo(HaveOccurred())
		Expect(stats.Topics[0].Backlog).To(BeEquivalentTo(7), "the rest stays for the group")
	})

	It("waits for its dependencies with a clear reason", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		mc := (&consumerEnv{ns: ns, dir: GinkgoT().TempDir()}).messageConsumer("early", 1, mqv1alpha1.CompletionDrain)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			c := meta.FindStatusCondition(mc.Status.Conditions, mqv1alpha1.ConditionReady)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(mqv1alpha1.ReasonWaitingForDependencies))
			g.Expect(c.Message).To(ContainSubstring(`Instance "demo" does not exist`))
		}).Should(Succeed())
		Expect(consumerPods(ctx, mc)).To(BeEmpty())
		bad := mc.DeepCopy()
		bad.Name, bad.ResourceVersion = "no-command", ""
		bad.Spec.Template.Spec.Containers[0].Command = nil
		err := k8sClient.Create(ctx, bad)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "%v", err)
		Expect(err.Error()).To(ContainSubstring("command is required"))
	})
})

// labelNamespace sets the namespace's Pod Security enforce level; "" removes the
// label. The suite's apiserver runs PodSecurity admission too, so a pod the
// controller wrongly thought conforming would be rejected there.
func labelNamespace(ctx context.Context, ns, level string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		n := &corev1.Namespace{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ns}, n)).To(Succeed())
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		if level == "" {
			delete(n.Labels, "pod-security.kubernetes.io/enforce")
		} else {
			n.Labels["pod-security.kubernetes.io/enforce"] = level
		}
		g.Expect(k8sClient.Update(ctx, n)).To(Succeed())
	}).Should(Succeed())
}

// expectRefused waits for Ready=False with the reason, a message containing each
// of want, and a Warning Event saying the same; and checks that no pod is created.
func expectRefused(ctx context.Context, mc *mqv1alpha1.MessageConsumer, reason string, want ...string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
		c := meta.FindStatusCondition(mc.Status.Conditions, mqv1alpha1.ConditionReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse), "%s: %s", c.Reason, c.Message)
		g.Expect(c.Reason).To(Equal(reason), c.Message)
		g.Expect(c.ObservedGeneration).To(Equal(mc.Generation))
		for _, w := range want {
			g.Expect(c.Message).To(ContainSubstring(w))
		}
		g.Expect(mc.Status.State).To(Equal(mqv1alpha1.ConsumerWaiting))
	}).Should(Succeed())
	Eventually(func(g Gomega) {
		var evs eventsv1.EventList
		g.Expect(k8sClient.List(ctx, &evs, client.InNamespace(mc.Namespace))).To(Succeed())
		var notes []string
		for _, ev := range evs.Items {
			if ev.Regarding.Name == mc.Name && ev.Reason == reason && ev.Type == corev1.EventTypeWarning {
				notes = append(notes, ev.Note)
			}
		}
		g.Expect(notes).NotTo(BeEmpty())
		for _, w := range want {
			g.Expect(notes).To(ContainElement(ContainSubstring(w)))
		}
	}).Should(Succeed())
	Consistently(func() []corev1.Pod { return consumerPods(ctx, mc) }, "1s").Should(BeEmpty())
}

// expectPods waits for the MessageConsumer to be Ready with n pods.
func expectPods(ctx context.Context, mc *mqv1alpha1.MessageConsumer, n int) []corev1.Pod {
	GinkgoHelper()
	expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionReady, mqv1alpha1.ReasonReconciled)
	Eventually(func() []corev1.Pod { return consumerPods(ctx, mc) }).Should(HaveLen(n))
	return consumerPods(ctx, mc)
}

var _ = Describe("MessageConsumer Pod Security", func() {
	hostPath := func(s *corev1.PodSpec) {
		s.Volumes = append(s.Volumes, corev1.Volume{Name: "host-etc", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}})
	}

	It("refuses a privileged template in a namespace without a label, naming the checks, and proceeds once the template is fixed", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		mc := e.messageConsumer("privileged", 1, mqv1alpha1.CompletionForever)
		mc.Spec.Template.Spec.HostPID = true
		mc.Spec.Template.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		expectRefused(ctx, mc, mqv1alpha1.ReasonPodSecurityViolation,
			`PodSecurity "restricted:latest"`, "no pod-security.kubernetes.io/enforce label",
			"host namespaces (hostPID=true)", `privileged (container "handler" must not set securityContext.privileged=true)`)

		// A new generation with the template fixed proceeds.
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			mc.Spec.Template.Spec.HostPID = false
			mc.Spec.Template.Spec.Containers[0].SecurityContext = nil
			g.Expect(k8sClient.Update(ctx, mc)).To(Succeed())
		}).Should(Succeed())
		pod := expectPods(ctx, mc, 1)[0]
		Expect(pod.Spec.HostPID).To(BeFalse())
		Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
	})

	It("refuses hostPath and hostNetwork under restricted, and runs what baseline allows once the namespace is labelled baseline", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		labelNamespace(ctx, e.ns, "restricted")
		withHostPath := e.messageConsumer("host-path", 1, mqv1alpha1.CompletionForever)
		hostPath(&withHostPath.Spec.Template.Spec)
		withHostNetwork := e.messageConsumer("host-network", 1, mqv1alpha1.CompletionForever)
		withHostNetwork.Spec.Template.Spec.HostNetwork = true
		// Privilege escalation and a default capability: baseline allows both,
		// restricted neither.
		escalating := e.messageConsumer("escalating", 1, mqv1alpha1.CompletionForever)
		escalating.Spec.Template.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(true), Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CHOWN"}}}
		for _, mc := range []*mqv1alpha1.MessageConsumer{withHostPath, withHostNetwork, escalating} {
			Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		}
		expectRefused(ctx, withHostPath, mqv1alpha1.ReasonPodSecurityViolation, `"restricted:latest"`, `volume "host-etc" uses restricted volume type "hostPath"`)
		expectRefused(ctx, withHostNetwork, mqv1alpha1.ReasonPodSecurityViolation, `"restricted:latest"`, "host namespaces (hostNetwork=true)")
		expectRefused(ctx, escalating, mqv1alpha1.ReasonPodSecurityViolation, `"restricted:latest"`,
			`allowPrivilegeEscalation != false (container "handler"`, `unrestricted capabilities (container "handler"`)

		// Relabelling the namespace wakes the consumers; baseline still refuses host
		// paths and namespaces.
		labelNamespace(ctx, e.ns, "baseline")
		pod := expectPods(ctx, escalating, 1)[0]
		Expect(*pod.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation).To(BeTrue())
		expectRefused(ctx, withHostPath, mqv1alpha1.ReasonPodSecurityViolation, `"baseline:latest"`, `hostPath volumes (volume "host-etc")`)
		expectRefused(ctx, withHostNetwork, mqv1alpha1.ReasonPodSecurityViolation, `"baseline:latest"`, "host namespaces (hostNetwork=true)")
		for _, mc := range []*mqv1alpha1.MessageConsumer{withHostPath, withHostNetwork, escalating} {
			Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
		}
	})

	It("runs anything in a namespace labelled privileged", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		labelNamespace(ctx, e.ns, "privileged")
		mc := e.messageConsumer("anything", 1, mqv1alpha1.CompletionForever)
		spec := &mc.Spec.Template.Spec
		spec.HostNetwork, spec.HostPID, spec.HostIPC = true, true, true
		hostPath(spec)
		spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}
		spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true), AllowPrivilegeEscalation: ptr.To(true),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}}}
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		pod := expectPods(ctx, mc, 1)[0]
		Expect(pod.Spec.HostNetwork).To(BeTrue())
		Expect(*pod.Spec.Containers[0].SecurityContext.Privileged).To(BeTrue())
		Expect(k8sClient.Delete(ctx, mc)).To(Succeed())
	})

	It("runs the sample MessageConsumer in a restricted namespace, without a ServiceAccount token", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Ordered", 4, 16)
		labelNamespace(ctx, e.ns, "restricted")
		b, err := os.ReadFile(filepath.Join("..", "config", "samples", "mq_v1alpha1_messageconsumer.yaml"))
		Expect(err).NotTo(HaveOccurred())
		mc := &mqv1alpha1.MessageConsumer{}
		Expect(utilyaml.Unmarshal(b, mc)).To(Succeed())
		// The sample's template as it is, pointed at this spec's objects.
		mc.Namespace = e.ns
		mc.Spec.InstanceRef.Name, mc.Spec.Topic, mc.Spec.ConsumerGroupRef.Name = e.inst.Name, e.topic.Name, e.group.Name
		e.publish(ctx, 8, 4)
		Expect(k8sClient.Create(ctx, mc)).To(Succeed())
		Eventually(func() []corev1.Pod { return consumerPods(ctx, mc) }).ShouldNot(BeEmpty())
		pod := consumerPods(ctx, mc)[0]
		Expect(pod.Spec.AutomountServiceAccountToken).To(HaveValue(BeFalse()))
		Expect(pod.Spec.ServiceAccountName).To(BeEmpty())
		Expect(pod.Spec.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
		init := pod.Spec.InitContainers[0].SecurityContext
		Expect(*init.RunAsNonRoot).To(BeTrue())
		Expect(*init.AllowPrivilegeEscalation).To(BeFalse())
		Expect(init.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
		Expect(init.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
		expectConsumerCondition(ctx, mc, mqv1alpha1.ConditionComplete, mqv1alpha1.ReasonDrained)
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(mc), mc)).To(Succeed())
			g.Expect(mc.Status.MessagesHandled).To(BeEquivalentTo(8))
		}).Should(Succeed())
	})

	It("uses a ServiceAccount only when the template names it", func(ctx SpecContext) {
		e := newConsumerEnv(ctx, "Normal", 1, 16)
		named := e.messageConsumer("named", 1, mqv1alpha1.CompletionForever)
		named.Spec.Template.Spec.ServiceAccountName = "reader"
		projected := e.messageConsumer("projected", 1, mqv1alpha1.CompletionForever)
		projected.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}}}
		Expect(k8sClient.Create(ctx, named)).To(Succeed())
		Expect(k8sClient.Create(ctx, projected)).To(Succeed())
		pod := expectPods(ctx, named, 1)[0]
		Expect(pod.Spec.ServiceAccountName).To(Equal("reader"))
		Expect(pod.Spec.AutomountServiceAccountToken).To(BeNil(), "the ServiceAccount's own setting applies")
		expectRefused(ctx, projected, mqv1alpha1.ReasonServiceAccountNotNamed, `Volume "token" projects a ServiceAccount token`)
		Expect(k8sClient.Delete(ctx, named)).To(Succeed())
		Expect(k8sClient.Delete(ctx, projected)).To(Succeed())
	})
})
