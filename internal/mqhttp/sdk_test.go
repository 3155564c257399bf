package mqhttp

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	"github.com/go-logr/logr/testr"
	gogaperrors "github.com/gogap/errors"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
)

// These tests drive the real Go SDK (github.com/aliyunmq/mq-http-go-sdk v1.0.3)
// against the server on loopback, through the examples of the product
// documentation and the failure paths.

const (
	testInstance = "MQ_INST_sdk"
	testAK       = "ORDLtestaccesskeyid00000"
	testSK       = "testaccesskeysecret0000000000000"
)

type env struct {
	t        *testing.T
	broker   *broker.Broker
	clock    *clock.Fake
	endpoint string
	client   mqsdk.MQClient
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fake := clock.NewFake(time.Now())
	b, err := broker.Open(broker.Options{Clock: fake})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer("127.0.0.1:0", b, testr.New(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	var addr net.Addr
	select {
	case addr = <-srv.Listening():
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	}
	e := &env{t: t, broker: b, clock: fake, endpoint: "http://" + addr.String()}
	e.client = mqsdk.NewAliyunMQClient(e.endpoint, testAK, testSK, "")
	return e
}

func (e *env) topic(name string, typ broker.MessageType, queues int) {
	e.t.Helper()
	if _, err := e.broker.EnsureTopic(testInstance, broker.TopicConfig{Name: name, Type: typ, Queues: queues, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) group(id string, p broker.Protocol) {
	e.t.Helper()
	if _, err := e.broker.EnsureGroup(testInstance, broker.GroupConfig{ID: id, Protocol: p, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

// consume runs one SDK consume call and returns its messages or its error.
func consume(c mqsdk.MQConsumer, orderly bool, n int32, wait int64) ([]mqsdk.ConsumeMessageEntry, error) {
	resp := make(chan mqsdk.ConsumeMessageResponse, 1)
	errc := make(chan error, 1)
	if orderly {
		c.ConsumeMessageOrderly(resp, errc, n, wait)
	} else {
		c.ConsumeMessage(resp, errc, n, wait)
	}
	select {
	case r := <-resp:
		return r.Messages, nil
	case err := <-errc:
		return nil, err
	}
}

func handles(ms []mqsdk.ConsumeMessageEntry) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ReceiptHandle
	}
	return out
}

// Example: publish 4 normal messages with properties and keys, then consume and ack.
func TestSDKNormalMessages(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 4)
	e.group("GID_http", broker.HTTP)
	p := e.client.GetProducer(testInstance, "TopicA")
	sent := map[string]mqsdk.PublishMessageResponse{}
	for i := range 4 {
		req := mqsdk.PublishMessageRequest{MessageBody: fmt.Sprintf("hello mq! <&> %d", i), MessageTag: "TagA",
			Properties: map[string]string{"a": fmt.Sprint(i)}, MessageKey: fmt.Sprintf("MessageKey%d", i)}
		res, err := p.PublishMessage(req)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		if res.MessageId == "" || res.MessageBodyMD5 == "" || res.ReceiptHandle != "" {
			t.Fatalf("publish response %+v", res)
		}
		sent[req.MessageBody] = res
	}

	c := e.client.GetConsumer(testInstance, "TopicA", "GID_http", "")
	got, err := consume(c, false, 16, 3)
	if err != nil || len(got) != 4 {
		t.Fatalf("consume: %d messages, %v", len(got), err)
	}
	for _, m := range got {
		res, ok := sent[m.MessageBody]
		if !ok || m.MessageId != res.MessageId || m.MessageBodyMD5 != res.MessageBodyMD5 || m.MessageTag != "TagA" ||
			m.ConsumedTimes != 1 || m.Properties["a"] == "" || !strings.HasPrefix(m.MessageKey, "MessageKey") ||
			m.NextConsumeTime-m.FirstConsumeTime != int64((300*time.Second).Milliseconds()) {
			t.Fatalf("consumed %+v, published %+v", m, res)
		}
	}
	if err := c.AckMessage(handles(got)); err != nil {
		t.Fatalf("ack: %v", err)
	}
	// Nothing left: MessageNotExist, never an empty success.
	if _, err := consume(c, false, 16, 0); err == nil || !strings.Contains(err.Error(), "MessageNotExist") {
		t.Fatalf("consume of an empty topic: %v", err)
	}
}

// Example: 8 ordered messages over sharding keys i % 3, consumed orderly: per-key
// order, and a partition's next batch only after the last is acked.
func TestSDKOrderedMessages(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_ORDER", broker.Ordered, 3)
	e.group("GID_order", broker.HTTP)
	p := e.client.GetProducer(testInstance, "MQ_ORDER")
	for i := range 8 {
		if _, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: fmt.Sprint(i), ShardingKey: fmt.Sprint(i % 3)}); err != nil {
			t.Fatal(err)
		}
	}
	c := e.client.GetConsumer(testInstance, "MQ_ORDER", "GID_order", "")
	seen := map[string][]string{}
	var held []mqsdk.ConsumeMessageEntry
	for round := 0; round < 10; round++ {
		got, err := consume(c, true, 2, 0)
		if err != nil {
			if strings.Contains(err.Error(), "MessageNotExist") {
				break
			}
			t.Fatal(err)
		}
		for _, m := range got {
			seen[m.ShardingKey] = append(seen[m.ShardingKey], m.MessageBody)
		}
		// Hold key "0"'s first batch unacked: nothing more of that key may come.
		if round == 0 {
			held = got
			continue
		}
		if err := c.AckMessage(handles(got)); err != nil {
			t.Fatal(err)
		}
	}
	// One batch may mix partitions; each partition in it is held back whole.
	heldPerKey := map[string]int{}
	for _, m := range held {
		heldPerKey[m.ShardingKey]++
	}
	for k, n := range heldPerKey {
		if len(seen[k]) != n {
			t.Fatalf("key %s delivered %v while its batch %v was unacked", k, seen[k], bodiesOf(held))
		}
	}
	if err := c.AckMessage(handles(held)); err != nil {
		t.Fatal(err)
	}
	for {
		got, err := consume(c, true, 16, 0)
		if err != nil {
			break
		}
		for _, m := range got {
			seen[m.ShardingKey] = append(seen[m.ShardingKey], m.MessageBody)
		}
		_ = c.AckMessage(handles(got))
	}
	want := map[string][]string{"0": {"0", "3", "6"}, "1": {"1", "4", "7"}, "2": {"2", "5"}}
	for k, w := range want {
		if !slices.Equal(seen[k], w) {
			t.Fatalf("key %s consumed %v, want %v (all: %v)", k, seen[k], w, seen)
		}
	}
}

func bodiesOf(ms []mqsdk.ConsumeMessageEntry) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.MessageBody
	}
	return out
}

// Example: transactional producer. Commit on publish; the rest resolved from the
// check-back; a rollback is never delivered.
func TestSDKTransactions(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_TRANS", broker.Transactional, 2)
	e.group("GID_trans", broker.HTTP)
	e.group("GID_consumer", broker.HTTP)
	p := e.client.GetTransProducer(testInstance, "MQ_TRANS", "GID_trans")
	handlesByBody := map[string]string{}
	for i := range 4 {
		res, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: fmt.Sprintf("txn-%d", i), TransCheckImmunityTime: 10})
		if err != nil {
			t.Fatal(err)
		}
		if res.ReceiptHandle == "" {
			t.Fatalf("transactional publish without a handle: %+v", res)
		}
		handlesByBody[fmt.Sprintf("txn-%d", i)] = res.ReceiptHandle
	}
	if err := p.Commit(handlesByBody["txn-0"]); err != nil { // committed at once
		t.Fatal(err)
	}
	// The check-back: after the immunity time the rest come back to the producer.
	e.clock.Advance(10 * time.Second)
	resp := make(chan mqsdk.ConsumeMessageResponse, 1)
	errc := make(chan error, 1)
	p.ConsumeHalfMessage(resp, errc, 16, 0)
	var half []mqsdk.ConsumeMessageEntry
	select {
	case r := <-resp:
		half = r.Messages
	case err := <-errc:
		t.Fatalf("consume half: %v", err)
	}
	if b := bodiesOf(half); len(b) != 3 || slices.Contains(b, "txn-0") {
		t.Fatalf("check-back offered %v", b)
	}
	for _, m := range half {
		if m.TransCheckImmunityTime != 10 {
			t.Fatalf("check-back message lost its properties: %+v", m)
		}
		var err error
		if m.MessageBody == "txn-3" {
			err = p.Rollback(m.ReceiptHandle)
		} else {
			err = p.Commit(m.ReceiptHandle)
		}
		if err != nil {
			t.Fatalf("resolve %s: %v", m.MessageBody, err)
		}
	}
	c := e.client.GetConsumer(testInstance, "MQ_TRANS", "GID_consumer", "")
	var delivered []string
	for {
		got, err := consume(c, false, 16, 0)
		if err != nil {
			break
		}
		delivered = append(delivered, bodiesOf(got)...)
		_ = c.AckMessage(handles(got))
	}
	slices.Sort(delivered)
	if !slices.Equal(delivered, []string{"txn-0", "txn-1", "txn-2"}) {
		t.Fatalf("delivered %v; the rollback must never be", delivered)
	}
	// A stale handle: committing again reports the handle, not a generic error.
	err := p.Commit(handlesByBody["txn-1"])
	if err == nil || !strings.Contains(err.Error(), "MessageNotExist") {
		t.Fatalf("commit with an expired handle: %v", err)
	}
}

// Example: a timer message is delivered no earlier than its time.
func TestSDKTimerMessage(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicTimer", broker.Normal, 1)
	e.group("GID_timer", broker.HTTP)
	due := e.clock.Now().Add(10 * time.Second)
	p := e.client.GetProducer(testInstance, "TopicTimer")
	if _, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "later", StartDeliverTime: due.UnixMilli()}); err != nil {
		t.Fatal(err)
	}
	c := e.client.GetConsumer(testInstance, "TopicTimer", "GID_timer", "")
	if got, err := consume(c, false, 1, 0); err == nil {
		t.Fatalf("timer message delivered early: %v", bodiesOf(got))
	}
	e.clock.Advance(10 * time.Second)
	var got []mqsdk.ConsumeMessageEntry
	deadline := time.Now().Add(10 * time.Second)
	for len(got) == 0 && time.Now().Before(deadline) { // the timer loop delivers asynchronously
		got, _ = consume(c, false, 1, 0)
	}
	if len(got) != 1 || got[0].MessageBody != "later" || got[0].StartDeliverTime != due.UnixMilli() {
		t.Fatalf("at its time consumed %+v", got)
	}
}

func TestSDKFailurePaths(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	e.group("GID_http", broker.HTTP)
	e.group("GID_tcp", broker.TCP)

	// Wrong signature.
	bad := mqsdk.NewAliyunMQClient(e.endpoint, testAK, "wrong-secret", "")
	if _, err := bad.GetProducer(testInstance, "TopicA").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"}); err == nil ||
		!strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong secret: %v", err)
	}
	// Unknown AccessKey.
	unknown := mqsdk.NewAliyunMQClient(e.endpoint, "nobody", testSK, "")
	if _, err := unknown.GetProducer(testInstance, "TopicA").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"}); err == nil ||
		!strings.Contains(err.Error(), "InvalidAccessKeyId") {
		t.Fatalf("unknown key: %v", err)
	}
	// Unknown topic.
	if _, err := e.client.GetProducer(testInstance, "NoSuchTopic").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"}); err == nil ||
		!strings.Contains(err.Error(), "TopicNotExist") {
		t.Fatalf("unknown topic: %v", err)
	}
	// A TCP group over HTTP.
	if _, err := consume(e.client.GetConsumer(testInstance, "TopicA", "GID_tcp", ""), false, 1, 0); err == nil ||
		!strings.Contains(err.Error(), "TCP") {
		t.Fatalf("TCP group over HTTP: %v", err)
	}
	// No message.
	c := e.client.GetConsumer(testInstance, "TopicA", "GID_http", "")
	if _, err := consume(c, false, 1, 0); err == nil || !strings.Contains(err.Error(), "MessageNotExist") {
		t.Fatalf("empty topic: %v", err)
	}
	// Expired handle: the invisibility passed before the ack.
	if _, err := e.client.GetProducer(testInstance, "TopicA").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"}); err != nil {
		t.Fatal(err)
	}
	got, err := consume(c, false, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(301 * time.Second)
	err = c.AckMessage(append(handles(got), "not-a-handle"))
	// What the official samples do with an ack error: they panic without Detail.
	ackErr, ok := err.(gogaperrors.ErrCode)
	if !ok {
		t.Fatalf("ack of an expired handle: %v", err)
	}
	items, _ := ackErr.Context()["Detail"].([]mqsdk.ErrAckItem)
	if len(items) != 2 || items[0].ErrorCode != "MessageNotExist" || items[1].ErrorCode != "ReceiptHandleError" {
		t.Fatalf("per-handle errors %+v", items)
	}
}

func TestSDKInstancesAreIsolated(t *testing.T) {
	e := newEnv(t)
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_other", Owner: "o2",
		Credentials: []broker.Credential{{AccessKeyID: "otherak", AccessKeySecret: "othersk"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.broker.EnsureTopic("MQ_INST_other", broker.TopicConfig{Name: "Secret", Owner: "o2"}); err != nil {
		t.Fatal(err)
	}
	// This instance's key, naming the other instance: refused.
	_, err := e.client.GetProducer("MQ_INST_other", "Secret").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"})
	if err == nil || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("key of one instance on another: %v", err)
	}
	// No instance named: the key's own, which has no such topic.
	_, err = e.client.GetProducer("", "Secret").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"})
	if err == nil || !strings.Contains(err.Error(), "TopicNotExist") {
		t.Fatalf("other instance's topic through this key: %v", err)
	}
}
