package controllers

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/devcluster"
)

// BenchmarkDeclare1000TopicsAndGroups measures what issue 5 asks: the time from
// creating 1,000 Topics and 1,000 ConsumerGroups until all are Ready, next to the
// time the apiserver alone takes to create the same objects with no operator
// running, and the operator's peak resident memory. The operator is the real
// binary (`go build .`), run as its own process against envtest, so its memory is
// measured alone. Both runs create the objects the same way: 16 concurrent
// clients, as a GitOps tool applying a large directory would.
//
// Reported: apiserver-s (creation alone), floor-s (creation plus the update and
// status patch per object that any operator with a finalizer and a Ready
// condition must make, made by the client alone), ready-s (creation through all
// Ready with the operator), ratio (ready-s / apiserver-s; the goal is at most 2)
// and manager-MiB (peak RSS).
func BenchmarkDeclare1000TopicsAndGroups(b *testing.B) {
	const perKind, workers = 1000, 16
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join("..", "bin", "k8s", "1.36.3")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := devcluster.StartEnvironment(env, b.TempDir()) // its children die with the benchmark
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = mqv1alpha1.AddToScheme(scheme)
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	// The operator binary, as users run it.
	dir := b.TempDir()
	bin := filepath.Join(dir, "orderly")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	user, err := env.AddUser(envtest.User{Name: "orderly", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		b.Fatal(err)
	}
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		b.Fatal(err)
	}

	var apiSecs, floorSecs, readySecs, peakMiB []float64
	for i := 0; i < b.N; i++ {
		// The apiserver alone: no operator runs, nothing becomes Ready.
		base := createNamespace(b, c, ctx, fmt.Sprintf("apiserver-only-%d", i))
		start := time.Now()
		objs := createTopicsAndGroups(b, c, ctx, base, perKind, workers)
		apiSecs = append(apiSecs, time.Since(start).Seconds())
		// What the apiserver alone takes for the writes no operator with finalizers
		// and status conditions can avoid: the floor under ready-s.
		writeLikeAnOperator(b, c, ctx, objs, workers)
		floorSecs = append(floorSecs, time.Since(start).Seconds())
		// Without the operator there are no finalizers: the objects go at once.
		_ = c.DeleteAllOf(ctx, &mqv1alpha1.Topic{}, client.InNamespace(base))
		_ = c.DeleteAllOf(ctx, &mqv1alpha1.ConsumerGroup{}, client.InNamespace(base))

		// The operator, with an Instance Ready before the clock starts.
		mgr := startManager(b, bin, kubeconfigPath, filepath.Join(dir, fmt.Sprintf("data-%d", i)))
		ns := createNamespace(b, c, ctx, fmt.Sprintf("operated-%d", i))
		if err := c.Create(ctx, &mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bench"}}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 60*time.Second, func() bool {
			inst := &mqv1alpha1.Instance{}
			return c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "bench"}, inst) == nil &&
				meta.IsStatusConditionTrue(inst.Status.Conditions, mqv1alpha1.ConditionReady)
		})
		// Readiness is watched, as `kubectl wait` does, not listed over and over:
		// lists of 2,000 objects would cost the apiserver more than the operator does.
		watched, stopWatch := watchingCache(b, cfg, scheme, ns)
		start = time.Now()
		createTopicsAndGroups(b, c, ctx, ns, perKind, workers)
		waitFor(b, 10*time.Minute, func() bool {
			return countReady(b, watched, ctx, ns) == 2*perKind
		})
		readySecs = append(readySecs, time.Since(start).Seconds())
		stopWatch()
		peakMiB = append(peakMiB, mgr.peakMiB())
		mgr.stop(b)
	}
	b.ReportMetric(median(apiSecs), "apiserver-s")
	b.ReportMetric(median(readySecs), "ready-s")
	b.ReportMetric(median(floorSecs), "floor-s")
	b.ReportMetric(median(readySecs)/median(apiSecs), "ratio")
	b.ReportMetric(median(peakMiB), "manager-MiB")
	b.ReportMetric(0, "ns/op") // the run's length says nothing here
}

func createNamespace(b *testing.B, c client.Client, ctx context.Context, name string) string {
	b.Helper()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		b.Fatal(err)
	}
	return name
}

// createTopicsAndGroups creates n Topics and n ConsumerGroups in ns from workers
// concurrent clients, and returns them.
func createTopicsAndGroups(b *testing.B, c client.Client, ctx context.Context, ns string, n, workers int) []client.Object {
	b.Helper()
	objs := make([]client.Object, 0, 2*n)
	for i := range n {
		objs = append(objs,
			&mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("topic-%04d", i)},
				Spec: mqv1alpha1.TopicSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: "bench"}}},
			&mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("group-%04d", i)},
				Spec: mqv1alpha1.ConsumerGroupSpec{InstanceRef: mqv1alpha1.InstanceReference{Name: "bench"}}})
	}
	forEach(b, objs, workers, func(o client.Object) error { return c.Create(ctx, o) })
	return objs
}

// forEach calls f on every object from workers goroutines.
func forEach(b *testing.B, objs []client.Object, workers int, f func(client.Object) error) {
	b.Helper()
	work := make(chan client.Object, len(objs))
	for _, o := range objs {
		work <- o
	}
	close(work)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for o := range work {
				if err := f(o); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// writeLikeAnOperator makes, from the client, the two writes any operator with a
// finalizer and a status makes per object: an update of the object (a label stands
// in for the finalizer, so that the objects can still be deleted at once) and a
// status patch with a Ready condition.
func writeLikeAnOperator(b *testing.B, c client.Client, ctx context.Context, objs []client.Object, workers int) {
	b.Helper()
	forEach(b, objs, workers, func(o client.Object) error {
		o.SetLabels(map[string]string{"bench": "floor"})
		return c.Update(ctx, o)
	})
	forEach(b, objs, workers, func(o client.Object) error {
		before := o.DeepCopyObject().(client.Object)
		obj := o.(brokerObject)
		conds := obj.GetConditions()
		meta.SetStatusCondition(&conds, metav1.Condition{Type: mqv1alpha1.ConditionReady, Status: metav1.ConditionTrue,
			Reason: mqv1alpha1.ReasonReconciled, Message: "The broker serves it"})
		obj.SetConditions(conds)
		return c.Status().Patch(ctx, o, client.MergeFrom(before))
	})
}

// watchingCache returns a reader of ns's Topics and ConsumerGroups kept current by
// watches.
func watchingCache(b *testing.B, cfg *rest.Config, scheme *runtime.Scheme, ns string) (client.Reader, func()) {
	b.Helper()
	informers, err := cache.New(cfg, cache.Options{Scheme: scheme, DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	for _, o := range []client.Object{&mqv1alpha1.Topic{}, &mqv1alpha1.ConsumerGroup{}} {
		if _, err := informers.GetInformer(ctx, o); err != nil {
			b.Fatal(err)
		}
	}
	go func() { _ = informers.Start(ctx) }()
	if !informers.WaitForCacheSync(ctx) {
		b.Fatal("cache did not sync")
	}
	return informers, cancel
}

func countReady(b *testing.B, c client.Reader, ctx context.Context, ns string) int {
	b.Helper()
	var topics mqv1alpha1.TopicList
	var groups mqv1alpha1.ConsumerGroupList
	if err := c.List(ctx, &topics, client.InNamespace(ns)); err != nil {
		b.Fatal(err)
	}
	if err := c.List(ctx, &groups, client.InNamespace(ns)); err != nil {
		b.Fatal(err)
	}
	n := 0
	for i := range topics.Items {
		if meta.IsStatusConditionTrue(topics.Items[i].Status.Conditions, mqv1alpha1.ConditionReady) {
			n++
		}
	}
	for i := range groups.Items {
		if meta.IsStatusConditionTrue(groups.Items[i].Status.Conditions, mqv1alpha1.ConditionReady) {
			n++
		}
	}
	return n
}

func waitFor(b *testing.B, limit time.Duration, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("condition not met within %s", limit)
		}
		time.Sleep(50 * time.Millisecond) // polling the apiserver; there is nothing to wait on
	}
}

type managerProcess struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startManager(b *testing.B, bin, kubeconfig, dataDir string) *managerProcess {
	b.Helper()
	cmd := exec.Command(bin, "--metrics-bind-address=0", "--health-probe-bind-address=0",
		"--http-bind-address=127.0.0.1:0", "--tcp-bind-address=127.0.0.1:0",
		"--advertise-host=127.0.0.1", "--runtime-image=orderly:bench", "--data-dir="+dataDir, "--zap-log-level=error")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := devcluster.StartChild(cmd); err != nil { // it dies with the test
		b.Fatal(err)
	}
	return &managerProcess{cmd: cmd, out: out}
}

// peakMiB is the process's peak resident set (VmHWM).
func (m *managerProcess) peakMiB() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kib, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kib / 1024
		}
	}
	return -1
}

func (m *managerProcess) stop(b *testing.B) {
	b.Helper()
	_ = m.cmd.Process.Signal(os.Interrupt)
	if err := m.cmd.Wait(); err != nil {
		b.Errorf("manager exited with %v:\n%s", err, m.out)
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
