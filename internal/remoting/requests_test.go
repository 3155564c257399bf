package remoting

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Bounds on what requests carry and register, and tenant quotas, over the wire;
// limits_test.go has the helpers.

// neighbour declares a second instance with its own key and a topic.
const (
	neighbourInstance = "MQ_INST_neighbour"
	neighbourAK       = "ORDLneighbouraccesskey00"
	neighbourSK       = "neighboursecret0000000000000000"
)

func (e *env) neighbour(topic string) {
	e.t.Helper()
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: neighbourInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: neighbourAK, AccessKeySecret: neighbourSK}}}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.broker.EnsureTopic(neighbourInstance, broker.TopicConfig{Name: topic, Queues: 1, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

// TestAThrottledPublishIsSystemBusy: a real producer past its instance's publish
// rate gets SYSTEM_BUSY, which the Go client hands to the application instead of
// retrying at once (as it would SYSTEM_ERROR); once it backs off, its sends go
// through, and a neighbour instance publishes meanwhile as if nothing happened.
func TestAThrottledPublishIsSystemBusy(t *testing.T) {
	e := newEnvWith(t, broker.Limits{PublishRate: 5}, nil)
	e.topic("TopicA", broker.Normal, 1)
	e.neighbour("TopicN")
	p := e.producer(producer.WithGroupName("PID_throttled"))
	n := e.producer(producer.WithGroupName("PID_neighbour"), producer.WithNamespace(neighbourInstance),
		producer.WithCredentials(primitive.Credentials{AccessKey: neighbourAK, SecretKey: neighbourSK}), producer.WithInstanceName("neighbour"))
	ctx := context.Background()
	sent := 0
	var throttled error
	for range 50 {
		if _, err := p.SendSync(ctx, primitive.NewMessage("TopicA", []byte("x"))); err != nil {
			throttled = err
			break
		}
		sent++
	}
	if throttled == nil || !strings.Contains(throttled.Error(), "CODE: 2,") || !strings.Contains(throttled.Error(), "throttled") {
		t.Fatalf("after %d sends: %v; want SYSTEM_BUSY (2)", sent, throttled)
	}
	t.Logf("the client's error after %d sends: %v", sent, throttled)
	for i := range 50 {
		if _, err := n.SendSync(ctx, primitive.NewMessage("TopicN", []byte("n"))); err != nil {
			t.Fatalf("neighbour send %d while the other instance is throttled: %v", i, err)
		}
	}
	// Backing off, the throttled producer gets through again.
	backoff := 100 * time.Millisecond
	eventually(t, 10*time.Second, "a send after backing off", func() bool {
		time.Sleep(backoff) // the application's backoff
		backoff *= 2
		_, err := p.SendSync(ctx, primitive.NewMessage("TopicA", []byte("x")))
		return err == nil
	})
	if info, _ := e.broker.Topic(testInstance, "TopicA"); info.Messages != int64(sent+1) {
		t.Errorf("%d messages stored; want the %d sent", info.Messages, sent+1)
	}
}

// checkRecorder records when each check-back came.
type checkRecorder struct {
	mu   sync.Mutex
	when map[string]time.Time
}

func (r *checkRecorder) ExecuteLocalTransaction(*primitive.Message) primitive.LocalTransactionState {
	return primitive.UnknowState
}

func (r *checkRecorder) CheckLocalTransaction(m *primitive.MessageExt) primitive.LocalTransactionState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.when[string(m.Body)]; !ok {
		r.when[string(m.Body)] = time.Now()
	}
	return primitive.CommitMessageState
}

func (r *checkRecorder) at(body string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.when[body]
	return t, ok
}

// TestAProducerThatDoesNotReadDelaysNoCheckBack: one producer sends 1500 half
// messages of 16 KiB and stops reading, so its check-backs (24 MiB) fill its socket
// and its outbound queue; another producer group's check-back still comes on time,
// and the first's queue stays within its bound.
func TestAProducerThatDoesNotReadDelaysNoCheckBack(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_TRANS", broker.Transactional, 1)
	e.group("GID_trans", broker.TCP, 16)
	const halves = 1500
	hog := e.raw()
	ext := sendExt(testInstance+"%MQ_TRANS", "TRAN_MSG\x01true\x02PGROUP\x01PID_hog\x02"+propCheckImmune+"\x011\x02")
	ext["producerGroup"], ext["sysFlag"] = "PID_hog", "4"
	body := make([]byte, 16<<10)
	go func() {
		for i := range halves {
			if _, err := hog.conn.Write(signedFrame(t, reqSendMessage, int32(i+1), ext, body)); err != nil {
				return
			}
		}
	}()
	_ = hog.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for answered := 0; answered < halves; {
		res, err := ReadCommand(hog.r)
		if err != nil {
			t.Fatal(err)
		}
		if !res.IsResponse() {
			continue
		}
		if res.Code != codeSuccess {
			t.Fatalf("half message: %d %s", res.Code, res.Remark)
		}
		answered++
	}
	// From here on the hog reads nothing.

	checks := &checkRecorder{when: map[string]time.Time{}}
	p, err := newTransactionProducer(e, checks)
	if err != nil {
		t.Fatal(err)
	}
	msg := primitive.NewMessage("MQ_TRANS", []byte("victim"))
	msg.WithProperty(propCheckImmune, "3")
	sentAt := time.Now()
	if res, err := p.SendMessageInTransaction(context.Background(), msg); err != nil || res.Status != primitive.SendOK {
		t.Fatalf("victim: %v %v", res, err)
	}
	eventually(t, 20*time.Second, "the victim's check-back", func() bool { _, ok := checks.at("victim"); return ok })
	at, _ := checks.at("victim")
	late := at.Sub(sentAt) - 3*time.Second
	t.Logf("the victim's check-back came %v after it was due", late)
	if late > 3*time.Second {
		t.Errorf("the victim's check-back came %v late", late)
	}
	// The hog's queue is bounded: check-backs past it were dropped, not queued.
	e.server.connsMu.Lock()
	defer e.server.connsMu.Unlock()
	most := 0
	for c := range e.server.conns {
		c.outMu.Lock()
		most = max(most, c.outBytes)
		c.outMu.Unlock()
	}
	t.Logf("the largest outbound queue holds %d KiB", most>>10)
	if most > e.server.lim.OutboundBytes {
		t.Errorf("an outbound queue holds %d bytes, past its bound of %d", most, e.server.lim.OutboundBytes)
	}
}

// TestHeartbeatsRegisterBoundedSubscriptions: a heartbeat registers at most
// maxConsumerGroupsPerHeartbeat groups and maxSubscriptionsPerGroup topics per
// group, each kept compiled for the connection's life; the rest are refused by
// count in the answer.
func TestHeartbeatsRegisterBoundedSubscriptions(t *testing.T) {
	e := newEnv(t)
	e.group("GID_many", broker.TCP, 0)
	var subs []string
	for i := range maxSubscriptionsPerGroup + 44 {
		subs = append(subs, fmt.Sprintf(`{"topic":"T%d","subString":"a > %d","expressionType":"SQL92"}`, i, i))
	}
	var groups []string
	for i := range maxConsumerGroupsPerHeartbeat + 6 {
		groups = append(groups, fmt.Sprintf(`{"groupName":"GID_other%d","subscriptionDataSet":[]}`, i))
	}
	hb := `{"clientID":"raw@subs","consumerDataSet":[{"groupName":"GID_many","subscriptionDataSet":[` + strings.Join(subs, ",") + `]},` + strings.Join(groups, ",") + `]}`
	res := e.raw().call(reqHeartbeat, nil, []byte(hb), testAK, testSK)
	if res.Code != codeSubscriptionMissing || !strings.Contains(res.Remark, "7 consumer groups not registered") || !strings.Contains(res.Remark, "44 subscriptions") {
		t.Fatalf("an oversized heartbeat: %d %q", res.Code, res.Remark)
	}
	e.server.clients.mu.Lock()
	defer e.server.clients.mu.Unlock()
	m := e.server.clients.consumers[groupKey{testInstance, "GID_many"}]["raw@subs"]
	if m == nil || len(m.subs) != maxSubscriptionsPerGroup {
		t.Fatalf("registered %v", m)
	}
}

func TestHeartbeatsRegisterBoundedProducerGroups(t *testing.T) {
	e := newEnv(t)
	heartbeat := func(c *rawClient, from, to int) *Command {
		var groups []string
		for i := from; i < to; i++ {
			groups = append(groups, fmt.Sprintf(`{"groupName":"PID_%d"}`, i))
		}
		hb := `{"clientID":"raw@` + fmt.Sprint(from) + `","producerDataSet":[` + strings.Join(groups, ",") + `],"consumerDataSet":[]}`
		return c.call(reqHeartbeat, nil, []byte(hb), testAK, testSK)
	}
	registered := func() int {
		e.server.clients.mu.Lock()
		defer e.server.clients.mu.Unlock()
		return e.server.clients.producerGroups[testInstance]
	}
	c := e.raw()
	if res := heartbeat(c, 0, 1000); res.Code != codeSubscriptionMissing || !strings.Contains(res.Remark, "936 producer groups not registered") {
		t.Fatalf("a heartbeat of 1000 producer groups: %d %q", res.Code, res.Remark)
	}
	if n := registered(); n != maxProducerGroupsPerHeartbeat {
		t.Fatalf("%d producer groups registered", n)
	}
	// Another heartbeat on the same connection adds none past its bound.
	if res := heartbeat(c, 1000, 1010); res.Code != codeSubscriptionMissing || !strings.Contains(res.Remark, "one connection registers at most") {
		t.Fatalf("a second heartbeat: %d %q", res.Code, res.Remark)
	}
	// Connections together stop at the instance's bound.
	for i := 1; i < 5; i++ {
		heartbeat(e.raw(), i*1000, i*1000+maxProducerGroupsPerConn)
	}
	if n := registered(); n != maxProducerGroupsPerInstance {
		t.Fatalf("%d producer groups registered; want the instance's bound", n)
	}
	// Groups known already are refreshed; a connection's close gives its groups back.
	if res := heartbeat(c, 0, 10); res.Code != codeSuccess {
		t.Fatalf("a heartbeat of registered groups: %d %q", res.Code, res.Remark)
	}
	_ = c.conn.Close()
	eventually(t, 10*time.Second, "the groups given back", func() bool { return registered() == maxProducerGroupsPerInstance-maxProducerGroupsPerConn })
}

func TestPropertiesAndBatchesAreBoundedBeforeTheyAreParsed(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	c := e.raw()
	batch := func() map[string]string {
		return map[string]string{"a": "PID_raw", "b": "TopicA", "e": "0", "f": "0", "g": "0", "h": "0", "i": "", "j": "0", "m": "true"}
	}
	many := make([][2]string, broker.MaxBatchMessages+1)
	for i := range many {
		many[i] = [2]string{"x", "TAGS\x01a\x02"}
	}
	for name, tc := range map[string]struct {
		code   int16
		ext    map[string]string
		body   []byte
		remark string
	}{
		"long properties":     {reqSendMessage, sendExt("TopicA", "K\x01"+strings.Repeat("v", maxWireProperties)+"\x02"), []byte("x"), "properties of"},
		"too many in a batch": {reqSendBatchMessage, batch(), batchBody(many...), "more than 1024 messages"},
		"too large a batch": {reqSendBatchMessage, batch(), batchBody([2]string{strings.Repeat("x", 3<<20), ""}, [2]string{strings.Repeat("y", 2<<20), ""}),
			"bytes of bodies"},
		"long properties in a batch": {reqSendBatchMessage, batch(), batchBody([2]string{"x", "K\x01" + strings.Repeat("v", maxWireProperties) + "\x02"}),
			"properties of"},
	} {
		res := c.call(tc.code, tc.ext, tc.body, testAK, testSK)
		if res.Code != codeMessageIllegal || !strings.Contains(res.Remark, tc.remark) {
			t.Errorf("%s: %d %q", name, res.Code, res.Remark)
		}
	}
	if info, _ := e.broker.Topic(testInstance, "TopicA"); info.Messages != 0 {
		t.Errorf("%d messages stored", info.Messages)
	}
}

// TestAutoCreationPastTheQuotaIsRefusedClearly: a send that would create a topic
// past the instance's count is refused with the quota named.
func TestAutoCreationPastTheQuotaIsRefusedClearly(t *testing.T) {
	e := newEnv(t)
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Limits: broker.Limits{Topics: 1},
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}, AutoCreate: broker.AutoCreatePolicy{Topics: true}}); err != nil {
		t.Fatal(err)
	}
	e.topic("TopicA", broker.Normal, 1)
	c := e.raw()
	res := c.call(reqSendMessage, sendExt("TopicNew", ""), []byte("x"), testAK, testSK)
	if res.Code != codeNoPermission || !strings.Contains(res.Remark, "quota exceeded") {
		t.Fatalf("a send creating a topic past the quota: %d %q", res.Code, res.Remark)
	}
}
