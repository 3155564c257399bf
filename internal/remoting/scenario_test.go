package remoting

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

// orderedRecorder records which consumer handled each message, per key, and
// whether two consumers ever held one queue at once.
type orderedRecorder struct {
	mu       sync.Mutex
	perKey   map[string][]int
	byQueue  map[int]map[string]bool
	holder   map[int]string
	overlaps []string
	distinct map[int]bool
	more     chan struct{}
}

func newOrderedRecorder() *orderedRecorder {
	return &orderedRecorder{perKey: map[string][]int{}, byQueue: map[int]map[string]bool{}, holder: map[int]string{},
		distinct: map[int]bool{}, more: make(chan struct{}, 1)}
}

func (r *orderedRecorder) handler(name string) func(context.Context, ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	return func(_ context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		for _, m := range ms {
			q := m.Queue.QueueId
			r.mu.Lock()
			if h := r.holder[q]; h != "" && h != name {
				r.overlaps = append(r.overlaps, fmt.Sprintf("queue %d: %s while %s", q, name, h))
			}
			r.holder[q] = name
			r.mu.Unlock()
			time.Sleep(time.Millisecond) // a handler that takes time, so overlaps could show
			n, _ := strconv.Atoi(string(m.Body))
			r.mu.Lock()
			r.holder[q] = ""
			r.perKey[m.GetShardingKey()] = append(r.perKey[m.GetShardingKey()], n)
			if r.byQueue[q] == nil {
				r.byQueue[q] = map[string]bool{}
			}
			r.byQueue[q][name] = true
			r.distinct[n] = true
			r.mu.Unlock()
			select {
			case r.more <- struct{}{}:
			default:
			}
		}
		return consumer.ConsumeSuccess, nil
	}
}

func (r *orderedRecorder) waitTotal(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	deadline := time.After(limit)
	for {
		r.mu.Lock()
		total := len(r.distinct)
		r.mu.Unlock()
		if total >= n {
			return
		}
		select {
		case <-r.more:
		case <-deadline:
			t.Fatalf("%d of %d distinct messages consumed within %s", total, n, limit)
		}
	}
}

// Ordered send by sharding key, consumed orderly by three members of one group:
// per-key order, each queue held by one member at a time; then a member leaves and
// its queues move to the others without loss.
func TestOrderedConsumeAcrossThreeMembers(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_ORDER", broker.Ordered, 4)
	e.group("GID_order", broker.TCP, 16)
	p := e.producer(producer.WithGroupName("PID_order"), producer.WithQueueSelector(producer.NewHashQueueSelector()))
	send := func(from, to int) {
		for i := from; i < to; i++ {
			msg := primitive.NewMessage("MQ_ORDER", []byte(strconv.Itoa(i)))
			msg.WithShardingKey("order-" + strconv.Itoa(i%6))
			if _, err := p.SendSync(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(0, 60)

	rec := newOrderedRecorder()
	var consumers []interface{ Shutdown() error }
	for _, name := range []string{"c1", "c2", "c3"} {
		c := e.pushConsumer("GID_order", consumer.WithConsumerOrder(true), consumer.WithInstance(name))
		if err := c.Subscribe("MQ_ORDER", consumer.MessageSelector{}, rec.handler(name)); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		consumers = append(consumers, c)
	}
	defer func() {
		for _, c := range consumers[1:] {
			_ = c.Shutdown()
		}
	}()
	rec.waitTotal(t, 60, 30*time.Second)

	// c1 leaves: its queues move to c2 and c3 at once (its connection closes).
	if err := consumers[0].Shutdown(); err != nil {
		t.Fatal(err)
	}
	send(60, 90)
	rec.waitTotal(t, 90, 30*time.Second)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.overlaps) > 0 {
		t.Fatalf("two members held one queue at once: %v", rec.overlaps)
	}
	// Every message at least once, in per-key order. A queue that changes hands
	// can replay what its old owner consumed but had not committed yet (RocketMQ's
	// at-least-once: the Go client commits offsets every 5 s and does not unlock a
	// queue it gives up); a replay never goes back before a message it skipped.
	distinct := 0
	for key, bodies := range rec.perKey {
		seen := map[int]bool{}
		highest := -1
		for _, b := range bodies {
			switch {
			case b > highest:
				for n := highest + 1; n < b; n++ {
					if n%6 == int(key[len(key)-1]-'0') && !seen[n] {
						t.Fatalf("key %s: %d consumed before %d: %v", key, b, n, bodies)
					}
				}
				highest = b
			case !seen[b]:
				t.Fatalf("key %s: %d consumed after %d, never before: %v", key, b, highest, bodies)
			}
			if !seen[b] {
				distinct++
			}
			seen[b] = true
		}
	}
	if distinct != 90 {
		t.Fatalf("consumed %d distinct messages, want all 90", distinct)
	}
	members := map[string]bool{}
	for _, names := range rec.byQueue {
		for n := range names {
			members[n] = true
		}
	}
	if len(members) < 2 {
		t.Fatalf("only %v consumed: the group did not share the queues", members)
	}
}

// transactionListener decides by body: "commit", "rollback", or "unknown" then
// commit on check-back.
type transactionListener struct {
	mu     sync.Mutex
	checks []string
}

func (l *transactionListener) ExecuteLocalTransaction(m *primitive.Message) primitive.LocalTransactionState {
	switch string(m.Body) {
	case "commit":
		return primitive.CommitMessageState
	case "rollback":
		return primitive.RollbackMessageState
	}
	return primitive.UnknowState
}

func (l *transactionListener) CheckLocalTransaction(m *primitive.MessageExt) primitive.LocalTransactionState {
	l.mu.Lock()
	l.checks = append(l.checks, string(m.Body))
	l.mu.Unlock()
	if strings.HasPrefix(string(m.Body), "unknown-rollback") {
		return primitive.RollbackMessageState
	}
	return primitive.CommitMessageState
}

// Transactional send: commit, rollback, and unknown states resolved by check-back.
func TestTransactions(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_TRANS", broker.Transactional, 2)
	e.group("GID_trans", broker.TCP, 16)
	l := &transactionListener{}
	p, err := newTransactionProducer(e, l)
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"commit", "rollback", "unknown-commit", "unknown-rollback"} {
		msg := primitive.NewMessage("MQ_TRANS", []byte(body))
		// Check back after 1 s rather than the default 10 s.
		msg.WithProperty(propCheckImmune, "1")
		res, err := p.SendMessageInTransaction(context.Background(), msg)
		if err != nil || res.Status != primitive.SendOK {
			t.Fatalf("%s: %v %v", body, res, err)
		}
	}
	got := e.consume("GID_trans", "MQ_TRANS", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	msgs := got.wait(t, 30*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) >= 2 })
	// Give a wrongly delivered rollback time to show.
	time.Sleep(1500 * time.Millisecond) // nothing to wait on: proving an absence
	msgs = got.wait(t, time.Second, func([]*primitive.MessageExt) bool { return true })
	var bodies []string
	for _, m := range msgs {
		bodies = append(bodies, string(m.Body))
	}
	if strings.Join(sorted(bodies), ",") != "commit,unknown-commit" {
		t.Fatalf("consumed %v; want the committed ones only", bodies)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if strings.Join(sorted(l.checks), ",") != "unknown-commit,unknown-rollback" {
		t.Fatalf("check-backs for %v; want the unknown ones", l.checks)
	}
}

func sorted(xs []string) []string { return slices.Sorted(slices.Values(xs)) }

// A delay level holds the message back for its delay.
func TestDelayLevel(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicD", broker.Normal, 1)
	e.group("GID_delay", broker.TCP, 16)
	p := e.producer(producer.WithGroupName("PID_delay"))
	msg := primitive.NewMessage("TopicD", []byte("later"))
	msg.WithDelayTimeLevel(10) // 200 ms with the test's levels
	start := time.Now()
	if _, err := p.SendSync(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	got := e.consume("GID_delay", "TopicD", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	got.wait(t, 10*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) == 1 })
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("delivered after %s, before its delay", d)
	}
}

// Timer properties hold a message back until its time: the ONS clients'
// __STARTDELIVERTIME and RocketMQ 5's TIMER_DELIVER_MS (absolute), TIMER_DELAY_SEC
// and TIMER_DELAY_MS (relative). The properties reach the consumer as sent.
func TestDeliveryTimeProperties(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicT", broker.Normal, 1)
	e.group("GID_timer", broker.TCP, 16)
	p := e.producer(producer.WithGroupName("PID_timer"))
	start := time.Now()
	millis := func(d time.Duration) string { return strconv.FormatInt(start.Add(d).UnixMilli(), 10) }
	cases := []struct {
		name, value string
		due         time.Duration // after start, at the least
	}{
		{"__STARTDELIVERTIME", millis(600 * time.Millisecond), 600 * time.Millisecond},
		{"TIMER_DELIVER_MS", millis(500 * time.Millisecond), 500 * time.Millisecond},
		{"TIMER_DELAY_SEC", "1", time.Second},
		{"TIMER_DELAY_MS", "400", 400 * time.Millisecond},
	}
	for _, c := range cases {
		msg := primitive.NewMessage("TopicT", []byte(c.name))
		msg.WithProperty(c.name, c.value)
		if _, err := p.SendSync(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("TopicT", []byte("now"))); err != nil {
		t.Fatal(err)
	}
	got := e.consume("GID_timer", "TopicT", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	msgs := got.wait(t, 20*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) == len(cases)+1 })
	if string(msgs[0].Body) != "now" {
		t.Fatalf("first delivery %q, want the untimed message", msgs[0].Body)
	}
	props := map[string]string{}
	for _, m := range msgs {
		props[string(m.Body)] = m.GetProperty(string(m.Body))
	}
	for _, c := range cases {
		// The broker runs on the same wall clock: a delivery before its time is a
		// failure, whatever the machine's load.
		// Times travel in whole milliseconds.
		if early := start.Add(c.due).Truncate(time.Millisecond).Sub(got.arrivedAt(c.name)); early > 0 {
			t.Errorf("%s delivered %s before its time", c.name, early)
		}
		if props[c.name] != c.value {
			t.Errorf("%s reached the consumer as %q, sent as %q", c.name, props[c.name], c.value)
		}
	}
}

// A handler that asks to retry later gets the message again; past the group's
// maxRedeliveries it goes to the dead letters.
func TestRetryThenDeadLetter(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicR", broker.Normal, 2)
	e.group("GID_retry", broker.TCP, 2)
	p := e.producer(producer.WithGroupName("PID_retry"))
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("TopicR", []byte("poison"))); err != nil {
		t.Fatal(err)
	}
	got := e.consume("GID_retry", "TopicR", consumer.MessageSelector{}, consumer.ConsumeRetryLater)
	msgs := got.wait(t, 30*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) >= 3 })
	for i, m := range msgs[:3] {
		if string(m.Body) != "poison" || m.ReconsumeTimes != int32(i) || m.Topic != testInstance+"%TopicR" {
			t.Fatalf("delivery %d: %q reconsumed %d times, topic %s", i, m.Body, m.ReconsumeTimes, m.Topic)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		dead, _, err := e.broker.DeadLetters(testInstance, "GID_retry", 0, 10)
		if err == nil && len(dead) == 1 && string(dead[0].Body) == "poison" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters: %v %v", dead, err)
		}
		time.Sleep(20 * time.Millisecond) // polling the broker's state
	}
	time.Sleep(300 * time.Millisecond) // proving an absence: no fourth delivery
	if n := len(got.wait(t, time.Second, func([]*primitive.MessageExt) bool { return true })); n != 3 {
		t.Fatalf("%d deliveries, want 3 (the first and maxRedeliveries=2 more)", n)
	}
}

// Messages published over HTTP are consumed over TCP by a TCP group, and the reverse.
func TestHTTPAndTCPInterwork(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicX", broker.Normal, 2)
	e.group("GID_tcpx", broker.TCP, 16)
	e.group("GID_httpx", broker.HTTP, 16)
	httpSrv := mqhttp.NewServer("127.0.0.1:0", e.broker, e.server.Log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = httpSrv.Start(ctx) }()
	hc := &mqhttp.Client{Endpoint: "http://" + (<-httpSrv.Listening()).String(), InstanceID: testInstance, AccessKeyID: testAK, AccessKeySecret: testSK}

	if _, err := hc.Publish(ctx, "TopicX", "from http", "T", ""); err != nil {
		t.Fatal(err)
	}
	p := e.producer(producer.WithGroupName("PID_x"))
	if _, err := p.SendSync(ctx, primitive.NewMessage("TopicX", []byte("from tcp")).WithTag("T")); err != nil {
		t.Fatal(err)
	}
	got := e.consume("GID_tcpx", "TopicX", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	msgs := got.wait(t, 10*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) == 2 })
	var viaTCP []string
	for _, m := range msgs {
		viaTCP = append(viaTCP, string(m.Body)+"/"+m.GetTags())
	}
	var viaHTTP []string
	for len(viaHTTP) < 2 {
		ms, err := hc.Consume(ctx, mqhttp.ConsumeRequest{Topic: "TopicX", Group: "GID_httpx", Max: 16, Wait: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			viaHTTP = append(viaHTTP, m.Body+"/"+m.Tag)
		}
	}
	want := "from http/T,from tcp/T"
	if strings.Join(sorted(viaTCP), ",") != want || strings.Join(sorted(viaHTTP), ",") != want {
		t.Fatalf("over TCP %v, over HTTP %v; want %s on both", viaTCP, viaHTTP, want)
	}
}

// TestCompressedBodiesReachEveryWire sends bodies past the Go client's 4 KiB
// compression threshold, which it sends zlib-compressed with the compressed flag:
// the broker keeps them plain, so consumers on TCP and on HTTP read what was sent.
func TestCompressedBodiesReachEveryWire(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicZ", broker.Normal, 2)
	e.group("GID_tcpz", broker.TCP, 16)
	e.group("GID_httpz", broker.HTTP, 16)
	httpSrv := mqhttp.NewServer("127.0.0.1:0", e.broker, e.server.Log)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = httpSrv.Start(ctx) }()
	hc := &mqhttp.Client{Endpoint: "http://" + (<-httpSrv.Listening()).String(), InstanceID: testInstance, AccessKeyID: testAK, AccessKeySecret: testSK}

	bodies := map[string]bool{}
	for i, size := range []int{100, 4096, 5 << 10, 300 << 10} {
		var sb strings.Builder
		fmt.Fprintf(&sb, "body %d:", i)
		for sb.Len() < size {
			fmt.Fprintf(&sb, " line %d of a compressible body;", sb.Len())
		}
		bodies[sb.String()[:size]] = true
	}
	p := e.producer(producer.WithGroupName("PID_z"))
	for b := range bodies {
		if _, err := p.SendSync(ctx, primitive.NewMessage("TopicZ", []byte(b))); err != nil {
			t.Fatal(err)
		}
	}
	got := e.consume("GID_tcpz", "TopicZ", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	for _, m := range got.wait(t, 10*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) == len(bodies) }) {
		if !bodies[string(m.Body)] {
			t.Errorf("over TCP, a body of %d bytes that was not sent: %.40q", len(m.Body), m.Body)
		}
	}
	seen := 0
	for seen < len(bodies) {
		ms, err := hc.Consume(ctx, mqhttp.ConsumeRequest{Topic: "TopicZ", Group: "GID_httpz", Max: 16, Wait: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			seen++
			sum := md5.Sum([]byte(m.Body))
			if !bodies[m.Body] {
				t.Errorf("over HTTP, a body of %d bytes that was not sent: %.40q", len(m.Body), m.Body)
			} else if want := strings.ToUpper(hex.EncodeToString(sum[:])); m.BodyMD5 != want {
				t.Errorf("over HTTP, MessageBodyMD5 %s for a body whose MD5 is %s", m.BodyMD5, want)
			}
		}
	}
}

// TestSQL92Subscription: the Go client's SQL92 push subscription, which it
// sends in its heartbeat, selects by the properties the producer set and by
// TAGS; a subscription that does not compile is refused in the heartbeat's
// answer, and CHECK_CLIENT_CONFIG, the Java consumer's check on start, says
// why.
func TestSQL92Subscription(t *testing.T) {
	e := newEnv(t)
	// One queue, so that one pull answers every message the filter lets through.
	e.topic("TopicS", broker.Normal, 1)
	e.group("GID_sql", broker.TCP, 16)
	p := e.producer(producer.WithGroupName("PID_sql"))
	for i, tc := range []struct{ tag, a string }{{"T", "1"}, {"T", "2"}, {"U", "3"}, {"T", ""}, {"T", "x"}, {"T", "10"}} {
		m := primitive.NewMessage("TopicS", []byte(fmt.Sprint(i))).WithTag(tc.tag)
		if tc.a != "" {
			m.WithProperty("a", tc.a)
		}
		if _, err := p.SendSync(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	got := e.consume("GID_sql", "TopicS", consumer.MessageSelector{Type: consumer.SQL92, Expression: "TAGS = 'T' AND a > 1"}, consumer.ConsumeSuccess)
	msgs := got.wait(t, 15*time.Second, func(ms []*primitive.MessageExt) bool {
		return len(ms) >= 2 && slices.ContainsFunc(ms, func(m *primitive.MessageExt) bool { return string(m.Body) == "5" })
	})
	var bodies []string
	for _, m := range msgs {
		bodies = append(bodies, string(m.Body))
	}
	if slices.Sort(bodies); !slices.Equal(bodies, []string{"1", "5"}) {
		t.Fatalf("consumed %v, want 1 and 5", bodies)
	}

	c := e.raw()
	check := func(exprType, expr string) *Command {
		body := fmt.Sprintf(`{"clientId":"c1","group":"GID_sql","subscriptionData":{"topic":"TopicS","subString":%q,"expressionType":%q,"classFilterMode":false,"tagsSet":[],"codeSet":[],"subVersion":1}}`, expr, exprType)
		return c.call(reqCheckClientConfig, nil, []byte(body), testAK, testSK)
	}
	if res := check("SQL92", "a BETWEEN 1 AND 3"); res.Code != codeSuccess {
		t.Errorf("CHECK_CLIENT_CONFIG of a good expression: %d %q", res.Code, res.Remark)
	}
	if res := check("TAG", "*"); res.Code != codeSuccess {
		t.Errorf("CHECK_CLIENT_CONFIG of a tag subscription: %d %q", res.Code, res.Remark)
	}
	for exprType, expr := range map[string]string{"SQL92": "a BETWEEN 3 AND 1", "JSON": "x"} {
		if res := check(exprType, expr); res.Code != codeSubscriptionParse || res.Remark == "" {
			t.Errorf("CHECK_CLIENT_CONFIG of %s %q: %d %q, want SUBSCRIPTION_PARSE_FAILED with the reason", exprType, expr, res.Code, res.Remark)
		}
	}
	hb := `{"clientID":"c2","consumerDataSet":[{"groupName":"GID_sql","subscriptionDataSet":[{"topic":"TopicS","subString":"a >","expressionType":"SQL92"}]}]}`
	if res := c.call(reqHeartbeat, nil, []byte(hb), testAK, testSK); res.Code != codeSubscriptionMissing || !strings.Contains(res.Remark, "SQL92") {
		t.Errorf("a heartbeat with a bad SQL92 subscription: %d %q", res.Code, res.Remark)
	}
}
