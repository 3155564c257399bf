package mqgrpc_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
	"github.com/go-logr/logr/testr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

func TestWrongSignatureIsRefused(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 1)
	for _, c := range []struct {
		name  string
		creds *credentials.SessionCredentials
	}{
		{"wrong secret", &credentials.SessionCredentials{AccessKey: testAK, AccessSecret: "not-the-secret"}},
		{"unknown AccessKey", &credentials.SessionCredentials{AccessKey: "nobody", AccessSecret: testSK}},
		{"no AccessKey", &credentials.SessionCredentials{}},
	} {
		cfg := e.config("")
		cfg.Credentials = c.creds
		p, err := rmq.NewProducer(cfg, rmq.WithTopics("normal"))
		if err != nil {
			t.Fatal(err)
		}
		// The route query at startup is refused; the client reports the code in
		// its message only.
		if err := p.Start(); err == nil || !strings.Contains(err.Error(), "CODE: UNAUTHORIZED") {
			t.Errorf("%s: start = %v, want UNAUTHORIZED", c.name, err)
		}
	}
	// Unsigned calls are refused as well (the Go client always signs).
	if st := rawQueryRoute(t, e, nil); st.Code != 40100 {
		t.Errorf("unsigned QueryRoute: %v", st)
	}
	if info, err := e.broker.Topic(testInstance, "normal"); err != nil || info.Messages != 0 {
		t.Fatalf("topic %+v, %v", info, err)
	}
	if s, err := e.broker.InstanceStats(testInstance); err != nil || s.AuthFailures == 0 {
		t.Errorf("the wrong secret's refusals were not counted against the instance: %+v %v", s, err)
	}
	if e.broker.Stats().UnknownKeyRefusals == 0 {
		t.Error("unknown and missing keys' refusals were not counted")
	}
}

func TestAnotherInstancesNamespaceIsRefused(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 1)
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_other", Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: "other-ak", AccessKeySecret: "other-sk"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.EnsureTopic("MQ_INST_other", broker.TopicConfig{Name: "normal", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	// The other instance's key, naming this instance as its namespace.
	cfg := e.config("")
	cfg.Credentials = &credentials.SessionCredentials{AccessKey: "other-ak", AccessSecret: "other-sk"}
	p, err := rmq.NewProducer(cfg, rmq.WithTopics("normal"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err == nil || !strings.Contains(err.Error(), "CODE: UNAUTHORIZED") {
		t.Fatalf("start = %v, want UNAUTHORIZED", err)
	}
	// With its own namespace, the key reaches its own instance only.
	cfg.NameSpace = "MQ_INST_other"
	p = e.producerWith(cfg, rmq.WithTopics("normal"))
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "normal", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if info, _ := e.broker.Topic(testInstance, "normal"); info.Messages != 0 {
		t.Fatal("a message reached the other instance")
	}
	if info, _ := e.broker.Topic("MQ_INST_other", "normal"); info.Messages != 1 {
		t.Fatalf("the key's own instance holds %d messages", info.Messages)
	}
}

func TestUnknownTopicIsTopicNotFound(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 1)
	// A Go producer (v5.1.4) needs a topic to start: it waits for a Settings reply,
	// which only a route's broker sends.
	p := e.producer(rmq.WithTopics("normal"))
	_, err := p.Send(context.Background(), &rmq.Message{Topic: "nope", Body: []byte("x")})
	if !isCode(err, 40402) {
		t.Fatalf("send to an unknown topic = %v, want TOPIC_NOT_FOUND", err)
	}
}

func TestFIFOByMessageGroup(t *testing.T) {
	e := newEnv(t)
	e.topic("fifo", broker.Ordered, 4)
	e.group("GID_fifo", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("fifo"))
	groups := []string{"order-a", "order-b", "order-c"}
	const perGroup = 6
	for i := range perGroup {
		for _, g := range groups {
			m := &rmq.Message{Topic: "fifo", Body: fmt.Appendf(nil, "%s/%d", g, i)}
			m.SetMessageGroup(g)
			if _, err := p.Send(context.Background(), m); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
	}
	// A normal message has no place on an ordered topic.
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "fifo", Body: []byte("x")}); err == nil {
		t.Fatal("a normal message was accepted by an ordered topic")
	}

	c := e.consumer("GID_fifo", 2*time.Second, "fifo")
	next := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for n := 0; n < perGroup*len(groups); {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d: %v", n, perGroup*len(groups), next)
		}
		mvs, err := c.Receive(context.Background(), 16, 20*time.Second)
		if err != nil && !isCode(err, 40401) {
			t.Fatal(err)
		}
		for _, mv := range mvs {
			g, i, _ := strings.Cut(body(mv), "/")
			if mv.GetMessageGroup() == nil || *mv.GetMessageGroup() != g {
				t.Fatalf("message %q has group %v", body(mv), mv.GetMessageGroup())
			}
			if want := fmt.Sprint(next[g]); i != want {
				t.Fatalf("group %s: got message %s, want %s", g, i, want)
			}
			next[g]++
			n++
		}
		for _, mv := range mvs {
			if err := c.Ack(context.Background(), mv); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestFIFOHoldsAGroupUntilItsMessageIsAcked(t *testing.T) {
	e := newEnv(t)
	e.topic("fifo1", broker.Ordered, 1)
	e.group("GID_fifo", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("fifo1"))
	for i := range 2 {
		m := &rmq.Message{Topic: "fifo1", Body: fmt.Appendf(nil, "%d", i)}
		m.SetMessageGroup("g")
		if _, err := p.Send(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	c := e.consumer("GID_fifo", time.Second, "fifo1")
	first, err := c.Receive(context.Background(), 1, 20*time.Second)
	if err != nil || len(first) != 1 || body(first[0]) != "0" {
		t.Fatalf("first receive: %d, %v", len(first), err)
	}
	// The next one waits for the first's ack.
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("received %d behind an unacked FIFO message, %v", len(mvs), err)
	}
	if err := c.Ack(context.Background(), first[0]); err != nil {
		t.Fatal(err)
	}
	second := receive(t, c, 1, 20*time.Second, 10*time.Second)
	if body(second[0]) != "1" {
		t.Fatalf("second receive %q", body(second[0]))
	}
}

func TestDelayIsDeliveredNoEarlierThanItsTimestamp(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 2)
	e.group("GID_delay", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("normal"))
	due := time.Now().Add(3 * time.Second).Truncate(time.Millisecond)
	m := &rmq.Message{Topic: "normal", Body: []byte("later")}
	m.SetDelayTimestamp(due)
	if _, err := p.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	// Past the 40-day bound of every protocol: refused.
	far := &rmq.Message{Topic: "normal", Body: []byte("too late")}
	far.SetDelayTimestamp(time.Now().Add(41 * 24 * time.Hour))
	if _, err := p.Send(context.Background(), far); !isCode(err, 40012) {
		t.Fatalf("a delay 41 days ahead: %v, want ILLEGAL_DELIVERY_TIME", err)
	}

	c := e.consumer("GID_delay", 2*time.Second, "normal")
	got := receive(t, c, 1, 20*time.Second, 15*time.Second)
	if now := time.Now(); now.Before(due) {
		t.Fatalf("delivered at %v, before its time %v", now, due)
	}
	if body(got[0]) != "later" || got[0].GetDeliveryTimestamp() == nil || !got[0].GetDeliveryTimestamp().Equal(due) {
		t.Fatalf("delivered %q at %v, want %v", body(got[0]), got[0].GetDeliveryTimestamp(), due)
	}
	_ = c.Ack(context.Background(), got[0])
}

func TestTransactionCommitAndRollback(t *testing.T) {
	e := newEnv(t)
	e.topic("tx", broker.Transactional, 2)
	e.group("GID_tx", broker.HTTP, 0)
	checker := &rmq.TransactionChecker{Check: func(*rmq.MessageView) rmq.TransactionResolution { return rmq.UNKNOWN }}
	p := e.producer(rmq.WithTopics("tx"), rmq.WithTransactionChecker(checker))

	send := func(b string) rmq.Transaction {
		t.Helper()
		tx := p.BeginTransaction()
		receipts, err := p.SendWithTransaction(context.Background(), &rmq.Message{Topic: "tx", Body: []byte(b)}, tx)
		if err != nil || len(receipts) != 1 || receipts[0].TransactionId == "" {
			t.Fatalf("send in a transaction: %+v, %v", receipts, err)
		}
		return tx
	}
	commit, rollback := send("commit me"), send("roll me back")
	// A normal message has no place on a transactional topic.
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "tx", Body: []byte("x")}); err == nil {
		t.Fatal("a normal message was accepted by a transactional topic")
	}

	c := e.consumer("GID_tx", time.Second, "tx")
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("received %d half messages, %v", len(mvs), err)
	}
	if err := commit.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := rollback.RollBack(); err != nil {
		t.Fatal(err)
	}
	got := receive(t, c, 1, 20*time.Second, 10*time.Second)
	if len(got) != 1 || body(got[0]) != "commit me" {
		t.Fatalf("received %d: %q", len(got), body(got[0]))
	}
	_ = c.Ack(context.Background(), got[0])
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("after the rollback received %d, %v", len(mvs), err)
	}
}

// startMQHTTP serves mq-http on the same broker.
func (e *env) startMQHTTP() mqsdk.MQClient {
	e.t.Helper()
	srv := mqhttp.NewServer("127.0.0.1:0", e.broker, testr.New(e.t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	var addr net.Addr
	select {
	case addr = <-srv.Listening():
	case err := <-done:
		e.t.Fatalf("mq-http did not start: %v", err)
	}
	return mqsdk.NewAliyunMQClient("http://"+addr.String(), testAK, testSK, "")
}

func TestMQHTTPAndGRPCShareMessages(t *testing.T) {
	e := newEnv(t)
	e.topic("shared", broker.Normal, 4)
	e.topic("ordered", broker.Ordered, 8)
	e.group("GID_grpc", broker.HTTP, 0)
	e.group("GID_http", broker.HTTP, 0)
	http := e.startMQHTTP()

	// Published over mq-http, consumed over gRPC.
	res, err := http.GetProducer(testInstance, "shared").PublishMessage(mqsdk.PublishMessageRequest{
		MessageBody: "from http", MessageTag: "TagH", MessageKey: "kh", Properties: map[string]string{"a": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	c := e.consumer("GID_grpc", 2*time.Second, "shared")
	got := receive(t, c, 1, 20*time.Second, 10*time.Second)
	mv := got[0]
	if body(mv) != "from http" || mv.GetMessageId() != res.MessageId || *mv.GetTag() != "TagH" ||
		!slices.Equal(mv.GetKeys(), []string{"kh"}) || mv.GetProperties()["a"] != "1" {
		t.Fatalf("received %+v (id %s), published %+v", mv, mv.GetMessageId(), res)
	}
	if err := c.Ack(context.Background(), mv); err != nil {
		t.Fatal(err)
	}

	// Published over gRPC, consumed over mq-http.
	p := e.producer(rmq.WithTopics("shared", "ordered"))
	m := &rmq.Message{Topic: "shared", Body: []byte("from grpc")}
	m.SetTag("TagG")
	m.SetKeys("kg")
	m.AddProperty("b", "2")
	if _, err := p.Send(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	msgs, err := consume(http.GetConsumer(testInstance, "shared", "GID_http", ""), 16, 3)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("mq-http consumed %d, %v", len(msgs), err)
	}
	var fromGRPC *mqsdk.ConsumeMessageEntry
	for i := range msgs {
		if msgs[i].MessageBody == "from grpc" {
			fromGRPC = &msgs[i]
		}
	}
	if fromGRPC == nil || fromGRPC.MessageTag != "TagG" || fromGRPC.MessageKey != "kg" || fromGRPC.Properties["b"] != "2" {
		t.Fatalf("mq-http consumed %+v", msgs)
	}

	// One message group, one sharding key: the same partition over both.
	og := &rmq.Message{Topic: "ordered", Body: []byte("grpc")}
	og.SetMessageGroup("customer-42")
	if _, err := p.Send(context.Background(), og); err != nil {
		t.Fatal(err)
	}
	if _, err := http.GetProducer(testInstance, "ordered").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "http", ShardingKey: "customer-42"}); err != nil {
		t.Fatal(err)
	}
	ds, err := e.broker.Pop(context.Background(), testInstance, "ordered", broker.PopRequest{Group: "GID_http", Max: 16})
	if err != nil || len(ds) != 2 || ds[0].Queue != ds[1].Queue || ds[0].ShardingKey != "customer-42" {
		t.Fatalf("popped %d, %v", len(ds), err)
	}
}

// consume runs one mq-http SDK consume call.
func consume(c mqsdk.MQConsumer, n int32, wait int64) ([]mqsdk.ConsumeMessageEntry, error) {
	resp := make(chan mqsdk.ConsumeMessageResponse, 1)
	errc := make(chan error, 1)
	c.ConsumeMessage(resp, errc, n, wait)
	select {
	case r := <-resp:
		return r.Messages, nil
	case err := <-errc:
		return nil, err
	}
}

func TestUnresolvedTransactionIsRecoveredThroughTelemetry(t *testing.T) {
	e := newEnv(t)
	e.topic("tx", broker.Transactional, 1)
	e.group("GID_tx", broker.HTTP, 0)
	checked := make(chan string, 4)
	checker := &rmq.TransactionChecker{Check: func(mv *rmq.MessageView) rmq.TransactionResolution {
		checked <- mv.GetMessageId()
		if body(mv) == "commit on check" {
			return rmq.COMMIT
		}
		return rmq.ROLLBACK
	}}
	p := e.producer(rmq.WithTopics("tx"), rmq.WithTransactionChecker(checker))
	var ids []string
	for _, b := range []string{"commit on check", "roll back on check"} {
		// Sent in a transaction the producer never ends, as after a crash.
		receipts, err := p.SendWithTransaction(context.Background(), &rmq.Message{Topic: "tx", Body: []byte(b)}, p.BeginTransaction())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, receipts[0].MessageID)
	}
	c := e.consumer("GID_tx", 2*time.Second, "tx")
	// The first check-back comes after the broker's check immunity (10 s).
	got := receive(t, c, 1, 20*time.Second, broker.DefaultCheckImmunity+15*time.Second)
	if body(got[0]) != "commit on check" || got[0].GetMessageId() != ids[0] {
		t.Fatalf("received %q (%s)", body(got[0]), got[0].GetMessageId())
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case id := <-checked:
			seen[id] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("checked %v, want both of %v", seen, ids)
		}
	}
	_ = c.Ack(context.Background(), got[0])
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("the rolled-back message came too: %d, %v", len(mvs), err)
	}
	// Under the race detector the client reports a race of its own here: the
	// metrics hook of the EndTransaction that follows its checker against its
	// GracefulStop. This package's tests run without the detector, as
	// remoting's do with the 4.x client (Makefile, RACE_PKGS).
}

func TestNackedMessageIsRedeliveredThenDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 2)
	e.group("GID_nack", broker.HTTP, 2) // three deliveries in all
	p := e.producer(rmq.WithTopics("normal"))
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "normal", Body: []byte("poison")}); err != nil {
		t.Fatal(err)
	}
	c := e.consumer("GID_nack", 2*time.Second, "normal")
	for attempt := int32(1); attempt <= 3; attempt++ {
		got := receive(t, c, 1, 20*time.Second, 10*time.Second)
		if body(got[0]) != "poison" || got[0].GetDeliveryAttempt() != attempt {
			t.Fatalf("delivery %d: %q, attempt %d", attempt, body(got[0]), got[0].GetDeliveryAttempt())
		}
		if err := c.ChangeInvisibleDuration(got[0], 0); err != nil { // a nack
			t.Fatal(err)
		}
	}
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("delivered past maxRedeliveries: %d, %v", len(mvs), err)
	}
	dead, _, err := e.broker.DeadLetters(testInstance, "GID_nack", 0, 16)
	if err != nil || len(dead) != 1 || string(dead[0].Body) != "poison" {
		t.Fatalf("dead letters %+v, %v", dead, err)
	}
}

func TestTagFilter(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 2)
	e.group("GID_tags", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("normal"))
	for _, tag := range []string{"TagA", "TagB", "TagC", "TagA"} {
		m := &rmq.Message{Topic: "normal", Body: []byte(tag)}
		m.SetTag(tag)
		if _, err := p.Send(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	c, err := rmq.NewSimpleConsumer(e.config("GID_tags"), rmq.WithSimpleAwaitDuration(time.Second),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{"normal": rmq.NewFilterExpression("TagA || TagC")}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.GracefulStop()
	got := receive(t, c, 3, 20*time.Second, 10*time.Second)
	var tags []string
	for _, mv := range got {
		tags = append(tags, body(mv))
		_ = c.Ack(context.Background(), mv)
	}
	slices.Sort(tags)
	if !slices.Equal(tags, []string{"TagA", "TagA", "TagC"}) {
		t.Fatalf("received %v", tags)
	}
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("the filtered-out message came: %d, %v", len(mvs), err)
	}
}

// TestSQLFilter: the Go client's SQL92 subscription selects by the properties
// it set, and by TAGS and KEYS; a bad expression is ILLEGAL_FILTER_EXPRESSION.
func TestSQLFilter(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 2)
	e.group("GID_sql", broker.HTTP, 0)
	e.group("GID_badsql", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("normal"))
	for i, tc := range []struct{ tag, a, region string }{{"TagA", "1", "eu"}, {"TagA", "2", "us"}, {"TagB", "3", "eu"}, {"TagA", "", "eu"}, {"TagA", "7", "eu-west"}} {
		m := &rmq.Message{Topic: "normal", Body: []byte(fmt.Sprint(i))}
		m.SetTag(tc.tag)
		m.SetKeys(fmt.Sprintf("key%d", i))
		if tc.a != "" {
			m.AddProperty("a", tc.a)
		}
		m.AddProperty("region", tc.region)
		if _, err := p.Send(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	c, err := rmq.NewSimpleConsumer(e.config("GID_sql"), rmq.WithSimpleAwaitDuration(time.Second),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{
			"normal": rmq.NewFilterExpressionWithType("TAGS = 'TagA' AND a > 1 AND region STARTSWITH 'eu' OR KEYS = 'key1'", rmq.SQL92)}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer c.GracefulStop()
	var bodies []string
	for _, mv := range receive(t, c, 2, 20*time.Second, 10*time.Second) {
		bodies = append(bodies, body(mv))
		if err := c.Ack(context.Background(), mv); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(bodies)
	if !slices.Equal(bodies, []string{"1", "4"}) {
		t.Fatalf("received %v, want 1 (by its key) and 4", bodies)
	}
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("a message the filter rules out came: %d, %v", len(mvs), err)
	}
	bad, err := rmq.NewSimpleConsumer(e.config("GID_badsql"), rmq.WithSimpleAwaitDuration(time.Second),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{"normal": rmq.NewFilterExpressionWithType("a >", rmq.SQL92)}))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(); err == nil {
		defer bad.GracefulStop()
		if _, err := bad.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40010) {
			t.Fatalf("a receive with a bad SQL92 expression: %v, want ILLEGAL_FILTER_EXPRESSION", err)
		}
	}
}

// An Instance that lets clients create topics and groups on first use lets the 5.x
// clients do so, as a broker with autoCreateTopicEnable and
// autoCreateSubscriptionGroup does: the producer's route query creates a Normal
// topic, the consumer's settings an HTTP group.
func TestTopicsAndGroupsCreatedOnFirstUse(t *testing.T) {
	e := newEnv(t)
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}},
		AutoCreate:  broker.AutoCreatePolicy{Topics: true, Groups: true}}); err != nil {
		t.Fatal(err)
	}
	p := e.producer(rmq.WithTopics("fresh"))
	if _, err := p.Send(context.Background(), &rmq.Message{Topic: "fresh", Body: []byte("first")}); err != nil {
		t.Fatalf("send to a topic created on first use: %v", err)
	}
	topic, err := e.broker.Topic(testInstance, "fresh")
	if err != nil || topic.Owner != broker.AutoCreatedOwner || topic.Type != broker.Normal || topic.Queues != broker.DefaultAutoCreateQueues {
		t.Fatalf("topic created on first use: %+v %v", topic, err)
	}
	c := e.consumer("GID_fresh", 2*time.Second, "fresh")
	got := receive(t, c, 1, 20*time.Second, 30*time.Second)
	if string(got[0].GetBody()) != "first" {
		t.Fatalf("received %q", got[0].GetBody())
	}
	if err := c.Ack(context.Background(), got[0]); err != nil {
		t.Fatal(err)
	}
	if g, err := e.broker.Group(testInstance, "GID_fresh"); err != nil || g.Protocol != broker.HTTP || g.Owner != broker.AutoCreatedOwner {
		t.Fatalf("group created on first use: %+v %v", g, err)
	}
}
