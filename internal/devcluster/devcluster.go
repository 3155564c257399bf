// Package devcluster runs a local Kubernetes control plane (etcd, kube-apiserver and
// kube-controller-manager, the binaries hack/envtest.sh builds) for the operator's
// dev mode, so `make run` needs no cluster and behaves like one: namespaces finish
// deleting and owner references collect. State lives in one directory and survives
// restarts; the processes die with the one that started them (see children.go).
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
	// AssetsDir holds the etcd, kube-apiserver and kube-controller-manager binaries.
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

	env     *envtest.Environment
	stopKCM func() error
	log     logr.Logger
}

// Start starts etcd, kube-apiserver and kube-controller-manager with their state
// under opts.Dir, installs the CRDs and writes a kubeconfig to <Dir>/kubeconfig. The
// processes' output goes to <Dir>/logs.
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
	// The children of a dev process killed with SIGKILL get SIGKILL too, but may
	// still be exiting (etcd holding its data directory) when the next run starts,
	// and a build without the parent-death signal (before it, or not on Linux) left
	// them running: stop what is left before reusing the directories.
	reapStale(dir, opts.Log)

	// Only etcd's data persists. envtest hands out its CA only when it generated the
	// serving certificates in this run, so the apiserver's directory starts empty.
	if err := os.RemoveAll(filepath.Join(dir, "apiserver")); err != nil {
		return nil, fmt.Errorf("failed to clear apiserver certificates: %w", err)
	}
	logDir := filepath.Join(dir, "logs")
	for _, d := range []string{dir, filepath.Join(dir, "etcd"), filepath.Join(dir, "apiserver"), logDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("failed to create %s: %w", d, err)
		}
	}
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
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
	etcdLog, err := os.OpenFile(filepath.Join(logDir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer etcdLog.Close() // the children hold descriptors of their own
	apiLog, err := os.OpenFile(filepath.Join(logDir, "kube-apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer apiLog.Close()
	env.ControlPlane.Etcd.Out, env.ControlPlane.Etcd.Err = etcdLog, etcdLog
	env.ControlPlane.APIServer.Out, env.ControlPlane.APIServer.Err = apiLog, apiLog

	opts.Log.Info("Starting dev control plane", "dir", dir, "logs", logDir)
	cfg, err := StartEnvironment(env, dir)
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("failed to start dev control plane: %w", err)
	}
	c := &Cluster{Config: cfg, KubeconfigPath: filepath.Join(dir, "kubeconfig"), env: env, log: opts.Log}
	c.stopKCM, err = StartControllerManager(ControllerManagerOptions{
		Config: cfg, AssetsDir: opts.AssetsDir, Dir: filepath.Join(dir, "controller-manager"),
		LogPath:               filepath.Join(logDir, "kube-controller-manager.log"),
		ServiceAccountKeyFile: filepath.Join(dir, "apiserver", "sa-signer.key"),
		Log:                   opts.Log,
	})
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("failed to start dev control plane: %w", err)
	}
	if err := writeFileAtomic(c.KubeconfigPath, env.KubeConfig, 0o600); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("failed to write kubeconfig: %w", err)
	}
	return c, nil
}

// StartEnvironment starts env's etcd and kube-apiserver so that they die with this
// process (see children.go), through links under dir; the rest is env.Start. It
// turns envtest's panics (it panics on some start failures) into errors, so that the
// caller can stop what did start. A test binary that uses it calls RunIfChild in its
// TestMain.
func StartEnvironment(env *envtest.Environment, dir string) (cfg *rest.Config, err error) {
	if env.ControlPlane.Etcd == nil {
		env.ControlPlane.Etcd = &envtest.Etcd{}
	}
	api := env.ControlPlane.GetAPIServer()
	for _, b := range []struct {
		path *string
		name string
	}{{&env.ControlPlane.Etcd.Path, "etcd"}, {&api.Path, "kube-apiserver"}} {
		target := *b.path
		if target == "" {
			assets := env.BinaryAssetsDirectory
			if assets == "" {
				assets = os.Getenv("KUBEBUILDER_ASSETS")
			}
			target = filepath.Join(assets, b.name)
		}
		if *b.path, err = linkBinary(dir, target); err != nil {
			return nil, fmt.Errorf("failed to link %s: %w", b.name, err)
		}
	}
	onSpawnerThread(func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("envtest: %v", p)
			}
		}()
		cfg, err = env.Start()
	})
	return cfg, err
}

// Stop stops the control plane. Its state stays in the directory for the next Start.
func (c *Cluster) Stop() error {
	c.log.Info("Stopping dev control plane")
	var errs []error
	if c.stopKCM != nil {
		errs = append(errs, c.stopKCM())
	}
	errs = append(errs, c.env.Stop())
	return errors.Join(errs...)
}

// reapStale stops control-plane processes left running on dir by an earlier dev
// process that died without stopping them. They are recognised by their binary name
// and an argument pointing into dir, so nothing else is touched.
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
		if name := filepath.Base(args[0]); name != "etcd" && name != "kube-apiserver" && name != "kube-controller-manager" {
			continue
		}
		for _, a := range args[1:] {
			if strings.Contains(a, filepath.Join(dir, "etcd")) || strings.Contains(a, filepath.Join(dir, "apiserver")) ||
				strings.Contains(a, filepath.Join(dir, "controller-manager")) {
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
		for alive(pid) && ctx.Err() == nil {
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
