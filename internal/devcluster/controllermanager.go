package devcluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// runControllers returns the kube-controller-manager controllers a control plane without
// nodes runs: what makes namespace deletion finish and owner references collect,
// plus what a namespace gets in a real cluster (its default ServiceAccount, the
// kube-root-ca.crt ConfigMap, token Secrets) and the aggregated ClusterRoles
// (admin, edit, view). Nothing that schedules, runs or watches pods is in it: with
// no kubelet, a Deployment's pods would never start, and podgc would delete the
// dev mode's local pods as orphans of a node that does not exist.
//
// A fresh list each call: no package-level state a caller could change.
func runControllers() []string {
	return []string{
		"namespace-controller",
		"garbage-collector-controller",
		"serviceaccount-controller",
		"serviceaccount-token-controller",
		"root-ca-certificate-publisher-controller",
		"clusterrole-aggregation-controller",
	}
}

// ControllerManagerOptions configure StartControllerManager.
type ControllerManagerOptions struct {
	// Config reaches the apiserver as an administrator (system:masters): the
	// controllers act with it.
	Config *rest.Config
	// AssetsDir holds the kube-controller-manager binary.
	AssetsDir string
	// Dir receives its kubeconfig and serving certificate.
	Dir string
	// LogPath is the file its output goes to; default
	// <Dir>/kube-controller-manager.log.
	LogPath string
	// ServiceAccountKeyFile is the private key the apiserver verifies service
	// account tokens with (envtest writes it as sa-signer.key in the apiserver's
	// certificate directory). Without it the token controller is not run.
	ServiceAccountKeyFile string
	// StartTimeout bounds the wait for the controllers to work; default 2 minutes.
	StartTimeout time.Duration
	Log          logr.Logger
}

// StartControllerManager starts kube-controller-manager against the apiserver of
// opts.Config and returns once its garbage collector has collected an object (so
// its informers are in sync and the controllers run). The process dies with this
// one on Linux; stop stops it sooner.
func StartControllerManager(opts ControllerManagerOptions) (stop func() error, err error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 2 * time.Minute
	}
	bin := filepath.Join(opts.AssetsDir, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("kube-controller-manager not found in %s (build it with `make envtest`): %w", opts.AssetsDir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	raw, err := kubeconfigFor(opts.Config)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(kubeconfig, raw, 0o600); err != nil {
		return nil, fmt.Errorf("failed to write the controller manager's kubeconfig: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	controllers := runControllers()
	args := []string{
		"--kubeconfig=" + kubeconfig,
		// Its own API is for the health check only: the apiserver's delegated
		// authentication would add nothing here, and /healthz is always allowed.
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--leader-elect=false",
	}
	if opts.ServiceAccountKeyFile != "" {
		args = append(args, "--service-account-private-key-file="+opts.ServiceAccountKeyFile)
	} else {
		controllers = without(controllers, "serviceaccount-token-controller")
	}
	args = append(args, "--controllers="+strings.Join(controllers, ","))

	logPath := opts.LogPath
	if logPath == "" {
		logPath = filepath.Join(dir, "kube-controller-manager.log")
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = StartChild(cmd)
	_ = logFile.Close() // the child has its own descriptor
	if err != nil {
		return nil, fmt.Errorf("failed to start kube-controller-manager: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop = func() error {
		select {
		case <-exited:
			return nil
		default:
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(20 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			return errors.New("kube-controller-manager did not stop within 20s of SIGTERM; killed")
		}
	}
	started := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), opts.StartTimeout)
	defer cancel()
	go func() {
		select {
		case <-exited: // no point waiting for a process that is gone
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := waitWorking(ctx, opts.Config, port); err != nil {
		_ = stop()
		select {
		case <-exited:
			err = fmt.Errorf("%w (exited: %v)", err, waitErr)
		default:
		}
		return nil, fmt.Errorf("kube-controller-manager did not come up: %w; its log ends:\n%s", err, tail(logPath, 20))
	}
	opts.Log.Info("kube-controller-manager is ready", "pid", cmd.Process.Pid, "controllers", controllers,
		"took", time.Since(started).Round(time.Millisecond), "log", logPath)
	return stop, nil
}

// waitWorking waits for kube-controller-manager's /healthz on port, then for its
// garbage collector to delete an object whose owner is gone: /healthz answers as
// soon as the server listens, before a controller has started, and the collector
// acts only once every informer it needs is in sync. The probe's objects collect
// themselves even if this wait is cut short.
func waitWorking(ctx context.Context, cfg *rest.Config, port int) error {
	hc := &http.Client{
		Timeout: 2 * time.Second,
		// A serving certificate kube-controller-manager made for itself, on loopback.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec
	}
	healthz := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, healthz, nil)
		res, err := hc.Do(req)
		if err != nil {
			return false, nil
		}
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", healthz, err)
	}

	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cms := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	owner, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "devcluster-gc-probe-"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("garbage collector probe: %w", err)
	}
	dependent, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		GenerateName: owner.Name + "-",
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID,
		}},
	}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("garbage collector probe: %w", err)
	}
	if err := cms.Delete(ctx, owner.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)}); err != nil {
		return fmt.Errorf("garbage collector probe: %w", err)
	}
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := cms.Get(ctx, dependent.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the garbage collector to delete ConfigMap %s/%s: %w", metav1.NamespaceSystem, dependent.Name, err)
	}
	return nil
}

// kubeconfigFor writes cfg as a kubeconfig, for a process that cannot take a
// rest.Config.
func kubeconfigFor(cfg *rest.Config) ([]byte, error) {
	if cfg.ExecProvider != nil || cfg.AuthProvider != nil {
		return nil, errors.New("kubeconfig: exec and auth-provider credentials are not supported")
	}
	server := cfg.Host
	if !strings.Contains(server, "://") {
		scheme := "https"
		if !rest.IsConfigTransportTLS(*cfg) {
			scheme = "http"
		}
		server = scheme + "://" + server
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["dev"] = &clientcmdapi.Cluster{
		Server:                   server + cfg.APIPath,
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		InsecureSkipTLSVerify:    cfg.Insecure,
		TLSServerName:            cfg.ServerName,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		Username:              cfg.Username,
		Password:              cfg.Password,
	}
	kc.Contexts["dev"] = &clientcmdapi.Context{Cluster: "dev", AuthInfo: "admin"}
	kc.CurrentContext = "dev"
	return clientcmd.Write(*kc)
}

// freePort returns a loopback port nothing listens on. Another process may take it
// before kube-controller-manager binds it; then the start fails and says so.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func without(list []string, drop string) []string {
	var out []string
	for _, s := range list {
		if s != drop {
			out = append(out, s)
		}
	}
	return out
}

// tail returns the last n lines of the file at path, for an error message.
func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
