// Command orderly is the Orderly operator: a controller manager that reconciles the
// mq.orderly.dev custom resources into the message broker it embeds, and serves that
// broker's protocol endpoints.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/controllers"
	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/brokermetrics"
	"github.com/orderly-dev/orderly/internal/console"
	"github.com/orderly-dev/orderly/internal/consumer"
	"github.com/orderly-dev/orderly/internal/devcluster"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	"github.com/orderly-dev/orderly/internal/mqhttp"
	"github.com/orderly-dev/orderly/internal/podrunner"
	"github.com/orderly-dev/orderly/internal/remoting"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(mqv1alpha1.AddToScheme(scheme))
}

func main() {
	// In dev mode the control-plane processes are started through this binary, which
	// makes them die with the manager and then becomes them.
	devcluster.RunIfChild()
	// The same binary is the consumer runtime of MessageConsumer pods: an init
	// container copies it into the pod, and it wraps the user's command.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "consume":
			os.Exit(consumer.Main(os.Args[2:]))
		case "install-runtime":
			if len(os.Args) != 3 {
				fmt.Fprintln(os.Stderr, "usage: orderly install-runtime <destination>")
				os.Exit(2)
			}
			if err := consumer.Install(os.Args[2]); err != nil {
				fmt.Fprintf(os.Stderr, "orderly install-runtime: %v\n", err)
				os.Exit(1)
			}
			return
		}
	}
	var (
		dev           bool
		devDir        string
		assetsDir     string
		crdDir        string
		metricsAddr   string
		pprofAddr     string
		probeAddr     string
		leaderElect   bool
		httpAddr      string
		tcpAddr       string
		grpcAddr      string
		consoleAddr   string
		advertiseHost string
		runtimeImage  string
		dataDir       string
		tlsCertDir    string
		plainText     string
		memoryLimit   int64
		gcPercent     int
	)
	flag.BoolVar(&dev, "dev", false, "Run a local control plane (etcd, kube-apiserver and kube-controller-manager) instead of connecting to a cluster.")
	flag.StringVar(&devDir, "dev-dir", "bin/dev", "With --dev: directory for the control plane's state and the kubeconfig.")
	flag.StringVar(&assetsDir, "dev-assets", envOr("KUBEBUILDER_ASSETS", "bin/k8s/1.36.3"), "With --dev: directory holding the etcd, kube-apiserver and kube-controller-manager binaries.")
	flag.StringVar(&crdDir, "dev-crds", "config/crd/bases", "With --dev: directory of CRDs to install.")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address the metrics endpoint binds to; 0 disables it.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "", "Address Go's profiler (net/http/pprof) binds to; empty (the default) leaves it off. Bind it to loopback: profiles show request contents.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the health probe endpoint binds to.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Enable leader election for the controllers.")
	flag.StringVar(&httpAddr, "http-bind-address", ":9880", "Address the mq-http endpoint binds to.")
	flag.StringVar(&tcpAddr, "tcp-bind-address", ":9876", "Address the RocketMQ remoting (name server and broker) endpoint binds to.")
	flag.StringVar(&grpcAddr, "grpc-bind-address", ":9877", "Address the RocketMQ 5.x gRPC endpoint (apache.rocketmq.v2.MessagingService) binds to; 0 disables it.")
	flag.StringVar(&consoleAddr, "console-bind-address", "", "Address the web console binds to; empty (the default) leaves it off. Callers sign in with a Kubernetes bearer token, which the apiserver reviews.")
	flag.StringVar(&dataDir, "data-dir", "", "Directory for the broker's data. Defaults to <dev-dir>/broker with --dev; required otherwise.")
	flag.StringVar(&advertiseHost, "advertise-host", "", "Host name applications reach the broker at (in a cluster, the broker Service's DNS name). Defaults to 127.0.0.1 with --dev.")
	flag.StringVar(&tlsCertDir, "tls-cert-dir", "", "Directory holding tls.crt, tls.key and (optionally) ca.crt, as a mounted kubernetes.io/tls Secret presents them (cert-manager's, say): both endpoints serve TLS with it, and reload it when it changes. Empty serves plain text only, except in dev mode, which makes its own CA.")
	flag.StringVar(&plainText, "allow-plaintext", "", "With TLS: who may still speak plain text on the same ports: none, loopback or all. Default: loopback in dev mode, none otherwise.")
	flag.StringVar(&runtimeImage, "runtime-image", os.Getenv("ORDERLY_RUNTIME_IMAGE"), "Image of the init container that installs the consumer runtime in MessageConsumer pods: the operator's own image.")
	flag.Int64Var(&memoryLimit, "memory-limit-mib", 288, "Soft limit of the Go heap, in MiB (debug.SetMemoryLimit); the environment's GOMEMLIMIT wins when set. The store's block cache (256 MiB with its memtables) is outside it: a build without cgo (the container image), which keeps the cache in the Go heap, adds the cache to the limit.")
	flag.IntVar(&gcPercent, "gc-percent", 400, "How far the Go heap grows past what is live before a collection, in percent (debug.SetGCPercent); 0 keeps Go's default of 100, -1 collects only near the memory limit. The environment's GOGC wins when set. The memory limit (--memory-limit-mib or GOMEMLIMIT) caps the heap whatever this says; with neither, nothing does.")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	// The garbage collector works harder as the heap nears the limit, rather than
	// letting it grow to twice what is live: every client's memory is bounded by
	// budgets (frames, bodies, answers), and this keeps the heap near them.
	if os.Getenv("GOMEMLIMIT") == "" && memoryLimit > 0 {
		debug.SetMemoryLimit(memoryLimit<<20 + broker.StoreHeapBytes())
	}
	// Under load the live heap is small (about 10 MiB while 64 clients publish
	// or consume) and the allocation rate high, so at Go's default of 100 the
	// collector runs several times a second and took a quarter of the server's
	// CPU in a consume profile. Letting the heap grow to five times what is live
	// collects a quarter as often; the memory limit above still caps the heap,
	// so the peak a tenant can cause is the same.
	if os.Getenv("GOGC") == "" && gcPercent != 0 {
		if gcPercent < 0 && os.Getenv("GOMEMLIMIT") == "" && memoryLimit <= 0 {
			fmt.Fprintln(os.Stderr, "--gc-percent=-1 needs a memory limit (--memory-limit-mib or GOMEMLIMIT): the heap would grow without bound")
			os.Exit(2)
		}
		debug.SetGCPercent(max(gcPercent, -1))
	}
	if dev {
		opts.Development = true // human-readable logs on a developer's terminal
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	ctx := ctrl.SetupSignalHandler()

	var (
		cfg        *rest.Config
		kubeconfig string // set in dev mode, where a banner tells how to reach the control plane
	)
	if dev {
		if advertiseHost == "" {
			advertiseHost = "127.0.0.1"
		}
		if runtimeImage == "" {
			runtimeImage = "orderly:dev" // pods run as local processes; the image is ignored
		}
		if dataDir == "" {
			dataDir = filepath.Join(devDir, "broker")
		}
		if tlsCertDir == "" {
			// Dev mode serves TLS with a CA of its own, in the Instance Secrets'
			// caCert; loopback clients may still speak plain text.
			tlsCertDir = filepath.Join(devDir, "tls")
			if err := wiretls.EnsureDevCerts(tlsCertDir, []string{advertiseHost, "127.0.0.1", "localhost"}); err != nil {
				setupLog.Error(err, "Unable to make the dev TLS certificates")
				os.Exit(1)
			}
		}
		if plainText == "" {
			plainText = "loopback"
		}
		cluster, err := devcluster.Start(devcluster.Options{
			Dir: devDir, AssetsDir: assetsDir, CRDDir: crdDir, Scheme: scheme, Log: ctrl.Log.WithName("dev"),
		})
		if err != nil {
			setupLog.Error(err, "Unable to start the dev control plane")
			os.Exit(1)
		}
		defer func() {
			if err := cluster.Stop(); err != nil {
				setupLog.Error(err, "Unable to stop the dev control plane")
			}
		}()
		cfg = cluster.Config
		kubeconfig = cluster.KubeconfigPath
	} else {
		var err error
		if cfg, err = ctrl.GetConfig(); err != nil {
			setupLog.Error(err, "Unable to load a kubeconfig; use --dev to run a local control plane")
			os.Exit(1)
		}
		if advertiseHost == "" || dataDir == "" || runtimeImage == "" {
			setupLog.Error(nil, "--advertise-host, --data-dir and --runtime-image are required outside dev mode")
			os.Exit(1)
		}
	}
	if err := run(ctx, cfg, options{
		metricsAddr: metricsAddr, pprofAddr: pprofAddr, probeAddr: probeAddr, leaderElect: leaderElect,
		httpAddr: httpAddr, tcpAddr: tcpAddr, grpcAddr: grpcAddr, consoleAddr: consoleAddr, advertiseHost: advertiseHost, devKubeconfig: kubeconfig, dataDir: dataDir,
		runtimeImage: runtimeImage, devPodDir: filepath.Join(devDir, "pods"), tlsCertDir: tlsCertDir, plainText: plainText,
	}); err != nil {
		setupLog.Error(err, "Manager exited with an error")
		// Return through the deferred control-plane stop rather than os.Exit.
		defer os.Exit(1)
	}
}

type options struct {
	metricsAddr, probeAddr string
	pprofAddr              string // empty: no profiler
	leaderElect            bool
	httpAddr, tcpAddr      string
	grpcAddr               string
	consoleAddr            string // empty: no console
	advertiseHost          string
	devKubeconfig          string
	dataDir                string
	runtimeImage           string
	devPodDir              string // dev mode: where MessageConsumer pods run
	tlsCertDir, plainText  string
}

// serverTLS returns the endpoints' TLS configuration, who may speak plain text
// beside it, and the CA to hand clients; all nil without a certificate directory.
func serverTLS(o options) (*tls.Config, func(net.Addr) bool, []byte, error) {
	if o.tlsCertDir == "" {
		return nil, nil, nil, nil
	}
	certs, err := wiretls.LoadCerts(o.tlsCertDir)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := certs.CA()
	if err != nil {
		return nil, nil, nil, err
	}
	var plain func(net.Addr) bool
	switch o.plainText {
	case "", "none":
	case "loopback":
		plain = wiretls.Loopback
	case "all":
		plain = func(net.Addr) bool { return true }
	default:
		return nil, nil, nil, fmt.Errorf("--allow-plaintext %q is not none, loopback or all", o.plainText)
	}
	return certs.Config(), plain, ca, nil
}

// run wires the broker, its protocol servers and the controllers into one manager
// and runs it until ctx ends.
func run(ctx context.Context, cfg *rest.Config, o options) error {
	managedSecrets, err := labels.Parse(controllers.ManagedByLabel + "=" + controllers.ManagedByValue)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress: o.probeAddr,
		PprofBindAddress:       o.pprofAddr,
		LeaderElection:         o.leaderElect,
		LeaderElectionID:       "orderly.mq.orderly.dev",
		// Hold only the Secrets this operator creates in memory, not every Secret in
		// the cluster; the controllers read others directly when they must.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: managedSecrets},
			&corev1.Pod{}:    {Label: controllers.ConsumerPodSelector()},
		}},
	})
	if err != nil {
		return fmt.Errorf("unable to create manager: %w", err)
	}

	b, err := broker.Open(broker.Options{
		Dir:       o.dataDir,
		Log:       ctrl.Log.WithName("broker"),
		StoreHost: storeHost(o.advertiseHost),
		StorePort: uint32(portNumber(o.tcpAddr)),
	})
	if err != nil {
		return fmt.Errorf("unable to open the broker: %w", err)
	}
	// Closed after the manager has stopped every server that uses it.
	defer func() {
		if err := b.Close(); err != nil {
			setupLog.Error(err, "Unable to close the broker cleanly")
		}
	}()
	tlsConfig, plain, ca, err := serverTLS(o)
	if err != nil {
		return fmt.Errorf("unable to set up TLS: %w", err)
	}
	httpServer := mqhttp.NewServer(o.httpAddr, b, ctrl.Log.WithName("mqhttp"))
	httpServer.TLS, httpServer.PlainText = tlsConfig, plain
	if err := mgr.Add(httpServer); err != nil {
		return err
	}
	tcpServer := remoting.NewServer(o.tcpAddr, net.JoinHostPort(o.advertiseHost, port(o.tcpAddr)), b, ctrl.Log.WithName("remoting"))
	// Records carry an IPv4 store host that orderly consumers dial back.
	host := storeHost(o.advertiseHost)
	tcpServer.StoreAddr = net.JoinHostPort(netip.AddrFrom4(host).String(), port(o.tcpAddr))
	tcpServer.TLS, tcpServer.PlainText = tlsConfig, plain
	grpcEndpoint := "off"
	servers := map[string]brokermetrics.Server{}
	if o.grpcAddr != "0" {
		grpcEndpoint = net.JoinHostPort(o.advertiseHost, port(o.grpcAddr)) + " (RocketMQ 5.x clients; TLS; namespace = the Instance id)"
		// The 5.x clients dial TLS always: outside dev mode, --tls-cert-dir.
		grpcServer := mqgrpc.NewServer(o.grpcAddr, net.JoinHostPort(o.advertiseHost, port(o.grpcAddr)), b, ctrl.Log.WithName("mqgrpc"))
		grpcServer.TLS, grpcServer.PlainText = tlsConfig, plain
		if err := mgr.Add(grpcServer); err != nil {
			return err
		}
		servers["grpc"] = grpcServer
	}
	if err := mgr.Add(tcpServer); err != nil {
		return err
	}
	servers["http"], servers["tcp"] = httpServer, tcpServer
	// The data plane's figures, on the manager's metrics endpoint beside the
	// controllers'.
	if err := metrics.Registry.Register(brokermetrics.New(b, servers)); err != nil {
		return fmt.Errorf("unable to register the broker's metrics: %w", err)
	}
	consoleEndpoint := "off"
	noConsole := make(chan net.Addr, 1)
	noConsole <- nil // nothing to wait for
	var consoleListening <-chan net.Addr = noConsole
	if o.consoleAddr != "" {
		clientset, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return fmt.Errorf("unable to make the console's apiserver client: %w", err)
		}
		consoleServer := console.NewServer(o.consoleAddr, b, mgr.GetClient(), console.KubeReviewer{Client: clientset}, ctrl.Log.WithName("console"))
		consoleServer.TLS, consoleServer.PlainText = tlsConfig, plain
		consoleListening = consoleServer.Listening()
		if err := mgr.Add(consoleServer); err != nil {
			return err
		}
		scheme := "http://"
		if tlsConfig != nil {
			scheme = "https://"
		}
		consoleEndpoint = scheme + net.JoinHostPort(o.advertiseHost, port(o.consoleAddr)) + " (sign in with a token: kubectl create token)"
	}

	httpScheme := "http://"
	if tlsConfig != nil {
		httpScheme = "https://"
	}
	endpoints := controllers.Endpoints{
		HTTP: httpScheme + net.JoinHostPort(o.advertiseHost, port(o.httpAddr)),
		TCP:  net.JoinHostPort(o.advertiseHost, port(o.tcpAddr)),
		CA:   ca,
	}
	if o.grpcAddr != "0" {
		endpoints.GRPC = net.JoinHostPort(o.advertiseHost, port(o.grpcAddr))
	}
	if err := (&controllers.InstanceReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  mgr.GetEventRecorder("orderly-instance"),
		Broker:    b,
		Endpoints: endpoints,
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("unable to set up the Instance controller: %w", err)
	}

	if err := controllers.NewTopicReconciler(mgr.GetClient(), mgr.GetEventRecorder("orderly-topic"), b, 0).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("unable to set up the Topic controller: %w", err)
	}
	if err := controllers.NewConsumerGroupReconciler(mgr.GetClient(), mgr.GetEventRecorder("orderly-consumergroup"), b, 0).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("unable to set up the ConsumerGroup controller: %w", err)
	}

	if err := (&controllers.MessageConsumerReconciler{
		Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorder("orderly-messageconsumer"),
		Broker: b, RuntimeImage: o.runtimeImage,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("unable to set up the MessageConsumer controller: %w", err)
	}
	if o.devKubeconfig != "" {
		// No kubelet in dev mode: MessageConsumer pods run as local processes, with
		// this binary as their consumer runtime.
		self, err := os.Executable()
		if err != nil {
			return err
		}
		runner := &podrunner.Runner{
			Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Log: ctrl.Log.WithName("dev-pods"), Dir: o.devPodDir,
			Rewrite: func(command, env []string) ([]string, []string) {
				if len(command) > 0 && command[0] == controllers.RuntimePath {
					command = append([]string{self}, command[1:]...)
				}
				return command, env
			},
		}
		if err := runner.SetupWithManager(mgr, "dev-pods"); err != nil {
			return err
		}
		defer runner.StopAll()
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	if o.devKubeconfig != "" {
		// Tell the developer how to use the dev control plane once it can serve them.
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			if !mgr.GetCache().WaitForCacheSync(ctx) {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-httpServer.Listening():
			}
			select {
			case <-ctx.Done():
				return nil
			case <-tcpServer.Listening():
			}
			select {
			case <-ctx.Done():
				return nil
			case <-consoleListening:
			}
			fmt.Fprint(os.Stderr, devcluster.Banner(o.devKubeconfig, endpoints.HTTP, endpoints.TCP, grpcEndpoint, consoleEndpoint))
			return nil
		})); err != nil {
			return err
		}
	}
	setupLog.Info("Starting manager")
	return mgr.Start(ctx)
}

func port(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}

// storeHost is the IPv4 address encoded in message ids and in the records TCP
// consumers receive, which orderly consumers dial to send messages back: the
// advertised host if it is an IPv4 address, else the pod's IP (POD_IP, from the
// downward API), else loopback.
func storeHost(host string) [4]byte {
	for _, h := range []string{host, os.Getenv("POD_IP")} {
		if ip, err := netip.ParseAddr(h); err == nil && ip.Is4() {
			return ip.As4()
		}
	}
	return [4]byte{127, 0, 0, 1}
}

func portNumber(addr string) int {
	n, _ := strconv.Atoi(port(addr))
	return n
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
