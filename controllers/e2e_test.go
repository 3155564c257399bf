package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	rocketmq "github.com/apache/rocketmq-client-go/v2"
	rmqconsumer "github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	rmqproducer "github.com/apache/rocketmq-client-go/v2/producer"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
)

// readSamples decodes the files of config/samples whose names start with prefix,
// as `kubectl apply -f` would read them.
func readSamples(prefix string) []*unstructured.Unstructured {
	GinkgoHelper()
	paths, err := filepath.Glob(filepath.Join("..", "config", "samples", prefix+"*.yaml"))
	Expect(err).NotTo(HaveOccurred())
	Expect(paths).NotTo(BeEmpty())
	var objs []*unstructured.Unstructured
	for _, p := range paths {
		f, err := os.Open(p)
		Expect(err).NotTo(HaveOccurred())
		dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
		for {
			u := &unstructured.Unstructured{}
			err := dec.Decode(&u.Object)
			if errors.Is(err, io.EOF) {
				break
			}
			Expect(err).NotTo(HaveOccurred(), p)
			if len(u.Object) > 0 {
				objs = append(objs, u)
			}
		}
		Expect(f.Close()).To(Succeed())
	}
	return objs
}

var _ = Describe("End to end", func() {
	It("applies the samples, serves them to the real SDK, and deletes everything from the broker", func(ctx SpecContext) {
		ns := newNamespace(ctx)
		objs := readSamples("mq_v1alpha1_")
		kinds := map[string]int{}
		for _, o := range objs {
			o.SetNamespace(ns)
			Expect(k8sClient.Create(ctx, o)).To(Succeed(), "%s %s", o.GetKind(), o.GetName())
			kinds[o.GetKind()]++
		}
		Expect(kinds).To(HaveKey("Instance"))
		Expect(kinds).To(HaveKey("Topic"))
		Expect(kinds).To(HaveKey("ConsumerGroup"))

		// Everything comes Ready, as `kubectl wait --for=condition=Ready` would see it.
		for _, o := range objs {
			Eventually(func(g Gomega) {
				u := &unstructured.Unstructured{}
				u.SetGroupVersionKind(o.GroupVersionKind())
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), u)).To(Succeed())
				conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
				ready := false
				for _, c := range conds {
					c := c.(map[string]any)
					ready = ready || (c["type"] == mqv1alpha1.ConditionReady && c["status"] == string(metav1.ConditionTrue))
				}
				g.Expect(ready).To(BeTrue(), "%s %s is not Ready: %v", o.GetKind(), o.GetName(), conds)
			}).Should(Succeed())
		}

		// An application reads its connection settings from the Instance's Secret.
		inst := &mqv1alpha1.Instance{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "demo"}, inst)).To(Succeed())
		secret := &corev1.Secret{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: inst.Status.CredentialsSecret}, secret)).To(Succeed())
		endpoint := string(secret.Data[mqv1alpha1.SecretKeyHTTPEndpoint])
		Expect(endpoint).To(Equal(inst.Status.Endpoints.HTTP))
		instanceID := string(secret.Data[mqv1alpha1.SecretKeyInstanceID])
		Expect(instanceID).To(Equal(inst.Status.InstanceID))
		sdk := mqsdk.NewAliyunMQClient(endpoint, string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID]),
			string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret]), "")

		// The sample topic TopicA and group GID_http, by their broker-side names.
		producer := sdk.GetProducer(instanceID, "TopicA")
		sent := map[string]bool{}
		for i := range 5 {
			body := fmt.Sprintf("order %d", i)
			_, err := producer.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: body, MessageTag: "created", MessageKey: fmt.Sprint(i)})
			Expect(err).NotTo(HaveOccurred())
			sent[body] = true
		}
		consumer := sdk.GetConsumer(instanceID, "TopicA", "GID_http", "created")
		got := map[string]bool{}
		Eventually(func(g Gomega) {
			resp := make(chan mqsdk.ConsumeMessageResponse, 1)
			errc := make(chan error, 1)
			consumer.ConsumeMessage(resp, errc, 16, 1)
			select {
			case r := <-resp:
				var handles []string
				for _, m := range r.Messages {
					got[m.MessageBody] = true
					handles = append(handles, m.ReceiptHandle)
				}
				g.Expect(consumer.AckMessage(handles)).To(Succeed())
			case err := <-errc:
				g.Expect(err.Error()).To(ContainSubstring("MessageNotExist"))
			}
			g.Expect(got).To(Equal(sent))
		}).Should(Succeed())

		// The TCP endpoint from the same Secret, with the RocketMQ client: the
		// instance id is the client's namespace, the AccessKey pair its credentials.
		tcpEndpoint := string(secret.Data[mqv1alpha1.SecretKeyTCPEndpoint])
		Expect(tcpEndpoint).To(Equal(inst.Status.Endpoints.TCP))
		creds := primitive.Credentials{AccessKey: string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID]),
			SecretKey: string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret])}
		tcpProducer, err := rocketmq.NewProducer(rmqproducer.WithNameServer([]string{tcpEndpoint}), rmqproducer.WithCredentials(creds),
			rmqproducer.WithNamespace(instanceID), rmqproducer.WithGroupName("PID_e2e"))
		Expect(err).NotTo(HaveOccurred())
		Expect(tcpProducer.Start()).To(Succeed())
		_, err = tcpProducer.SendSync(ctx, primitive.NewMessage("TopicA", []byte("over tcp")).WithTag("created"))
		Expect(err).NotTo(HaveOccurred())
		Expect(tcpProducer.Shutdown()).To(Succeed())
		tcpGot := make(chan string, 16)
		tcpConsumer, err := rocketmq.NewPushConsumer(rmqconsumer.WithNameServer([]string{tcpEndpoint}), rmqconsumer.WithCredentials(creds),
			rmqconsumer.WithNamespace(instanceID), rmqconsumer.WithGroupName("GID_tcp"), rmqconsumer.WithInstance("e2e"),
			rmqconsumer.WithConsumeFromWhere(rmqconsumer.ConsumeFromFirstOffset))
		Expect(err).NotTo(HaveOccurred())
		Expect(tcpConsumer.Subscribe("TopicA", rmqconsumer.MessageSelector{}, func(_ context.Context, ms ...*primitive.MessageExt) (rmqconsumer.ConsumeResult, error) {
			for _, m := range ms {
				tcpGot <- string(m.Body)
			}
			return rmqconsumer.ConsumeSuccess, nil
		})).To(Succeed())
		Expect(tcpConsumer.Start()).To(Succeed())
		var viaTCP []string
		Eventually(func() []string {
			for {
				select {
				case b := <-tcpGot:
					viaTCP = append(viaTCP, b)
				default:
					return viaTCP
				}
			}
		}).Should(HaveLen(6), "GID_tcp gets the 5 HTTP messages and the TCP one")
		Expect(viaTCP).To(ContainElement("over tcp"))
		Expect(tcpConsumer.Shutdown()).To(Succeed())
		sent["over tcp"] = true

		// The status shows what the broker holds.
		topic := &mqv1alpha1.Topic{}
		Eventually(func(g Gomega) {
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "orders"}, topic)).To(Succeed())
			g.Expect(topic.Status.Messages).To(BeEquivalentTo(6))
		}).Should(Succeed())

		// A key of this instance reaches nothing of another instance.
		other := readyInstance(ctx, newNamespace(ctx), "other")
		_, err = sdk.GetProducer(other.Status.InstanceID, "TopicA").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"})
		Expect(err).To(HaveOccurred())

		// Delete everything, children first as `kubectl delete -f config/samples` does
		// in file order, and wait until every object is gone.
		for _, o := range objs {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, o))).To(Succeed())
		}
		for _, o := range objs {
			Eventually(func() bool {
				u := &unstructured.Unstructured{}
				u.SetGroupVersionKind(o.GroupVersionKind())
				return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKeyFromObject(o), u))
			}).Should(BeTrue(), "%s %s still exists", o.GetKind(), o.GetName())
		}
		_, err = testBroker.Instance(instanceID)
		Expect(err).To(MatchError(broker.ErrInstanceNotFound), "the broker must hold nothing of the deleted instance")
		_, err = testBroker.Topics(instanceID)
		Expect(err).To(MatchError(broker.ErrInstanceNotFound))
		for _, info := range testBroker.Instances() {
			Expect(info.ID).NotTo(Equal(instanceID))
		}
		_, _, ok := testBroker.LookupAccessKey(string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID]))
		Expect(ok).To(BeFalse(), "the deleted instance's key must not authenticate")
	})
})
