package devcluster

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func assetsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin", "k8s", "1.36.3")
	}
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		t.Fatalf("no control-plane binaries in %s: run `make envtest` first", dir)
	}
	return dir
}

// TestStateSurvivesRestart starts the dev control plane, writes an object, stops it,
// starts it again on the same directory and reads the object back through the
// kubeconfig it wrote, as `make run` twice in a row would.
func TestStateSurvivesRestart(t *testing.T) {
	opts := Options{
		Dir:       t.TempDir(),
		AssetsDir: assetsDir(t),
		CRDDir:    filepath.Join("..", "..", "config", "crd", "bases"),
		Scheme:    clientgoscheme.Scheme,
		Log:       testr.New(t),
	}
	ctx := context.Background()

	c, err := Start(opts)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	cl, err := client.New(c.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kept"}}
	if err := cl.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	c, err = Start(opts)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath)
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	cl, err = client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Get(ctx, client.ObjectKeyFromObject(ns), ns); err != nil {
		t.Fatalf("namespace written before the restart: %v", err)
	}
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	if err := cl.Get(ctx, client.ObjectKey{Name: "instances.mq.orderly.dev"}, crd); err != nil {
		t.Fatalf("Instance CRD not installed: %v", err)
	}
}
