package remoting

import (
	"encoding/binary"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// encoding writes a request in one of the header encodings clients use.
type encoding struct {
	name  string
	frame func(t testing.TB, c *Command) []byte
}

var encodings = []encoding{
	{"JSON strings", func(t testing.TB, c *Command) []byte {
		f, err := AppendFrame(nil, c)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}},
	{"JSON scalars", scalarJSONFrame},
	{"binary", func(t testing.TB, c *Command) []byte {
		b := *c
		b.Serialize = SerializeRocketMQ
		f, err := AppendFrame(nil, &b)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}},
}

var jsonInteger = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

// scalarJSONFrame writes c's header as the C++ and Node clients write theirs, and
// beyond them as far as Java's decoder goes: extFields values that are integers as
// JSON numbers, true and false as booleans, code and opaque as numeric strings, the
// language as its code and the remark null.
func scalarJSONFrame(_ testing.TB, c *Command) []byte {
	b := fmt.Appendf(nil, `{"code":"%d","opaque":"%d","flag":%d,"language":9,"version":%d,"remark":null,"extFields":{`, c.Code, c.Opaque, c.Flag, c.Version)
	for i, k := range slices.Sorted(maps.Keys(c.ExtFields)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		switch v := c.ExtFields[k]; {
		case jsonInteger.MatchString(v), v == "true", v == "false":
			b = append(b, v...)
		default:
			b = appendJSONString(b, v)
		}
	}
	return rawFrame(SerializeJSON, append(b, "}}"...), c.Body)
}

// batchBody is a SEND_BATCH_MESSAGE body (3.1.2): per message its size, magic and
// CRC (both 0, as the Go client writes them), flag, body and properties.
func batchBody(items ...[2]string) []byte {
	var b []byte
	for _, it := range items {
		size := 4*5 + len(it[0]) + 2 + len(it[1])
		b = binary.BigEndian.AppendUint32(b, uint32(size))
		b = append(b, make([]byte, 8)...)
		b = binary.BigEndian.AppendUint32(b, 0) // flag
		b = binary.BigEndian.AppendUint32(b, uint32(len(it[0])))
		b = append(b, it[0]...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(it[1])))
		b = append(b, it[1]...)
	}
	return b
}

// storedView is what a stored message is, apart from where it was sent from.
type storedView struct {
	Queue          int
	Offset         int64
	Body, Tag      string
	Keys           []string
	Properties     map[string]string
	BornMs         int64
	Flag, SysFlag  int32
	ReconsumeTimes int32
}

// encodingState is everything a run of requests leaves: the answers (without the
// message ids, which carry the broker's port), the stored messages, the group's
// committed offsets and its members.
type encodingState struct {
	Answers []string
	Stored  []storedView
	Offsets []int64
	Members []string
}

// The same heartbeat, sends (single, V2 and batch), pulls and offset commits in
// every encoding leave the broker in the same state and get the same answers, each
// in the encoding of its request.
func TestSameRequestsInEveryEncoding(t *testing.T) {
	ns := testInstance + "%"
	heartbeat := `{"clientID":"enc@1","producerDataSet":[{"groupName":"PID_enc"}],"consumerDataSet":[{"groupName":"` + ns + `GID_tcp","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","subscriptionDataSet":[{"topic":"` + ns + `TopicA","subString":"TagA || TagB","expressionType":"TAG"}],"unitMode":false}]}`
	send := map[string]string{"producerGroup": "PID_enc", "topic": ns + "TopicA", "defaultTopic": "TBW102", "defaultTopicQueueNums": "4", "queueId": "0",
		"sysFlag": "0", "bornTimestamp": "1795255600000", "flag": "7", "properties": "TAGS\x01TagA\x02KEYS\x01k1 k2\x02p\x01v\x02UNIQ_KEY\x01C0000207000400000000000000000001\x02",
		"reconsumeTimes": "0", "unitMode": "false", "maxReconsumeTimes": "16", "batch": "false"}
	v2 := map[string]string{"a": "PID_enc", "b": ns + "TopicA", "c": "TBW102", "d": "4", "e": "1", "f": "0", "g": "1795255600001", "h": "0",
		"i": "TAGS\x01TagB\x02UNIQ_KEY\x01C0000207000400000000000000000002", "j": "0", "k": "false", "l": "16", "m": "false"}
	batch := maps.Clone(v2)
	batch["e"], batch["i"], batch["m"] = "0", "", "true"
	pull := func(queue, offset, sysFlag, commit string) map[string]string {
		return map[string]string{"consumerGroup": ns + "GID_tcp", "topic": ns + "TopicA", "queueId": queue, "queueOffset": offset, "maxMsgNums": "32",
			"sysFlag": sysFlag, "commitOffset": commit, "suspendTimeoutMillis": "50", "subscription": "", "subVersion": "0", "expressionType": "TAG"}
	}
	offsetOf := func(queue, commit string) map[string]string {
		ext := map[string]string{"consumerGroup": ns + "GID_tcp", "topic": ns + "TopicA", "queueId": queue}
		if commit != "" {
			ext["commitOffset"] = commit
		}
		return ext
	}
	requests := []*Command{
		{Code: reqHeartbeat, Body: []byte(heartbeat)},
		{Code: reqSendMessage, ExtFields: send, Body: []byte("single")},
		{Code: reqSendMessageV2, ExtFields: v2, Body: []byte("v2")},
		{Code: reqSendBatchMessage, ExtFields: batch, Body: batchBody([2]string{"batch-1", "TAGS\x01TagA\x02"}, [2]string{"batch-2", "TAGS\x01TagC\x02KEYS\x01kb\x02"})},
		{Code: reqPullMessage, ExtFields: pull("0", "0", "2", "0")},
		{Code: reqPullMessage, ExtFields: pull("0", "3", "3", "3")},
		{Code: reqPullMessage, ExtFields: pull("1", "0", "2", "0")},
		{Code: reqUpdateConsumerOffset, ExtFields: offsetOf("1", "1")},
		{Code: reqQueryConsumerOffset, ExtFields: offsetOf("0", "")},
		{Code: reqQueryConsumerOffset, ExtFields: offsetOf("1", "")},
	}
	var first *encodingState
	for _, enc := range encodings {
		t.Run(enc.name, func(t *testing.T) {
			e := newEnv(t)
			e.topic("TopicA", broker.Normal, 2)
			e.group("GID_tcp", broker.TCP, 16)
			c := e.raw()
			state := &encodingState{}
			for i, r := range requests {
				req := *r
				req.Opaque = int32(100 + i)
				req.ExtFields = maps.Clone(r.ExtFields)
				Sign(&req, testAK, testSK)
				frame := enc.frame(t, &req)
				res := c.send(frame, req.Opaque)
				if sent := frame[4]; res.Serialize != sent {
					t.Errorf("request %d answered in serialize type %d, sent in %d", i, res.Serialize, sent)
				}
				ext := maps.Clone(res.ExtFields)
				delete(ext, "msgId")
				var bodies []string
				if req.Code == reqPullMessage && res.Code == codeSuccess {
					bodies = recordBodies(t, res.Body)
				}
				state.Answers = append(state.Answers, fmt.Sprintf("%d %q %v %q", res.Code, res.Remark, ext, bodies))
			}
			for q := range 2 {
				for _, m := range e.queueMessages(testInstance, "GID_tcp", "TopicA", q) {
					state.Stored = append(state.Stored, storedView{m.Queue, m.Offset, string(m.Body), m.Tag, m.Keys, m.Properties,
						m.BornAt.UnixMilli(), m.Flag, m.SysFlag, m.ReconsumeTimes})
				}
				off, _, err := e.broker.ConsumerOffset(testInstance, "GID_tcp", "TopicA", q)
				if err != nil {
					t.Fatal(err)
				}
				state.Offsets = append(state.Offsets, off)
			}
			state.Members = e.server.clients.members(groupKey{testInstance, "GID_tcp"})
			if len(state.Stored) != 4 || !slices.Equal(state.Offsets, []int64{3, 1}) || !slices.Equal(state.Members, []string{"enc@1"}) {
				t.Fatalf("state %+v", state)
			}
			if first == nil {
				first = state
				return
			}
			if !reflect.DeepEqual(state, first) {
				t.Fatalf("%s left\n%+v\nwhere %s left\n%+v", enc.name, state, encodings[0].name, first)
			}
		})
	}
}

// A header that is read whole but holds what this server cannot use is answered
// REQUEST_CODE_NOT_SUPPORTED with the reason (none for a one-way request), and the
// connection goes on; so is an unknown request code.
func TestUnusableHeadersAreAnswered(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	c := e.raw()
	for _, tc := range []struct {
		header string
		opaque int32
		remark string
	}{
		{`{"code":70000,"opaque":901,"flag":0}`, 901, "code"},
		{`{"code":105,"opaque":902,"extFields":{"topic":{"name":"TopicA"}}}`, 902, `extFields["topic"]`},
		{`{"code":105,"opaque":903,"extFields":["topic"]}`, 903, "extFields"},
		{`{"code":"route","opaque":"904"}`, 904, "code"},
	} {
		res := c.send(rawFrame(SerializeJSON, []byte(tc.header), nil), tc.opaque)
		if res.Code != codeNotSupported || !strings.Contains(res.Remark, tc.remark) {
			t.Errorf("%s: code %d %q", tc.header, res.Code, res.Remark)
		}
	}
	// One way: served as far as it goes, answered never. The next answer on the
	// connection is the next request's.
	if _, err := c.conn.Write(rawFrame(SerializeJSON, []byte(`{"code":70000,"opaque":905,"flag":2}`), nil)); err != nil {
		t.Fatal(err)
	}
	if res := c.next(t, reqGetRouteInfo, map[string]string{"topic": "TopicA"}); res.Opaque == 905 || res.Code != codeSuccess {
		t.Fatalf("after the unusable headers: %+v", res)
	}
	if res := c.call(9999, nil, nil, testAK, testSK); res.Code != codeNotSupported || !strings.Contains(res.Remark, "9999") {
		t.Fatalf("unknown code: %d %q", res.Code, res.Remark)
	}
}

// A request marked one way is served and not answered, as RocketMQ's broker does.
func TestOnewayRequestsAreServedUnanswered(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	e.group("GID_tcp", broker.TCP, 16)
	c := e.raw()
	ext := map[string]string{"consumerGroup": "GID_tcp", "topic": "TopicA", "queueId": "0", "commitOffset": "0"}
	oneway := &Command{Code: reqUpdateConsumerOffset, Opaque: 950, Flag: flagOneway, ExtFields: ext}
	Sign(oneway, testAK, testSK)
	frame, err := AppendFrame(nil, oneway)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, found, _ := e.broker.ConsumerOffset(testInstance, "GID_tcp", "TopicA", 0); found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the one-way offset commit was not served")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res := c.next(t, reqGetRouteInfo, map[string]string{"topic": "TopicA"}); res.Opaque == 950 || res.Code != codeSuccess {
		t.Fatalf("answer %+v", res)
	}
}

// next sends a signed request and returns the next frame that comes back, whatever
// it answers: the check that nothing else was answered before it.
func (c *rawClient) next(t *testing.T, code int16, ext map[string]string) *Command {
	t.Helper()
	c.n = 1000 + c.n
	req := &Command{Code: code, Opaque: c.n, ExtFields: ext}
	Sign(req, testAK, testSK)
	frame, err := AppendFrame(nil, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	res, err := ReadCommand(c.r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
