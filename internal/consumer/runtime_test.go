package consumer

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

const (
	instanceID = "MQ_INST_rt"
	ak, sk     = "ORDLruntimetestkey000000", "runtimetestsecret00000000000000"
)

// env is a broker and its mq-http endpoint on loopback, with an ordered topic
// and a group.
type env struct {
	t      *testing.T
	broker *broker.Broker
	client *mqhttp.Client
	dir    string
}

func newEnv(t *testing.T, typ broker.MessageType, maxRedeliveries int) *env {
	t.Helper()
	b, err := broker.Open(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: instanceID, Owner: "o", Credentials: []broker.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureTopic(instanceID, broker.TopicConfig{Name: "T", Type: typ, Queues: 2, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureGroup(instanceID, broker.GroupConfig{ID: "G", Protocol: broker.HTTP, MaxRedeliveries: maxRedeliveries, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	srv := mqhttp.NewServer("127.0.0.1:0", b, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := (<-srv.Listening()).(*net.TCPAddr)
	return &env{t: t, broker: b, dir: t.TempDir(), client: &mqhttp.Client{
		Endpoint: "http://" + addr.String(), InstanceID: instanceID, AccessKeyID: ak, AccessKeySecret: sk}}
}

func (e *env) config(mode Mode) Config {
	return Config{Endpoint: e.client.Endpoint, InstanceID: instanceID, AccessKeyID: ak, AccessKeySecret: sk,
		Topic: "T", Group: "G", Ordered: true, Mode: mode, IdleTimeout: time.Second, HandlerTimeout: time.Second}
}

func (e *env) publish(bodies ...string) {
	e.t.Helper()
	for _, b := range bodies {
		if _, err := e.client.Publish(context.Background(), "T", b, "tag", "key"); err != nil {
			e.t.Fatal(err)
		}
	}
}

// handler records "body consumedTimes shardingKey" lines in dir/out and fails
// bodies starting with "bad".
func (e *env) handler() []string {
	return []string{"sh", "-c", `body=$(cat); echo "$body $ORDERLY_CONSUMED_TIMES $ORDERLY_SHARDING_KEY $ORDERLY_MESSAGE_TAG" >> "` +
		filepath.Join(e.dir, "out") + `"; case "$body" in bad*) exit 1;; esac`}
}

func (e *env) lines() []string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "out"))
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "/"))
}

func TestDrainHandsEachMessageToTheCommandInOrder(t *testing.T) {
	e := newEnv(t, broker.Ordered, 16)
	e.publish("a", "b", "c")
	var log bytes.Buffer
	rt := &Runtime{Config: e.config(Drain), Command: e.handler(), Stderr: &log}
	res, err := rt.Run(context.Background())
	if err != nil || res != (Result{Handled: 3}) {
		t.Fatalf("result %+v, %v; log:\n%s", res, err, log.String())
	}
	if got := strings.Join(e.lines(), " "); got != "a/1/key/tag b/1/key/tag c/1/key/tag" {
		t.Fatalf("handler saw %q", got)
	}
	stats, _ := e.broker.GroupStats(instanceID, "G")
	if stats.Topics[0].Backlog != 0 {
		t.Fatalf("backlog %d after drain", stats.Topics[0].Backlog)
	}
}

// A failed message is not acknowledged: it comes back once its invisibility (the
// handler timeout) passes, before anything after it on its queue, and is
// dead-lettered past the group's limit.
func TestFailureLeavesTheMessageForRedeliveryThenDeadLetters(t *testing.T) {
	e := newEnv(t, broker.Ordered, 1)
	e.publish("bad", "good")
	rt := &Runtime{Config: e.config(Drain), Command: e.handler()}
	rt.Config.IdleTimeout = 3 * time.Second // longer than the 1 s invisibility
	rt.Config.Worker = "pod-uid-1"
	res, err := rt.Run(context.Background())
	if err != nil || res != (Result{Handled: 1, Failed: 2}) {
		t.Fatalf("result %+v, %v", res, err)
	}
	// Each consume carried the counts so far, the last one (which found the
	// topic drained) the final counts: what the controller shows while pods run.
	progress, err := e.broker.WorkerProgress(instanceID, "G")
	if want := (broker.WorkerProgress{Worker: "pod-uid-1", Handled: 1, Failed: 2}); err != nil || progress["pod-uid-1"] != want {
		t.Fatalf("reported %v %v, want %+v", progress, err, want)
	}
	if got := strings.Join(e.lines(), " "); got != "bad/1/key/tag bad/2/key/tag good/1/key/tag" {
		t.Fatalf("handler saw %q", got)
	}
	dead, _, err := e.broker.DeadLetters(instanceID, "G", 0, 10)
	if err != nil || len(dead) != 1 || string(dead[0].Body) != "bad" {
		t.Fatalf("dead letters %v %v", dead, err)
	}
}

func TestMessagesModeStopsAtItsBudget(t *testing.T) {
	e := newEnv(t, broker.Normal, 16)
	e.publish("1", "2", "3", "4")
	cfg := e.config(Messages)
	cfg.Ordered, cfg.MaxMessages = false, 2
	res, err := (&Runtime{Config: cfg, Command: e.handler()}).Run(context.Background())
	if err != nil || res.Handled != 2 || len(e.lines()) != 2 {
		t.Fatalf("result %+v, %v, handled %v", res, err, e.lines())
	}
}

// Stopping (SIGTERM in a pod) lets the message in hand finish and be acknowledged.
func TestStopFinishesTheMessageInHand(t *testing.T) {
	e := newEnv(t, broker.Ordered, 16)
	e.publish("slow", "next")
	started := filepath.Join(e.dir, "started")
	cmd := []string{"sh", "-c", `touch "` + started + `"; sleep 1; cat >> "` + filepath.Join(e.dir, "out") + `"`}
	ctx, cancel := context.WithCancel(context.Background())
	var res Result
	var err error
	var wg sync.WaitGroup
	wg.Go(func() {
		cfg := e.config(Forever)
		cfg.HandlerTimeout = 10 * time.Second
		res, err = (&Runtime{Config: cfg, Command: cmd}).Run(ctx)
	})
	for {
		if _, serr := os.Stat(started); serr == nil {
			break
		}
		time.Sleep(10 * time.Millisecond) // waiting on a file another process writes
	}
	cancel()
	wg.Wait()
	if err != nil || res.Handled != 1 || strings.Join(e.lines(), " ") != "slow" {
		t.Fatalf("result %+v, %v, handled %v", res, err, e.lines())
	}
	stats, _ := e.broker.GroupStats(instanceID, "G")
	if stats.Topics[0].Backlog != 1 || stats.Topics[0].InFlight != 0 {
		t.Fatalf("after stop: %+v; want the slow message acked and the next untouched", stats.Topics[0])
	}
}

func TestHandlerTimeoutKillsTheHandlerAndItsChildren(t *testing.T) {
	e := newEnv(t, broker.Ordered, 16)
	e.publish("x")
	pidFile := filepath.Join(e.dir, "pid")
	cfg := e.config(Messages)
	cfg.MaxMessages = 1
	rt := &Runtime{Config: cfg, Command: []string{"sh", "-c", `sleep 30 & echo $! > "` + pidFile + `"; wait`}}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, _ := rt.Run(ctx)
	if res.Failed == 0 || time.Since(start) > 10*time.Second {
		t.Fatalf("result %+v after %s", res, time.Since(start))
	}
	b, _ := os.ReadFile(pidFile)
	pid := strings.TrimSpace(string(b))
	if pid == "" {
		t.Fatal("the handler did not start its child")
	}
	// Gone, or a zombie waiting for a reaper: killed either way. The group's
	// SIGKILL is sent before Run returns, but a process takes a moment to die, so
	// the state is looked at until it is dead or a deadline passes.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			break
		}
		f := strings.Fields(string(stat))
		if len(f) <= 2 || f[2] == "Z" || f[2] == "X" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the handler's child %s survived the timeout (state %s)", pid, f[2])
		}
	}
}

func TestBadCredentialsAreFatal(t *testing.T) {
	e := newEnv(t, broker.Ordered, 16)
	cfg := e.config(Forever)
	cfg.AccessKeySecret = "wrong"
	if _, err := (&Runtime{Config: cfg, Command: e.handler()}).Run(context.Background()); err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("got %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	full := map[string]string{EnvEndpoint: "http://x", EnvInstanceID: "i", EnvAccessKeyID: "a", EnvAccessKeySecret: "s",
		EnvTopic: "T", EnvGroup: "G", EnvOrdered: "true", EnvMode: "Messages", EnvMaxMessages: "5", EnvIdleSeconds: "90", EnvHandlerTimeout: "7", EnvWorker: "uid"}
	cfg, err := ConfigFromEnv(func(k string) string { return full[k] })
	if err != nil || !cfg.Ordered || cfg.Worker != "uid" || cfg.MaxMessages != 5 || cfg.IdleTimeout != 30*time.Second || cfg.HandlerTimeout != 7*time.Second {
		t.Fatalf("%+v %v", cfg, err)
	}
	for key, bad := range map[string]string{EnvTopic: "", EnvMode: "Sometimes", EnvMaxMessages: "0", EnvHandlerTimeout: "-1"} {
		env := map[string]string{}
		for k, v := range full {
			env[k] = v
		}
		env[key] = bad
		if _, err := ConfigFromEnv(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s=%q: %v", key, bad, err)
		}
	}
}
