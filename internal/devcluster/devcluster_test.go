package devcluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
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

// TestBehavesLikeACluster checks what kube-controller-manager brings to the dev
// control plane: a deleted namespace goes, with what was in it; an object whose
// owner is deleted is collected; a new namespace gets its default ServiceAccount.
func TestBehavesLikeACluster(t *testing.T) {
	c, err := Start(Options{
		Dir:       t.TempDir(),
		AssetsDir: assetsDir(t),
		CRDDir:    filepath.Join("..", "..", "config", "crd", "bases"),
		Scheme:    clientgoscheme.Scheme,
		Log:       testr.New(t),
	})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	ctx := context.Background()
	cl, err := client.New(c.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "doomed"}}
	if err := cl.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	until(t, "the default ServiceAccount of namespace doomed", func() bool {
		return cl.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: "default"}, &corev1.ServiceAccount{}) == nil
	})

	owner := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "owner"}}
	if err := cl.Create(ctx, owner); err != nil {
		t.Fatal(err)
	}
	owned := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "owned",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID}}}}
	kept := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "kept"}}
	for _, o := range []client.Object{owned, kept} {
		if err := cl.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Delete(ctx, owner); err != nil {
		t.Fatal(err)
	}
	until(t, "the garbage collector to delete the Secret owned by the deleted ConfigMap", func() bool {
		return apierrors.IsNotFound(cl.Get(ctx, client.ObjectKeyFromObject(owned), &corev1.Secret{}))
	})
	if err := cl.Get(ctx, client.ObjectKeyFromObject(kept), &corev1.Secret{}); err != nil {
		t.Fatalf("a Secret without an owner went too: %v", err)
	}

	if err := cl.Delete(ctx, ns); err != nil {
		t.Fatal(err)
	}
	until(t, "namespace doomed to be deleted", func() bool {
		return apierrors.IsNotFound(cl.Get(ctx, client.ObjectKeyFromObject(ns), &corev1.Namespace{}))
	})
	if err := cl.Get(ctx, client.ObjectKeyFromObject(kept), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("Secret of the deleted namespace: %v, want NotFound", err)
	}
}

// TestChildrenDieWithTheManager runs this test binary as a dev process that starts
// a control plane, kills it with SIGKILL, and expects etcd, kube-apiserver and
// kube-controller-manager to go with it: no process is left on its directory.
func TestChildrenDieWithTheManager(t *testing.T) {
	dir := t.TempDir()
	assets, err := filepath.Abs(assetsDir(t))
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(self, "-test.run=^$")
	parent.Env = append(os.Environ(), parentEnv+"="+dir, "KUBEBUILDER_ASSETS="+assets)
	var stderr bytes.Buffer
	parent.Stderr = &stderr
	out, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever the outcome, leave nothing running.
		_ = parent.Process.Kill()
		for _, pid := range processesOn(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			_ = parent.Process.Kill()
			_ = parent.Wait()
			t.Fatalf("dev process did not start its control plane: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(4 * time.Minute):
		_ = parent.Process.Kill()
		_ = parent.Wait()
		t.Fatalf("dev process not ready after 4 minutes; stderr:\n%s", stderr.String())
	}

	children := map[string]int{}
	for _, pid := range childrenOf(parent.Process.Pid) {
		children[filepath.Base(cmdline(pid)[0])] = pid
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, ok := children[name]; !ok {
			t.Fatalf("no %s among the dev process's children %v", name, children)
		}
	}
	if err := parent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = parent.Wait()
	until(t, "the control plane to die with its parent", func() bool {
		for _, pid := range children {
			if alive(pid) {
				return false
			}
		}
		return len(processesOn(dir)) == 0
	})
}

// until polls cond until it holds, and fails the test after a minute.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// childrenOf returns the live processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	for _, p := range allPids() {
		raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "stat"))
		if err != nil {
			continue
		}
		s := string(raw)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state, ppid, ...
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && alive(p) {
			out = append(out, p)
		}
	}
	return out
}

// processesOn returns the live processes with an argument inside dir.
func processesOn(dir string) []int {
	var out []int
	for _, p := range allPids() {
		for _, a := range cmdline(p) {
			if strings.Contains(a, dir) && alive(p) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func allPids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) []string {
	raw, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
}
