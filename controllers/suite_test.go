package controllers

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/rlog"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consumer"
	"github.com/orderly-dev/orderly/internal/devcluster"
	"github.com/orderly-dev/orderly/internal/mqhttp"
	"github.com/orderly-dev/orderly/internal/podrunner"
	"github.com/orderly-dev/orderly/internal/remoting"
)

// Shared by every spec. Specs give their objects names of their own, so they never
// wait on each other.
var (
	k8sClient  client.Client
	testEnv    *envtest.Environment
	testRunner *podrunner.Runner
	testBroker *broker.Broker
	cancelMgr  context.CancelFunc
	// stopKCM stops the suite's kube-controller-manager, which deletes namespaces and
	// collects owned objects as in a cluster.
	stopKCM func() error

	// testEndpoints are the suite's mq-http and remoting servers, filled in once
	// they listen.
	testEndpoints = Endpoints{}
	// testResync is short so that drift repair shows within a spec.
	testResync = time.Second
)

// TestMain lets the test binary stand in for the operator binary in MessageConsumer
// pods: the pod runner starts it as `<test binary> consume -- <handler>` with
// runtimeEnv set, and it runs the consumer runtime as `orderly consume` would.
func TestMain(m *testing.M) {
	devcluster.RunIfChild() // etcd and kube-apiserver are started through this binary
	if os.Getenv(runtimeEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "consume" {
		os.Exit(consumer.Main(os.Args[2:]))
	}
	rlog.SetLogLevel("error") // the RocketMQ client's own logging
	os.Exit(m.Run())
}

const runtimeEnv = "ORDERLY_TEST_AS_RUNTIME"

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(50 * time.Millisecond)
	RunSpecs(t, "Controller Suite")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		// `go test ./...` outside make: use what hack/envtest.sh built.
		assets = filepath.Join("..", "bin", "k8s", "1.36.3")
	}
	_, err := os.Stat(filepath.Join(assets, "kube-apiserver"))
	Expect(err).NotTo(HaveOccurred(), "no kube-apiserver in %s: run `make envtest` (or `make test`) first", assets)

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	// Started so that etcd and kube-apiserver die with this binary, however it ends.
	cfg, err := devcluster.StartEnvironment(testEnv, GinkgoT().TempDir())
	Expect(err).NotTo(HaveOccurred())
	kcmUser, err := testEnv.AddUser(envtest.User{Name: "system:kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	stopKCM, err = devcluster.StartControllerManager(devcluster.ControllerManagerOptions{
		Config: kcmUser.Config(), AssetsDir: assets, Dir: GinkgoT().TempDir(),
		ServiceAccountKeyFile: filepath.Join(testEnv.ControlPlane.GetAPIServer().CertDir, "sa-signer.key"),
		Log:                   logf.Log.WithName("kube-controller-manager"),
	})
	Expect(err).NotTo(HaveOccurred())

	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(mqv1alpha1.AddToScheme(scheme)).To(Succeed())

	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	// The manager is configured as main.go configures it, the Secret cache included.
	managed := labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedByValue})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: managed},
			&corev1.Pod{}:    {Label: ConsumerPodSelector()},
		}},
	})
	Expect(err).NotTo(HaveOccurred())

	// The remoting listener comes first: message ids carry the broker's port.
	tcpListener, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	testBroker, err = broker.Open(broker.Options{StorePort: uint32(tcpListener.Addr().(*net.TCPAddr).Port)}) // in memory
	Expect(err).NotTo(HaveOccurred())
	var ctx context.Context
	ctx, cancelMgr = context.WithCancel(context.Background())

	// The real mq-http endpoint on the suite's broker, so that specs can drive it with
	// the real SDK, as an application would. Instances publish its address, so it
	// listens before the Instance controller is built.
	httpServer := mqhttp.NewServer("127.0.0.1:0", testBroker, logf.Log.WithName("mqhttp"))
	go func() {
		defer GinkgoRecover()
		Expect(httpServer.Start(ctx)).To(Succeed())
	}()
	var addr net.Addr
	Eventually(httpServer.Listening()).Should(Receive(&addr))
	testEndpoints.HTTP = "http://" + addr.String()
	tcpServer := remoting.NewServer("", "", testBroker, logf.Log.WithName("remoting"))
	tcpServer.Listener = tcpListener
	go func() {
		defer GinkgoRecover()
		Expect(tcpServer.Start(ctx)).To(Succeed())
	}()
	Eventually(tcpServer.Listening()).Should(Receive(&addr))
	testEndpoints.TCP = addr.String()
	testEndpoints.GRPC = "127.0.0.1:9877" // not served by the suite: only carried
	Expect((&InstanceReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    scheme,
		Recorder:  mgr.GetEventRecorder("orderly-instance"),
		Broker:    testBroker,
		Endpoints: testEndpoints,
	}).SetupWithManager(ctx, mgr)).To(Succeed())

	Expect(NewTopicReconciler(mgr.GetClient(), mgr.GetEventRecorder("orderly-topic"), testBroker, testResync).SetupWithManager(mgr)).To(Succeed())
	Expect(NewConsumerGroupReconciler(mgr.GetClient(), mgr.GetEventRecorder("orderly-consumergroup"), testBroker, testResync).SetupWithManager(mgr)).To(Succeed())

	Expect((&MessageConsumerReconciler{
		Client: mgr.GetClient(), Scheme: scheme, Recorder: mgr.GetEventRecorder("orderly-messageconsumer"),
		Broker: testBroker, RuntimeImage: "orderly:test", ProgressPeriod: 500 * time.Millisecond,
	}).SetupWithManager(mgr)).To(Succeed())

	// envtest has no kubelet: the runner runs MessageConsumer pods as local
	// processes, with this test binary as the consumer runtime.
	self, err := os.Executable()
	Expect(err).NotTo(HaveOccurred())
	testRunner = &podrunner.Runner{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Log: logf.Log.WithName("podrunner"),
		Dir: GinkgoT().TempDir(),
		Rewrite: func(command, env []string) ([]string, []string) {
			if len(command) > 0 && command[0] == RuntimePath {
				command = append([]string{self}, command[1:]...)
				env = append(env, runtimeEnv+"=1")
			}
			return command, env
		},
	}
	Expect(testRunner.SetupWithManager(mgr, "podrunner")).To(Succeed())

	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
})

var _ = AfterSuite(func() {
	if cancelMgr != nil {
		cancelMgr()
	}
	if testRunner != nil {
		testRunner.StopAll()
	}
	if stopKCM != nil {
		Expect(stopKCM()).To(Succeed())
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
	if testBroker != nil {
		Expect(testBroker.Close()).To(Succeed())
	}
})
