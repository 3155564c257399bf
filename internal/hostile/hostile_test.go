package hostile

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	"github.com/go-logr/logr"
	gogaperrors "github.com/gogap/errors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	mqv1alpha1 "github.com/orderly-dev/orderly/api/v1alpha1"
	"github.com/orderly-dev/orderly/internal/devcluster"
)

var hostileTime = flag.Duration("hostile.time", 0,
	"how long the attack lasts in the full form (make hostile); 0 runs the short form that make test runs")

// Bounds the test asserts.
const (
	// minThroughputRatio: the good tenant's publishes and consumptions a second
	// under attack, and just after it, against its rate alone, in the full form
	// (make hostile). The short form that make test runs asserts only
	// shortMinThroughputRatio: its attack lasts seconds, on a CI machine whose
	// two cores this test's own attackers share with the process, so its ratio
	// moves by a tenth from run to run (0.68 to 0.87 measured). It still catches
	// what the attacks did before they were bounded: the good tenant's rate fell
	// to 0.04 of its rate alone, and to 0 for 8 KiB frames.
	minThroughputRatio      = 0.70
	shortMinThroughputRatio = 0.50
	// rssBound bounds the process's peak resident set (VmHWM) over the whole run:
	// the 512 MiB, half the memory limit of the manager's pod. What the
	// process may hold by design is more: Pebble's block cache and memtables (up
	// to 256 MiB, outside the Go heap), remoting's frame budget (256 MiB, all
	// connections together), mq-http's body budget (64 MiB), stacks and buffers
	// for the attackers' few thousand connections, and, with no Go memory limit
	// set, a heap that grows to twice what is live before it is collected
	// (README, "The hostile-load test").
	rssBound = 512 << 20
	// goroutineSlack and connSlack are how far above the baseline (the most seen
	// while the good tenant worked alone) the process may stay once the attackers
	// have gone: the good tenant's own requests in progress vary a little.
	goroutineSlack = 16
	connSlack      = 4
	// settleLimit bounds the wait for the process to give back what the attack
	// made it hold. The longest anything should take is a remoting frame waiting
	// for memory whose client has gone: its FrameTimeout, 30 s.
	settleLimit = 60 * time.Second
	// goodProducers and goodConsumers are the good tenant's concurrency, fixed
	// for the whole run so that the windows compare.
	goodProducers = 4
	goodConsumers = 2
	goodBody      = 1 << 10
)

// shape is how long each phase of a run lasts: the good tenant warms up, is
// measured alone for a window, the attack starts and ramps up, the good tenant
// is measured in windows until the attack has lasted attack, and once the
// process has settled it is measured for one more window.
type shape struct {
	warmup, window, ramp, attack time.Duration
}

func runShape() shape {
	if *hostileTime <= 0 {
		// make test: one window of each, about 80 s with the setup.
		return shape{warmup: 3 * time.Second, window: 10 * time.Second, ramp: 3 * time.Second, attack: 13 * time.Second}
	}
	return shape{warmup: 5 * time.Second, window: 20 * time.Second, ramp: 5 * time.Second, attack: max(*hostileTime, 25*time.Second)}
}

// TestHostileLoad is issue 15's hostile-load test. It runs the operator binary
// as its own process against an envtest control plane, with three tenants: a good
// one whose mq-http SDK producers and consumers work throughout, a greedy one
// with small limits publishing far over them, and a careless one whose
// transactional producers never read their sockets. It measures the good
// tenant's throughput alone, then while attackers also hold hundreds of slow
// connections on both endpoints and send malformed requests of every kind, then
// after them; it samples the process's resident memory throughout; and once the
// attackers have gone it waits for the process's goroutines and connections to
// come back to what they were before. Every publish the good tenant got an
// acknowledgement for must have been consumed by the end.
//
// go test -run TestHostileLoad ./internal/hostile runs the short form; make
// hostile runs the full one, -hostile.time long.
func TestHostileLoad(t *testing.T) {
	logf.SetLogger(logr.Discard()) // envtest logs through controller-runtime
	sh := runShape()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}

	// The operator binary, as users run it, built before the clock matters.
	dir := t.TempDir()
	bin := filepath.Join(dir, "orderly")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s", "1.36.3")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	// Through devcluster, so that etcd and kube-apiserver die with this test
	// even when it is killed.
	cfg, err := devcluster.StartEnvironment(env, t.TempDir())
	if err != nil {
		t.Fatalf("envtest (KUBEBUILDER_ASSETS=%s; make envtest builds it): %v", assets, err)
	}
	defer func() { _ = env.Stop() }()
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = mqv1alpha1.AddToScheme(scheme)
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	user, err := env.AddUser(envtest.User{Name: "orderly", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}

	ports := freePorts(t, 4)
	httpAddr, tcpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", ports[2])
	mgr := startOrderly(t, bin, kubeconfigPath, dir, ports)
	defer mgr.stop(t)

	// The tenants, declared through the apiserver.
	const ns = "hostile"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	greedyLimits := mqv1alpha1.InstanceLimits{Topics: 2, Groups: 2, Connections: 8, PublishRate: 50,
		PublishBytesRate: 64 << 10, MaxMessageSize: 64 << 10}
	objs := []client.Object{
		&mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "good"}},
		&mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "good-orders"}, Spec: mqv1alpha1.TopicSpec{
			InstanceRef: mqv1alpha1.InstanceReference{Name: "good"}, TopicName: "Orders", Queues: 8}},
		&mqv1alpha1.ConsumerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "good-workers"}, Spec: mqv1alpha1.ConsumerGroupSpec{
			InstanceRef: mqv1alpha1.InstanceReference{Name: "good"}, GroupID: "GID_workers", Protocol: mqv1alpha1.Protocol("HTTP")}},
		&mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "greedy"}, Spec: mqv1alpha1.InstanceSpec{Limits: greedyLimits}},
		&mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "greedy-spam"}, Spec: mqv1alpha1.TopicSpec{
			InstanceRef: mqv1alpha1.InstanceReference{Name: "greedy"}, TopicName: "Spam"}},
		&mqv1alpha1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "careless"}},
		&mqv1alpha1.Topic{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "careless-payments"}, Spec: mqv1alpha1.TopicSpec{
			InstanceRef: mqv1alpha1.InstanceReference{Name: "careless"}, TopicName: "Payments", MessageType: mqv1alpha1.MessageType("Transactional")}},
	}
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
	for _, o := range objs {
		waitReady(t, ctx, k8s, o, mgr)
	}
	good, goodHTTP := tenantKey(t, ctx, k8s, ns, "good")
	greedy, _ := tenantKey(t, ctx, k8s, ns, "greedy")
	careless, _ := tenantKey(t, ctx, k8s, ns, "careless")
	if goodHTTP != "http://"+httpAddr {
		t.Fatalf("the good tenant's Secret says %s; the process serves mq-http on %s", goodHTTP, httpAddr)
	}

	// The process's figures, sampled throughout.
	pid := mgr.cmd.Process.Pid
	samples := newSampler(ctx, pid, metricsURL, ports[0], ports[1])
	defer samples.stop()

	// The good tenant.
	ledger := NewLedger(goodProducers)
	gt := startGoodTenant(ctx, goodHTTP, good, "Orders", "GID_workers", ledger)
	window := func(name string) throughput {
		w := gt.measure(ctx, name, sh.window, pid, samples)
		t.Logf("%s", w)
		return w
	}
	sleep(ctx, sh.warmup)
	samples.mark()
	alone := window("alone")
	baseGoroutines, baseSockets := samples.sinceMark()
	t.Logf("baseline while the good tenant works alone: %s goroutines, %s connections on the endpoints, %s socket fds",
		baseGoroutines, baseSockets.conns, baseSockets.fds)

	// The attack: 350 slow connections to mq-http and 300 to remoting, 1,100
	// more to each from one address (past the 1,024 one address may hold), 19 kinds of
	// malformed request ten times a second each, the greedy tenant publishing
	// 500 messages a second (ten times its quota) over both protocols, and the
	// careless tenant's producers that never read.
	attackCtx, stopAttack := context.WithCancel(ctx)
	plan := Plan{
		HTTP: httpAddr, TCP: tcpAddr,
		Sources:     loopbackAddrs(2, 8),
		CrowdSource: net.IPv4(127, 0, 0, 66),

		HTTPSlowBody: 100, HTTPSlowHeaders: 100, HTTPSilent: 100,
		HTTPHeldBodies: 16, CarelessHeldBodies: 32,
		TCPHeldFrames: 100, TCPTrickle: 100, TCPSilent: 100,
		Crowd: 1100,

		MalformedEvery: 100 * time.Millisecond,

		Greedy: greedy, GreedyTopic: "Spam", GreedyRate: 250,

		Careless: careless, CarelessTopic: "Payments",
		NonReaders: 4, NonReaderGroups: 8, HalfMessages: 64, HalfBody: 32 << 10,
	}
	attack := Start(attackCtx, plan)
	attackStart := time.Now()
	samples.mark()
	sleep(ctx, sh.ramp)
	var under []throughput
	for i := range max(1, int((sh.attack-sh.ramp+sh.window/2)/sh.window)) {
		under = append(under, window(fmt.Sprintf("under attack %d", i+1)))
	}
	peakGoroutines, peakSockets := samples.sinceMark()
	stopAttack()
	attack.Wait()
	attackedFor := time.Since(attackStart)
	for _, s := range attack.Stats() {
		t.Logf("attacker %s", s)
	}
	checkAttackers(t, attack.Stats())

	// Once the attackers have gone, the process gives back what they made it hold.
	settleStart := time.Now()
	var after sample
	settled := false
	for time.Since(settleStart) < settleLimit {
		after = samples.now(ctx)
		if after.ok && after.goroutines <= baseGoroutines.max+goroutineSlack && after.conns <= baseSockets.conns.max+connSlack &&
			after.fds <= baseSockets.fds.max+connSlack {
			settled = true
			break
		}
		if n := int(time.Since(settleStart) / (250 * time.Millisecond)); n > 0 && n%8 == 0 {
			socks, _ := ReadSockets(pid, ports[0], ports[1])
			t.Logf("settling for %s: %d goroutines, %s", time.Since(settleStart).Round(time.Second), after.goroutines, socks)
		}
		sleep(ctx, 250*time.Millisecond) // polling the process: there is nothing to wait on
	}
	settledIn := time.Since(settleStart)
	if settled {
		t.Logf("settled in %s: %d goroutines, %d connections, %d socket fds", settledIn.Round(10*time.Millisecond), after.goroutines, after.conns, after.fds)
	} else {
		t.Errorf("%s after the attackers left, the process still holds %d goroutines (baseline %s, slack %d), %d connections on its endpoints (baseline %s, slack %d), %d socket fds (baseline %s)",
			settleLimit, after.goroutines, baseGoroutines, goroutineSlack, after.conns, baseSockets.conns, connSlack, after.fds, baseSockets.fds)
	}
	recovered := window("after the attack")

	// Drain: every acknowledged publish must be consumed.
	gt.stopProducing()
	drainStart := time.Now()
	drainDeadline := time.NewTimer(60 * time.Second)
	defer drainDeadline.Stop()
drain:
	for ledger.Missing() > 0 {
		select {
		case <-ledger.Progress():
		case <-drainDeadline.C:
			break drain
		case <-mgr.exited:
			break drain
		}
	}
	drainedIn := time.Since(drainStart)
	gt.stop()
	report := ledger.Report()
	t.Logf("good tenant, drained in %s: %s; %d publish errors %v, %d consume errors %v", drainedIn.Round(time.Millisecond), report,
		gt.publishErrors.Load(), gt.firstErrors("publish"), gt.consumeErrors.Load(), gt.firstErrors("consume"))

	mem, err := ReadMemory(pid)
	if err != nil {
		t.Fatal(err)
	}
	peakRSS := max(mem.HWM, samples.maxRSS())
	worst := slices.MinFunc(under, func(a, b throughput) int { return cmp.Compare(a.published, b.published) })
	pubRatio := func(w throughput) float64 { return w.published / alone.published }
	conRatio := func(w throughput) float64 { return w.consumed / alone.consumed }
	underAll := combine("under attack", under)
	t.Logf("hostile summary: publish %.0f/s alone, %.0f/s under attack (%.2f; worst window %.2f), %.0f/s after (%.2f); consume %.0f/s alone, %.0f/s under attack (%.2f), %.0f/s after (%.2f); peak RSS %.0f MiB (%d MiB alone; bound %d MiB); goroutines %d before, %d at most under attack, %d after; connections %d before, %d at most, %d after; socket fds %d before, %d after; attack %s; %d acknowledged, %d consumed, %d lost",
		alone.published, underAll.published, pubRatio(underAll), pubRatio(worst), recovered.published, pubRatio(recovered),
		alone.consumed, underAll.consumed, conRatio(underAll), recovered.consumed, conRatio(recovered),
		float64(peakRSS)/(1<<20), alone.rss>>20, rssBound>>20, baseGoroutines.max, peakGoroutines.max, after.goroutines,
		baseSockets.conns.max, peakSockets.conns.max, after.conns, baseSockets.fds.max, after.fds,
		attackedFor.Round(time.Second), report.Acked, report.Consumed, report.LostCount)

	// The whole attack (its windows together) and the window after it; the
	// other processes' share of the machine is in the message, since on two
	// cores it moves the ratio as much as an attack can.
	minRatio := minThroughputRatio
	if *hostileTime == 0 {
		minRatio = shortMinThroughputRatio
	}
	for _, w := range []throughput{underAll, recovered} {
		if pubRatio(w) < minRatio || conRatio(w) < minRatio {
			t.Errorf("%s: the good tenant published %.0f/s and consumed %.0f/s, %.2f and %.2f of its rates alone (%.0f/s, %.0f/s); at least %.2f expected (other processes used %.2f cores then, %.2f alone)",
				w.name, w.published, w.consumed, pubRatio(w), conRatio(w), alone.published, alone.consumed, minRatio, w.others, alone.others)
		}
	}
	if peakRSS > rssBound {
		t.Errorf("the process's resident memory peaked at %.0f MiB, over the %d MiB bound", float64(peakRSS)/(1<<20), rssBound>>20)
	}
	if report.LostCount > 0 || len(report.Phantoms) > 0 {
		t.Errorf("acknowledged publishes lost: %d (%v); phantom deliveries: %v", report.LostCount, report.Lost, report.Phantoms)
	}
	if report.Acked == 0 {
		t.Error("the good tenant published nothing")
	}
	select {
	case <-mgr.exited:
		t.Errorf("the process exited during the run: %v\n%s", mgr.exitErr, mgr.tail())
	default:
	}
	if t.Failed() {
		t.Logf("the process's log ends:\n%s", mgr.tail())
	}
}

// checkAttackers fails the test if an attacker did nothing, or if the server
// never answered one the way the attack means to provoke: an attack that does
// not reach the server proves nothing.
func checkAttackers(t *testing.T, stats []*Stat) {
	t.Helper()
	expect := map[string][]string{
		"http crowd from one address":      {"503 TooManyConnections"},
		"tcp crowd from one address":       {"closed at once"},
		"greedy tenant, mq-http publishes": {"503 Throttling"},
		"http bad signature":               {"403 SignatureDoesNotMatch"},
		"http unknown key":                 {"403 InvalidAccessKeyId"},
		"tcp bad signature":                {"NO_PERMISSION"},
		"tcp unknown key":                  {"NO_PERMISSION"},
	}
	for _, s := range stats {
		if s.Conns.Load()+s.Requests.Load() == 0 {
			t.Errorf("attacker %q made no connection and no request", s.Name)
		}
		answers := s.Answers()
		for _, want := range expect[s.Name] {
			if answers[want] == 0 {
				t.Errorf("attacker %q never got the answer %q: %v", s.Name, want, answers)
			}
		}
	}
}

// --- the good tenant ---

type goodTenant struct {
	published, consumed          atomic.Int64
	publishErrors, consumeErrors atomic.Int64
	producing, consuming         context.Context
	stopProduce, stopConsume     context.CancelFunc
	producers, consumers         sync.WaitGroup

	errMu  sync.Mutex
	errors map[string][]string
}

func (g *goodTenant) recordError(kind string, err error) {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	if len(g.errors[kind]) < 5 {
		s := err.Error()
		if len(s) > 200 {
			s = s[:200]
		}
		g.errors[kind] = append(g.errors[kind], s)
	}
}

func (g *goodTenant) firstErrors(kind string) []string {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	return slices.Clone(g.errors[kind])
}

// startGoodTenant runs goodProducers SDK producers, each publishing one message
// after the other as fast as the broker acknowledges them, and goodConsumers SDK
// consumers long-polling batches of 16 and acknowledging them.
func startGoodTenant(ctx context.Context, endpoint string, k Key, topic, group string, l *Ledger) *goodTenant {
	g := &goodTenant{errors: map[string][]string{}}
	g.producing, g.stopProduce = context.WithCancel(ctx)
	g.consuming, g.stopConsume = context.WithCancel(ctx)
	producers := mqsdk.NewAliyunMQClient(endpoint, k.AccessKeyID, k.AccessKeySecret, "")
	consumers := mqsdk.NewAliyunMQClient(endpoint, k.AccessKeyID, k.AccessKeySecret, "")
	pad := strings.Repeat("p", goodBody)
	for w := range goodProducers {
		g.producers.Go(func() {
			p := producers.GetProducer(k.InstanceID, topic)
			for g.producing.Err() == nil {
				seq := l.Invoke(w)
				body := Token(w, seq)
				body += pad[:goodBody-len(body)]
				_, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: body, MessageTag: "good"})
				if err != nil {
					l.Published(w, seq, publishOutcome(err))
					g.publishErrors.Add(1)
					g.recordError("publish", err)
					continue
				}
				l.Published(w, seq, Acked)
				g.published.Add(1)
			}
		})
	}
	for range goodConsumers {
		g.consumers.Go(func() {
			c := consumers.GetConsumer(k.InstanceID, topic, group, "")
			for g.consuming.Err() == nil {
				resp := make(chan mqsdk.ConsumeMessageResponse, 1)
				errc := make(chan error, 1)
				c.ConsumeMessage(resp, errc, 16, 1)
				var ms []mqsdk.ConsumeMessageEntry
				select {
				case r := <-resp:
					ms = r.Messages
				case err := <-errc:
					if !strings.Contains(err.Error(), "MessageNotExist") {
						g.consumeErrors.Add(1)
						g.recordError("consume", err)
						sleep(g.consuming, 100*time.Millisecond)
					}
					continue
				}
				handles := make([]string, len(ms))
				for i, m := range ms {
					l.Delivered(m.MessageBody)
					handles[i] = m.ReceiptHandle
				}
				failed := map[string]bool{}
				if err := c.AckMessage(handles); err != nil {
					g.consumeErrors.Add(1)
					g.recordError("ack", err)
					items, ok := ackItems(err)
					if !ok {
						continue // none acknowledged: they come back after their invisibility
					}
					for _, it := range items {
						failed[it.ErrorHandle] = true
					}
				}
				for _, m := range ms {
					if !failed[m.ReceiptHandle] {
						l.Consumed(m.MessageBody)
						g.consumed.Add(1)
					}
				}
			}
		})
	}
	return g
}

// stopProducing stops the producers and waits for their last publishes'
// answers.
func (g *goodTenant) stopProducing() {
	g.stopProduce()
	g.producers.Wait()
}

// stop stops the producers and consumers and waits for them.
func (g *goodTenant) stop() {
	g.stopProducing()
	g.stopConsume()
	g.consumers.Wait()
}

// publishOutcome classifies a publish error: refused when the service answered
// with an error of the request, unknown when no answer came (the message may be
// stored) or the service failed inside.
func publishOutcome(err error) Outcome {
	s := err.Error()
	if mqsdk.ErrMqServer.IsEqual(err) && !strings.Contains(s, "InternalError") && !strings.Contains(s, "ServiceUnavailable") {
		return Refused
	}
	return Unknown
}

// ackItems is the per-handle errors of an ack, when it has them.
func ackItems(err error) ([]mqsdk.ErrAckItem, bool) {
	code, ok := err.(gogaperrors.ErrCode)
	if !ok || !mqsdk.ErrAckMessage.IsEqual(err) {
		return nil, false
	}
	items, ok := code.Context()["Detail"].([]mqsdk.ErrAckItem)
	return items, ok && len(items) > 0
}

// throughput is one window's rates.
type throughput struct {
	name                string
	length              time.Duration
	published, consumed float64 // a second
	// cpu is the process's CPU a second (1 is one core); ours that of this test
	// and every process it started (the process, etcd, kube-apiserver); others
	// what the rest of the machine used, and idle what was left.
	cpu, ours, others, idle float64
	// rss is the process's largest resident set seen in the window.
	rss int64
}

func (w throughput) String() string {
	return fmt.Sprintf("window %q (%s): %.0f publishes/s acknowledged, %.0f messages/s consumed; RSS up to %d MiB; cores used: %.2f by the process, %.2f by this test and what it runs, %.2f by others, %.2f idle",
		w.name, w.length, w.published, w.consumed, w.rss>>20, w.cpu, w.ours, w.others, w.idle)
}

// measure counts the good tenant's acknowledged publishes and consumptions over d.
func (g *goodTenant) measure(ctx context.Context, name string, d time.Duration, pid int, samples *sampler) throughput {
	cpu0, _ := readCPU(pid)
	ours0 := ourCPU()
	busy0, idle0, _ := readMachineCPU()
	samples.markRSS()
	p0, c0, t0 := g.published.Load(), g.consumed.Load(), time.Now()
	sleep(ctx, d)
	p1, c1, el := g.published.Load(), g.consumed.Load(), time.Since(t0)
	cpu1, _ := readCPU(pid)
	ours1 := ourCPU()
	busy1, idle1, _ := readMachineCPU()
	s := el.Seconds()
	return throughput{name: name, length: el.Round(10 * time.Millisecond), published: float64(p1-p0) / s, consumed: float64(c1-c0) / s,
		cpu: (cpu1 - cpu0) / s, ours: (ours1 - ours0) / s, others: max(0, (busy1-busy0)-(ours1-ours0)) / s, idle: (idle1 - idle0) / s,
		rss: samples.rssSinceMark()}
}

// combine is the rates over several windows together.
func combine(name string, ws []throughput) throughput {
	out := throughput{name: name}
	var secs float64
	for _, w := range ws {
		s := w.length.Seconds()
		secs += s
		out.published += w.published * s
		out.consumed += w.consumed * s
	}
	if secs > 0 {
		out.published /= secs
		out.consumed /= secs
	}
	out.length = time.Duration(secs * float64(time.Second))
	for _, w := range ws {
		out.others += w.others * w.length.Seconds() / secs
	}
	return out
}

// clockTicks is USER_HZ, what /proc's CPU times count in.
const clockTicks = 100

// readCPU is the CPU time pid has used, in seconds.
func readCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / clockTicks, nil
}

// readMachineCPU is the machine's busy and idle CPU time, in seconds summed over
// its cores.
func readMachineCPU() (busy, idle float64, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return 0, 0, errors.New("/proc/stat is empty")
	}
	fields := strings.Fields(s.Text()) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 8 {
		return 0, 0, fmt.Errorf("/proc/stat: %q", s.Text())
	}
	for i, f := range fields[1:min(len(fields), 9)] {
		v, _ := strconv.ParseFloat(f, 64)
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		} else {
			busy += v
		}
	}
	return busy / clockTicks, idle / clockTicks, nil
}

// ourCPU is the CPU time this test process and its children (the process, etcd
// and kube-apiserver) have used, in seconds.
func ourCPU() float64 {
	self := os.Getpid()
	total, _ := readCPU(self)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(self) { // ppid
			cpu, _ := readCPU(pid)
			total += cpu
		}
	}
	return total
}

// --- sampling the process ---

type sample struct {
	ok                     bool
	goroutines, conns, fds int
}

// span is the least and most of a figure over a stretch of samples.
type span struct{ min, max int }

func (s span) String() string {
	if s.min == s.max {
		return strconv.Itoa(s.max)
	}
	return fmt.Sprintf("%d to %d", s.min, s.max)
}

func (s *span) add(v int, first bool) {
	if first {
		*s = span{v, v}
		return
	}
	s.min, s.max = min(s.min, v), max(s.max, v)
}

type socketSpans struct{ conns, fds span }

// sampler reads the process's resident memory every 50 ms and its goroutines and
// sockets every 500 ms.
type sampler struct {
	pid          int
	metricsURL   string
	ports        []int
	cancel       context.CancelFunc
	done         chan struct{}
	mu           sync.Mutex
	rss, rssMark int64
	n            int
	goroutines   span
	socks        socketSpans
	sampleErrors int
}

func newSampler(ctx context.Context, pid int, metricsURL string, ports ...int) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{pid: pid, metricsURL: metricsURL, ports: ports, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		fast := time.NewTicker(50 * time.Millisecond)
		defer fast.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-fast.C:
			}
			if m, err := ReadMemory(pid); err == nil {
				s.mu.Lock()
				s.rss = max(s.rss, m.RSS)
				s.rssMark = max(s.rssMark, m.RSS)
				s.mu.Unlock()
			}
			if i%10 == 0 {
				if now := s.now(ctx); now.ok {
					s.mu.Lock()
					s.goroutines.add(now.goroutines, s.n == 0)
					s.socks.conns.add(now.conns, s.n == 0)
					s.socks.fds.add(now.fds, s.n == 0)
					s.n++
					s.mu.Unlock()
				}
			}
		}
	}()
	return s
}

// now reads the process's goroutines and sockets.
func (s *sampler) now(ctx context.Context) sample {
	g, err := ReadGoroutines(ctx, s.metricsURL)
	if err != nil {
		return sample{}
	}
	socks, err := ReadSockets(s.pid, s.ports...)
	if err != nil {
		return sample{}
	}
	return sample{ok: true, goroutines: g, conns: socks.Conns(), fds: socks.FDs}
}

// mark starts a new stretch of samples.
func (s *sampler) mark() {
	s.mu.Lock()
	s.n = 0
	s.mu.Unlock()
}

// sinceMark returns the spans of goroutines and sockets since the last mark.
func (s *sampler) sinceMark() (span, socketSpans) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goroutines, s.socks
}

// markRSS starts a new stretch of resident-set samples.
func (s *sampler) markRSS() {
	s.mu.Lock()
	s.rssMark = 0
	s.mu.Unlock()
}

func (s *sampler) rssSinceMark() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rssMark
}

func (s *sampler) maxRSS() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rss
}

func (s *sampler) stop() {
	s.cancel()
	<-s.done
}

// --- the process ---

type orderly struct {
	cmd     *exec.Cmd
	log     *os.File
	exited  chan struct{}
	exitErr error
}

// startOrderly runs the binary against the control plane of kubeconfig, serving
// mq-http, remoting, metrics and probes on ports, in plain text (no --dev, no
// --tls-cert-dir), and waits until it is ready and both endpoints listen.
func startOrderly(t *testing.T, bin, kubeconfig, dir string, ports []int) *orderly {
	t.Helper()
	logFile, err := os.Create(filepath.Join(dir, "orderly.log"))
	if err != nil {
		t.Fatal(err)
	}
	addr := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	cmd := exec.Command(bin,
		"--http-bind-address="+addr(ports[0]), "--tcp-bind-address="+addr(ports[1]),
		"--metrics-bind-address="+addr(ports[2]), "--health-probe-bind-address="+addr(ports[3]),
		"--advertise-host=127.0.0.1", "--runtime-image=orderly:hostile", "--data-dir="+filepath.Join(dir, "data"))
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := devcluster.StartChild(cmd); err != nil { // it dies with the test
		t.Fatal(err)
	}
	o := &orderly{cmd: cmd, log: logFile, exited: make(chan struct{})}
	go func() {
		o.exitErr = cmd.Wait()
		close(o.exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	ready := func() bool {
		res, err := metricsClient.Get(fmt.Sprintf("http://%s/readyz", addr(ports[3])))
		if err != nil {
			return false
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return false
		}
		for _, p := range ports[:3] {
			c, err := net.DialTimeout("tcp", addr(p), time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	}
	for !ready() {
		select {
		case <-o.exited:
			t.Fatalf("orderly exited: %v\n%s", o.exitErr, o.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("orderly not ready within 60 s:\n%s", o.tail())
		}
		time.Sleep(100 * time.Millisecond) // polling the process: there is nothing to wait on
	}
	return o
}

// tail is the end of the process's log.
func (o *orderly) tail() string {
	b, err := os.ReadFile(o.log.Name())
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

// stop stops the process as its pod's termination would, and expects a clean exit.
func (o *orderly) stop(t *testing.T) {
	t.Helper()
	select {
	case <-o.exited:
	default:
		_ = o.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-o.exited:
			if o.exitErr != nil {
				t.Errorf("orderly exited with %v:\n%s", o.exitErr, o.tail())
			}
		case <-time.After(60 * time.Second):
			_ = o.cmd.Process.Kill()
			<-o.exited
			t.Errorf("orderly did not stop within 60 s of SIGTERM:\n%s", o.tail())
		}
	}
	o.log.Close()
}

// --- helpers ---

// freePorts returns n loopback ports free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// loopbackAddrs returns n loopback addresses from 127.0.0.<first>.
func loopbackAddrs(first, n int) []net.IP {
	var out []net.IP
	for i := range n {
		out = append(out, net.IPv4(127, 0, 0, byte(first+i)))
	}
	return out
}

// waitReady waits for obj's Ready condition, as kubectl wait would.
func waitReady(t *testing.T, ctx context.Context, c client.Client, obj client.Object, o *orderly) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		if err == nil {
			if conds, ok := obj.(interface{ GetConditions() []metav1.Condition }); ok &&
				meta.IsStatusConditionTrue(conds.GetConditions(), mqv1alpha1.ConditionReady) {
				return
			}
		}
		select {
		case <-o.exited:
			t.Fatalf("orderly exited: %v\n%s", o.exitErr, o.tail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%T %s not Ready within 60 s (%v):\n%s", obj, obj.GetName(), err, o.tail())
		}
		time.Sleep(100 * time.Millisecond) // polling the apiserver: there is nothing to wait on
	}
}

// tenantKey reads an Instance's credentials and mq-http endpoint from its
// connection Secret, as an application mounting it would.
func tenantKey(t *testing.T, ctx context.Context, c client.Client, ns, name string) (Key, string) {
	t.Helper()
	inst := &mqv1alpha1.Instance{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, inst); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: inst.Status.CredentialsSecret}, secret); err != nil {
		t.Fatal(err)
	}
	d := secret.Data
	return Key{InstanceID: string(d[mqv1alpha1.SecretKeyInstanceID]), AccessKeyID: string(d[mqv1alpha1.SecretKeyAccessKeyID]),
		AccessKeySecret: string(d[mqv1alpha1.SecretKeyAccessKeySecret])}, string(d[mqv1alpha1.SecretKeyHTTPEndpoint])
}
