// Command publish publishes test messages to an Instance's topic through its
// mq-http endpoint, with the connection settings from the Instance's Secret. It is a
// development aid for `make run`:
//
//	go run ./hack/publish -topic MQ_ORDER -n 20 -keys 4
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "bin/dev/kubeconfig", "kubeconfig of the cluster (make run writes bin/dev/kubeconfig)")
	namespace := flag.String("namespace", "default", "namespace of the Instance")
	instance := flag.String("instance", "demo", "name of the Instance")
	topic := flag.String("topic", "MQ_ORDER", "broker-side topic name")
	n := flag.Int("n", 10, "messages to publish")
	keys := flag.Int("keys", 0, "spread messages over this many sharding keys (ordered topics)")
	tag := flag.String("tag", "", "message tag")
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *instance, *topic, *tag, *n, *keys); err != nil {
		fmt.Fprintln(os.Stderr, "publish:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace, instance, topic, tag string, n, keys int) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = mqv1alpha1.AddToScheme(scheme)
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ctx := context.Background()
	inst := &mqv1alpha1.Instance{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: instance}, inst); err != nil {
		return err
	}
	secret := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: inst.Status.CredentialsSecret}, secret); err != nil {
		return err
	}
	hc, err := mqhttp.NewHTTPClient(secret.Data[mqv1alpha1.SecretKeyCACert], 40*time.Second)
	if err != nil {
		return err
	}
	mq := &mqhttp.Client{
		HTTP:            hc,
		Endpoint:        string(secret.Data[mqv1alpha1.SecretKeyHTTPEndpoint]),
		InstanceID:      string(secret.Data[mqv1alpha1.SecretKeyInstanceID]),
		AccessKeyID:     string(secret.Data[mqv1alpha1.SecretKeyAccessKeyID]),
		AccessKeySecret: string(secret.Data[mqv1alpha1.SecretKeyAccessKeySecret]),
	}
	for i := range n {
		key := ""
		if keys > 0 {
			key = "key-" + strconv.Itoa(i%keys)
		}
		id, err := mq.Publish(ctx, topic, fmt.Sprintf("message %d", i), tag, key)
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s\tmessage %d\n", id, key, i)
	}
	return nil
}
