// Package podrunner is a stand-in kubelet for control planes without nodes (envtest,
// dev mode): it binds the pods it is given to a pseudo node, runs their first
// container's command as a local process with the pod's environment (the image,
// init containers and volumes are ignored, so it is for development and tests
// only), and writes pod phases and container states back as a kubelet would,
// termination messages included. Deleting a pod sends its process SIGTERM and,
// after the grace period, SIGKILL.
package podrunner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// NodeName is the pseudo node pods are bound to.
const NodeName = "orderly-local"

// Runner runs pods as local processes. It is a reconciler of Pods.
type Runner struct {
	Client client.Client
	// Reader reads Secrets for secretKeyRef environment variables; the manager's
	// cache may not hold them.
	Reader client.Reader
	Log    logr.Logger
	// Select says which pods to run.
	Select func(*corev1.Pod) bool
	// Rewrite maps a command's first element (say, the consumer runtime's path in
	// the image) to a local executable, and may add environment; nil runs commands
	// as they are.
	Rewrite func(command []string, env []string) ([]string, []string)
	// Dir holds each pod's working directory, log and termination log, as
	// <Dir>/<namespace>/<pod>/{log,termination-log}.
	Dir string

	mu    sync.Mutex
	procs map[types.UID]*proc
}

type proc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	exit    int
	message string
}

// SetupWithManager registers the runner.
func (r *Runner) SetupWithManager(mgr ctrl.Manager, name string) error {
	r.procs = map[types.UID]*proc{}
	return ctrl.NewControllerManagedBy(mgr).
		For(&corev1.Pod{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			p, ok := o.(*corev1.Pod)
			return ok && (r.Select == nil || r.Select(p))
		}))).
		Named(name).
		Complete(r)
}

// Reconcile moves one pod along its life: bind, start, report, stop.
func (r *Runner) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	pod := &corev1.Pod{}
	if err := r.Client.Get(ctx, req.NamespacedName, pod); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.mu.Lock()
	p := r.procs[pod.UID]
	r.mu.Unlock()

	switch {
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		r.mu.Lock()
		delete(r.procs, pod.UID)
		r.mu.Unlock()
		if !pod.DeletionTimestamp.IsZero() {
			// As the kubelet does once containers are gone: finish the deletion
			// (finalizers may still hold the object).
			return ctrl.Result{}, client.IgnoreNotFound(r.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)))
		}
		return ctrl.Result{}, nil
	case pod.Spec.NodeName == "":
		if !pod.DeletionTimestamp.IsZero() {
			return ctrl.Result{}, nil
		}
		binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name},
			Target: corev1.ObjectReference{Kind: "Node", Name: NodeName}}
		return ctrl.Result{}, client.IgnoreNotFound(r.Client.SubResource("binding").Create(ctx, pod, binding))
	case p == nil && pod.DeletionTimestamp.IsZero():
		return ctrl.Result{}, r.start(ctx, pod)
	case p == nil:
		// Deleted before it ran (or after a restart of the runner): nothing runs.
		return ctrl.Result{}, r.report(ctx, pod, &proc{exit: 137, message: ""})
	}

	select {
	case <-p.done:
		err := r.report(ctx, pod, p)
		if err == nil {
			r.mu.Lock()
			delete(r.procs, pod.UID)
			r.mu.Unlock()
		}
		return ctrl.Result{}, err
	default:
	}
	if !pod.DeletionTimestamp.IsZero() {
		r.stop(pod, p)
	}
	return ctrl.Result{}, nil
}

func (r *Runner) start(ctx context.Context, pod *corev1.Pod) error {
	c := pod.Spec.Containers[0]
	env, err := r.environment(ctx, pod, &c)
	if err != nil {
		return r.fail(ctx, pod, fmt.Sprintf("CreateContainerConfigError: %v", err))
	}
	command := append(append([]string{}, c.Command...), c.Args...)
	if len(command) == 0 {
		return r.fail(ctx, pod, "the runner needs an explicit command: it cannot read the image's entrypoint")
	}
	// <Dir>/<namespace>/<pod>: its working directory, log and termination log.
	dir, err := filepath.Abs(filepath.Join(r.Dir, pod.Namespace, pod.Name))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The termination message path of the image is a file of the pod's own here.
	termLog := filepath.Join(dir, "termination-log")
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "ORDERLY_TERMINATION_LOG="); ok && v == c.TerminationMessagePath {
			env[i] = "ORDERLY_TERMINATION_LOG=" + termLog
		}
	}
	if r.Rewrite != nil {
		command, env = r.Rewrite(command, env)
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env, cmd.Dir = env, dir
	out, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return r.fail(ctx, pod, fmt.Sprintf("StartError: %v", err))
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	r.mu.Lock()
	r.procs[pod.UID] = p
	r.mu.Unlock()
	r.Log.Info("Running pod as a local process (dev/test only: the image is ignored)", "pod", pod.Namespace+"/"+pod.Name, "executable", command[0], "log", out.Name())
	key := client.ObjectKeyFromObject(pod)
	go func() {
		err := cmd.Wait()
		out.Close()
		p.exit = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.exit = 128 + int(ws.Signal())
		}
		if err != nil && p.exit == 0 {
			p.exit = 1
		}
		if b, err := os.ReadFile(termLog); err == nil {
			p.message = string(b)
		}
		close(p.done)
		// Wake the reconciler: an empty status patch is the cheapest trigger.
		r.touch(key)
	}()

	now := metav1.Now()
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Image: c.Image, Ready: true, Started: ptrTo(true),
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
	return client.IgnoreNotFound(r.Client.Status().Patch(context.Background(), pod, patch))
}

// touch re-reads the pod and writes its status back, so that the pod's watchers
// (this runner among them) see an event once the process has ended.
func (r *Runner) touch(key client.ObjectKey) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		pod := &corev1.Pod{}
		if err := r.Client.Get(ctx, key, pod); err != nil {
			return
		}
		r.mu.Lock()
		p := r.procs[pod.UID]
		r.mu.Unlock()
		if p == nil {
			return
		}
		err := r.report(ctx, pod, p)
		if err == nil || apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(100 * time.Millisecond) // a conflict with another writer: read again
	}
}

// report writes the ended process's outcome to the pod's status.
func (r *Runner) report(ctx context.Context, pod *corev1.Pod, p *proc) error {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	now := metav1.Now()
	patch := client.MergeFromWithOptions(pod.DeepCopy(), client.MergeFromWithOptimisticLock{})
	pod.Status.Phase = corev1.PodSucceeded
	reason := "Completed"
	if p.exit != 0 {
		pod.Status.Phase, reason = corev1.PodFailed, "Error"
	}
	name := ""
	if len(pod.Spec.Containers) > 0 {
		name = pod.Spec.Containers[0].Name
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: now}}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(p.exit), Reason: reason, Message: p.message, FinishedAt: now}}}}
	return r.Client.Status().Patch(ctx, pod, patch)
}

func (r *Runner) fail(ctx context.Context, pod *corev1.Pod, msg string) error {
	r.Log.Info("Pod cannot run", "pod", pod.Namespace+"/"+pod.Name, "reason", msg)
	return client.IgnoreNotFound(r.report(ctx, pod, &proc{exit: 128, message: msg}))
}

// stop sends SIGTERM, then SIGKILL once the pod's grace period has passed.
func (r *Runner) stop(pod *corev1.Pod, p *proc) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	grace := 30 * time.Second
	if s := pod.DeletionGracePeriodSeconds; s != nil {
		grace = time.Duration(*s) * time.Second
	}
	go func() {
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
	}()
}

// Kill sends SIGKILL to the pod's process and everything it started, as a node
// failure or an OOM kill would. For tests.
func (r *Runner) Kill(uid types.UID) error {
	r.mu.Lock()
	p := r.procs[uid]
	r.mu.Unlock()
	if p == nil {
		return errors.New("no process for the pod")
	}
	return syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// Running reports whether the pod's process runs.
func (r *Runner) Running(uid types.UID) bool {
	r.mu.Lock()
	p := r.procs[uid]
	r.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// StopAll kills every process, for shutdown.
func (r *Runner) StopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// environment resolves the container's env: values, secretKeyRef from Secrets,
// and fieldRef of the pod's uid, name and namespace.
func (r *Runner) environment(ctx context.Context, pod *corev1.Pod, c *corev1.Container) ([]string, error) {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s := &corev1.Secret{}
			if err := r.Reader.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: ref.Name}, s); err != nil {
				return nil, fmt.Errorf("secret %q: %w", ref.Name, err)
			}
			v, ok := s.Data[ref.Key]
			switch {
			case !ok && ref.Optional != nil && *ref.Optional:
				continue // as the kubelet does: an optional key that is missing sets nothing
			case !ok:
				return nil, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
			}
			env = append(env, e.Name+"="+string(v))
		case e.ValueFrom.FieldRef != nil:
			v, ok := map[string]string{"metadata.uid": string(pod.UID), "metadata.name": pod.Name,
				"metadata.namespace": pod.Namespace}[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				return nil, fmt.Errorf("env %s: field %s is not supported by the local runner", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env = append(env, e.Name+"="+v)
		default:
			return nil, fmt.Errorf("env %s: only values, secretKeyRef and fieldRef are supported by the local runner", e.Name)
		}
	}
	return env, nil
}

func ptrTo[T any](v T) *T { return &v }
