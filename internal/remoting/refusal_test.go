package remoting

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	rocketmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
)

// rawClient speaks frames directly, for what the real client never sends.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	n    int32
}

func (e *env) raw() *rawClient { return dialRaw(e.t, e.nameAddr) }

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReaderSize(c, 256<<10)}
}

// call sends a request, signed with secret unless it is empty, and returns the answer.
func (c *rawClient) call(code int16, ext map[string]string, body []byte, ak, secret string) *Command {
	c.t.Helper()
	c.n++
	cmd := &Command{Code: code, Opaque: c.n, ExtFields: ext, Body: body}
	if secret != "" {
		Sign(cmd, ak, secret)
	}
	frame, err := AppendFrame(nil, cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.send(frame, c.n)
}

// send writes a frame as it is and returns the answer with the opaque given.
func (c *rawClient) send(frame []byte, opaque int32) *Command {
	c.t.Helper()
	if _, err := c.conn.Write(frame); err != nil {
		c.t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		res, err := ReadCommand(c.r)
		if err != nil {
			c.t.Fatal(err)
		}
		if res.IsResponse() && res.Opaque == opaque {
			return res
		}
	}
}

func TestUnsignedAndWronglySignedRequestsAreRefused(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	c := e.raw()
	for name, tc := range map[string]struct{ ak, secret string }{
		"unsigned":     {"", ""},
		"wrong secret": {testAK, "not-the-secret"},
		"unknown key":  {"ORDLnosuchkey", "whatever"},
	} {
		res := c.call(reqGetRouteInfo, map[string]string{"topic": testInstance + "%TopicA"}, nil, tc.ak, tc.secret)
		if res.Code != codeNoPermission || res.Body != nil {
			t.Errorf("%s: code %d %q, body %q", name, res.Code, res.Remark, res.Body)
		}
	}
	// Counted for the metrics: the wrong secret against its instance, the rest
	// as unknown.
	if s, err := e.broker.InstanceStats(testInstance); err != nil || s.AuthFailures != 1 {
		t.Errorf("auth failures of the instance: %+v %v", s, err)
	}
	if n := e.broker.Stats().UnknownKeyRefusals; n != 2 {
		t.Errorf("unknown-key refusals: %d, want 2", n)
	}
	res := c.call(reqGetRouteInfo, map[string]string{"topic": testInstance + "%TopicA"}, nil, testAK, testSK)
	if res.Code != codeSuccess || !strings.Contains(string(res.Body), `"brokerAddrs":{"0":"`+e.nameAddr+`"}`) {
		t.Fatalf("signed: code %d %q %s", res.Code, res.Remark, res.Body)
	}
	// A key reaches its own instance only: another instance's namespace is refused.
	res = c.call(reqGetRouteInfo, map[string]string{"topic": "MQ_INST_other%TopicA"}, nil, testAK, testSK)
	if res.Code != codeNoPermission {
		t.Fatalf("other namespace: code %d %q", res.Code, res.Remark)
	}
	// Unknown topics and request codes.
	if res := c.call(reqGetRouteInfo, map[string]string{"topic": "Nope"}, nil, testAK, testSK); res.Code != codeTopicNotExist {
		t.Fatalf("unknown topic: code %d", res.Code)
	}
	if res := c.call(9999, nil, nil, testAK, testSK); res.Code != codeNotSupported {
		t.Fatalf("unknown code: %d", res.Code)
	}
}

// The real client with wrong credentials cannot send.
func TestClientWithWrongSecretCannotSend(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	p, err := rocketmq.NewProducer(producer.WithNameServer([]string{e.nameAddr}), producer.WithNamespace(testInstance),
		producer.WithCredentials(primitive.Credentials{AccessKey: testAK, SecretKey: "wrong"}), producer.WithRetry(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown()
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("TopicA", []byte("x"))); err == nil {
		t.Fatal("a send with a wrong secret succeeded")
	}
	if info, _ := e.broker.Topic(testInstance, "TopicA"); info.Messages != 0 {
		t.Fatalf("%d messages stored", info.Messages)
	}
}

// A TCP client in an HTTP group is refused with a clear reason, and consumes nothing.
func TestGroupProtocolIsEnforced(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	e.group("GID_http", broker.HTTP, 16)
	c := e.raw()
	hb := `{"clientID":"raw@1","producerDataSet":[],"consumerDataSet":[{"groupName":"` + testInstance + `%GID_http","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","subscriptionDataSet":[{"topic":"` + testInstance + `%TopicA","subString":"*","expressionType":"TAG"}],"unitMode":false}]}`
	res := c.call(reqHeartbeat, nil, []byte(hb), testAK, testSK)
	if res.Code == codeSuccess || !strings.Contains(res.Remark, "HTTP group") {
		t.Fatalf("heartbeat into an HTTP group: code %d %q", res.Code, res.Remark)
	}
	pull := map[string]string{"consumerGroup": testInstance + "%GID_http", "topic": testInstance + "%TopicA", "queueId": "0",
		"queueOffset": "0", "maxMsgNums": "32", "sysFlag": "2", "commitOffset": "0", "suspendTimeoutMillis": "1000"}
	if res := c.call(reqPullMessage, pull, nil, testAK, testSK); res.Code != codeGroupNotExist || !strings.Contains(res.Remark, "HTTP group") {
		t.Fatalf("pull as an HTTP group: code %d %q", res.Code, res.Remark)
	}
	// An undeclared group does not exist: the real consumer cannot take part.
	got := newCollector()
	pc := e.pushConsumer("GID_undeclared")
	if err := pc.Subscribe("TopicA", consumer.MessageSelector{}, func(_ context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		got.add(ms...)
		return consumer.ConsumeSuccess, nil
	}); err != nil {
		t.Fatal(err)
	}
	_ = pc.Start()
	defer pc.Shutdown()
	p := e.producer()
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("TopicA", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	if ids := e.server.clients.members(groupKey{testInstance, "GID_undeclared"}); len(ids) != 0 {
		t.Fatalf("an undeclared group has members %v", ids)
	}
}

// Bad frames close their own connection and no other.
func TestBadFramesCloseOnlyTheirConnection(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	good := e.raw()
	for name, frame := range map[string][]byte{
		"oversized length": binary.BigEndian.AppendUint32(nil, 1<<30),
		"short length":     binary.BigEndian.AppendUint32(nil, 2),
		"header too long":  append(binary.BigEndian.AppendUint32(nil, 8), 0, 0, 1, 0, 'x', 'x', 'x', 'x'),
		"binary too short": append(binary.BigEndian.AppendUint32(nil, 6), 1, 0, 0, 2, '{', '}'),
		"serialize type 2": append(binary.BigEndian.AppendUint32(nil, 6), 2, 0, 0, 2, '{', '}'),
		"no opaque":        append(binary.BigEndian.AppendUint32(nil, 20), append([]byte{0, 0, 0, 16}, `{"opaque":"one"}`...)...),
		"garbage json":     append(binary.BigEndian.AppendUint32(nil, 9), 0, 0, 0, 5, '{', 'n', 'o', 'p', 'e'),
	} {
		bad, err := net.Dial("tcp", e.nameAddr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bad.Write(frame); err != nil {
			t.Fatal(err)
		}
		_ = bad.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := bad.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: the connection got an answer instead of being closed", name)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("%s: the connection was left open", name)
		}
		_ = bad.Close()
		if res := good.call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("after %s, another connection got code %d", name, res.Code)
		}
	}
}
