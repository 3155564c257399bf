package remoting

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	rocketmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
	"github.com/go-logr/logr/testr"

	"github.com/orderly-dev/orderly/internal/broker"
)

// These tests drive the real client github.com/apache/rocketmq-client-go/v2 v2.1.2
// against the server on loopback.

const (
	testInstance = "MQ_INST_tcp"
	testAK       = "ORDLtcptestaccesskey0000"
	testSK       = "tcptestsecret000000000000000000"
)

func TestMain(m *testing.M) {
	rlog.SetLogLevel("error")
	os.Exit(m.Run())
}

type env struct {
	t        *testing.T
	broker   *broker.Broker
	server   *Server
	nameAddr string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, broker.Limits{}, nil)
}

// newEnvWith starts an env whose instance has the tenant limits; configure, if not
// nil, sets the server up before it starts.
func newEnvWith(t *testing.T, tenant broker.Limits, configure func(*Server)) *env {
	t.Helper()
	// Delay levels in milliseconds, so that retries come back within a test.
	levels := make([]time.Duration, 18)
	for i := range levels {
		levels[i] = time.Duration(i+1) * 20 * time.Millisecond
	}
	// Message ids carry the broker's port: listen first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A short lock lease: the Go client does not unlock a queue it gives up in a
	// rebalance, so its new owner waits for the lease.
	b, err := broker.Open(broker.Options{DelayLevels: levels, StorePort: uint32(ln.Addr().(*net.TCPAddr).Port), LockLease: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Limits: tenant,
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer("127.0.0.1:0", "", b, testr.NewWithOptions(t, testr.Options{Verbosity: 0}))
	srv.CheckEvery = 100 * time.Millisecond
	srv.Listener = ln
	if configure != nil {
		configure(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	addr := (<-srv.Listening()).(*net.TCPAddr)
	return &env{t: t, broker: b, server: srv, nameAddr: addr.String()}
}

func (e *env) topic(name string, typ broker.MessageType, queues int) {
	e.t.Helper()
	if _, err := e.broker.EnsureTopic(testInstance, broker.TopicConfig{Name: name, Type: typ, Queues: queues, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) group(id string, p broker.Protocol, maxRedeliveries int) {
	e.t.Helper()
	if _, err := e.broker.EnsureGroup(testInstance, broker.GroupConfig{ID: id, Protocol: p, MaxRedeliveries: maxRedeliveries, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) creds() primitive.Credentials {
	return primitive.Credentials{AccessKey: testAK, SecretKey: testSK}
}

func (e *env) producer(opts ...producer.Option) rocketmq.Producer {
	e.t.Helper()
	opts = append([]producer.Option{producer.WithNameServer([]string{e.nameAddr}), producer.WithCredentials(e.creds()),
		producer.WithNamespace(testInstance), producer.WithRetry(1)}, opts...)
	p, err := rocketmq.NewProducer(opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = p.Shutdown() })
	return p
}

// newTransactionProducer starts a transactional producer with a client of its own,
// as the spec advises (7.24).
func newTransactionProducer(e *env, l primitive.TransactionListener) (rocketmq.TransactionProducer, error) {
	p, err := rocketmq.NewTransactionProducer(l, producer.WithNameServer([]string{e.nameAddr}), producer.WithCredentials(e.creds()),
		producer.WithNamespace(testInstance), producer.WithGroupName("PID_trans"), producer.WithInstanceName("tx"), producer.WithRetry(1))
	if err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	e.t.Cleanup(func() { _ = p.Shutdown() })
	return p, nil
}

func (e *env) pushConsumer(group string, opts ...consumer.Option) rocketmq.PushConsumer {
	e.t.Helper()
	opts = append([]consumer.Option{consumer.WithNameServer([]string{e.nameAddr}), consumer.WithCredentials(e.creds()),
		consumer.WithNamespace(testInstance), consumer.WithGroupName(group),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset)}, opts...)
	c, err := rocketmq.NewPushConsumer(opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// consume starts a push consumer of group on topic that collects what it gets and
// answers result; it stops when the test ends.
func (e *env) consume(group, topic string, sel consumer.MessageSelector, result consumer.ConsumeResult) *collector {
	e.t.Helper()
	got := newCollector()
	c := e.pushConsumer(group)
	if err := c.Subscribe(topic, sel, func(_ context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		got.add(ms...)
		return result, nil
	}); err != nil {
		e.t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Shutdown() })
	return got
}

// collector gathers consumed messages, and when each body first arrived.
type collector struct {
	mu      sync.Mutex
	msgs    []*primitive.MessageExt
	arrived map[string]time.Time
	more    chan struct{}
}

func newCollector() *collector {
	return &collector{arrived: map[string]time.Time{}, more: make(chan struct{}, 1)}
}

func (c *collector) add(ms ...*primitive.MessageExt) {
	now := time.Now()
	c.mu.Lock()
	c.msgs = append(c.msgs, ms...)
	for _, m := range ms {
		if _, ok := c.arrived[string(m.Body)]; !ok {
			c.arrived[string(m.Body)] = now
		}
	}
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

// arrivedAt is when body first arrived; zero if it has not.
func (c *collector) arrivedAt(body string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.arrived[body]
}

// wait waits until cond holds for the messages so far.
func (c *collector) wait(t *testing.T, limit time.Duration, cond func([]*primitive.MessageExt) bool) []*primitive.MessageExt {
	t.Helper()
	deadline := time.After(limit)
	for {
		c.mu.Lock()
		msgs := append([]*primitive.MessageExt(nil), c.msgs...)
		c.mu.Unlock()
		if cond(msgs) {
			return msgs
		}
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("condition not met within %s; %d messages consumed", limit, len(msgs))
		}
	}
}

func TestSendAndPushConsume(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 4)
	e.group("GID_tcp", broker.TCP, 16)
	p := e.producer(producer.WithGroupName("PID_a"))
	ctx := context.Background()
	sent := map[string]string{}
	for i := range 8 {
		msg := primitive.NewMessage("TopicA", []byte(fmt.Sprintf("hello %d", i)))
		msg.WithTag("TagA")
		msg.WithKeys([]string{fmt.Sprintf("key%d", i)})
		msg.WithProperty("p", fmt.Sprint(i))
		res, err := p.SendSync(ctx, msg)
		if err != nil || res.Status != primitive.SendOK {
			t.Fatalf("send %d: %v %v", i, res, err)
		}
		sent[string(msg.Body)] = res.OffsetMsgID
	}
	// Async and batch sends too.
	done := make(chan error, 1)
	if err := p.SendAsync(ctx, func(_ context.Context, r *primitive.SendResult, err error) { done <- err },
		primitive.NewMessage("TopicA", []byte("async")).WithTag("TagA")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := p.SendSync(ctx, primitive.NewMessage("TopicA", []byte("batch 1")).WithTag("TagA"),
		primitive.NewMessage("TopicA", []byte("batch 2")).WithTag("TagA")); err != nil {
		t.Fatal(err)
	}
	// A message of another tag, filtered out.
	if _, err := p.SendSync(ctx, primitive.NewMessage("TopicA", []byte("other")).WithTag("TagB")); err != nil {
		t.Fatal(err)
	}

	got := e.consume("GID_tcp", "TopicA", consumer.MessageSelector{Type: consumer.TAG, Expression: "TagA"}, consumer.ConsumeSuccess)
	msgs := got.wait(t, 20*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) >= 11 })
	seen := map[string]bool{}
	for _, m := range msgs {
		body := string(m.Body)
		if seen[body] {
			t.Errorf("%q consumed twice", body)
		}
		seen[body] = true
		if body == "other" || m.GetTags() != "TagA" {
			t.Errorf("filter let %q (%s) through", body, m.GetTags())
		}
		if id, ok := sent[body]; ok && (m.OffsetMsgId != id || m.GetKeys() == "" || m.GetProperty("p") == "") {
			t.Errorf("message %q: offset id %s (sent %s), keys %q", body, m.OffsetMsgId, id, m.GetKeys())
		}
	}
	if len(seen) != 11 {
		t.Fatalf("consumed %d distinct messages, want 11", len(seen))
	}
}
