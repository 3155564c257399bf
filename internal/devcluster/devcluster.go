// Package devcluster runs a local Kubernetes control plane (etcd and kube-apiserver,
// the binaries hack/envtest.sh builds) for the operator's dev mode, so `make run`
// needs no cluster. State lives in one directory and survives restarts.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Options configure a dev control plane.
type Options struct {
	// Dir holds etcd's data, the apiserver's certificates and the kubeconfig.
	Dir string
	// AssetsDir holds the etcd and kube-apiserver binaries.
	AssetsDir string
	// CRDDir holds the CustomResourceDefinitions to install.
	CRDDir string
	// Scheme knows the CRDs' types.
	Scheme *runtime.Scheme
	Log    logr.Logger
}

// Cluster is a running dev control plane.
type Cluster struct {
	// Config reaches the apiserver as an administrator.
	Config *rest.Config
	// KubeconfigPath is where the kubeconfig for kubectl was written.
	KubeconfigPath string

	env *envtest.Environment
	log logr.Logger
}

// Start starts etcd and kube-apiserver with their state under opts.Dir, installs the
// CRDs and writes a kubeconfig to <Dir>/kubeconfig.
func Start(opts Options) (*Cluster, error) {
	// envtest runs the binaries from other working directories: every path must be absolute.
	var dir string
	for _, p := range []*string{&opts.Dir, &opts.AssetsDir, &opts.CRDDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, err
		}
		*p = abs
	}
	dir = opts.Dir
	// A dev process killed with SIGKILL cannot stop its children (envtest starts them
	// in their own process group); stop what is left of them before reusing the dirs.
	reapStale(dir, opts.Log)

	// Only etcd's data persists. envtest hands out its CA only when it generated the
	// serving certificates in this run, so the apiserver's directory starts empty.
	if err := os.RemoveAll(filepath.Join(dir, "apiserver")); err != nil {
		return nil, fmt.Errorf("failed to clear apiserver certificates: %w", err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "etcd"), filepath.Join(dir, "apiserver")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("failed to create %s: %w", d, err)
		}
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(opts.AssetsDir, bin)); err != nil {
			return nil, fmt.Errorf("control-plane binary %s not found in %s (build it with `make envtest`): %w", bin, opts.AssetsDir, err)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    opts.AssetsDir,
		CRDDirectoryPaths:        []string{opts.CRDDir},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   opts.Scheme,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// Fixed directories (rather than envtest's temporary ones) keep etcd's data across
	// restarts and let reapStale recognise this control plane's processes.
	env.ControlPlane.Etcd = &envtest.Etcd{DataDir: filepath.Join(dir, "etcd")}
	env.ControlPlane.APIServer = &envtest.APIServer{CertDir: filepath.Join(dir, "apiserver")}

	opts.Log.Info("Starting dev control plane", "dir", dir)
	cfg, err := startEnv(env)
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("failed to start dev control plane: %w", err)
	}
	c := &Cluster{Config: cfg, KubeconfigPath: filepath.Join(dir, "kubeconfig"), env: env, log: opts.Log}
	if err := writeFileAtomic(c.KubeconfigPath, env.KubeConfig, 0o600); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("failed to write kubeconfig: %w", err)
	}
	return c, nil
}

// startEnv starts env, turning envtest's panics (it panics on some start failures)
// into errors so the caller can stop what did start.
func startEnv(env *envtest.Environment) (cfg *rest.Config, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("envtest: %v", p)
		}
	}()
	return env.Start()
}

// Stop stops the control plane. Its state stays in the directory for the next Start.
func (c *Cluster) Stop() error {
	c.log.Info("Stopping dev control plane")
	return c.env.Stop()
}

// reapStale stops etcd and kube-apiserver processes left running on dir by an earlier
// dev process that died without stopping them. They are recognised by their binary
// name and an argument pointing into dir, so nothing else is touched.
func reapStale(dir string, log logr.Logger) {
	entries, _ := os.ReadDir("/proc")
	var stale []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if name := filepath.Base(args[0]); name != "etcd" && name != "kube-apiserver" {
			continue
		}
		for _, a := range args[1:] {
			if strings.Contains(a, filepath.Join(dir, "etcd")) || strings.Contains(a, filepath.Join(dir, "apiserver")) {
				stale = append(stale, pid)
				break
			}
		}
	}
	for _, pid := range stale {
		log.Info("Stopping control-plane process left by an earlier run", "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, pid := range stale {
		for syscall.Kill(pid, 0) == nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			log.Error(err, "Failed to stop stale control-plane process", "pid", pid)
		}
	}
}

// writeFileAtomic writes data to path through a temporary file and a rename, so a
// reader never sees half a kubeconfig.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Banner is what dev mode prints once everything serves: where the kubeconfig is, the
// broker's endpoints and the web console, and a first command to paste.
func Banner(kubeconfig, httpEndpoint, tcpEndpoint, grpcEndpoint, consoleEndpoint string) string {
	rel := kubeconfig
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, kubeconfig); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	return fmt.Sprintf(`
Orderly is running with a local control plane (dev mode).

  kubeconfig     %[1]s
  mq-http        %[2]s
  tcp (remoting) %[3]s
  grpc           %[5]s
  console        %[6]s

Try it in another shell:

  export KUBECONFIG=%[1]s
  kubectl apply -f config/samples/
  kubectl wait --for=condition=Ready instance,topic,consumergroup --all
  kubectl get orderly

Ctrl-C stops the operator and the control plane; state stays in %[4]s.

`, rel, httpEndpoint, tcpEndpoint, filepath.Dir(rel), grpcEndpoint, consoleEndpoint)
}
