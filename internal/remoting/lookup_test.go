package remoting

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
)

// TestLookups: VIEW_MESSAGE_BY_ID finds a message by the commit-log offset its
// offsetMsgId ends with, QUERY_MESSAGE a topic's messages by key within a time
// range, both answered in the pull encoding the Go client's own decoder reads;
// neither reaches another instance's messages.
func TestLookups(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicL", broker.Normal, 2)
	p := e.producer(producer.WithGroupName("PID_lookup"))
	var results []*primitive.SendResult
	for i, key := range []string{"k1", "k1", "k2"} {
		r, err := p.SendSync(context.Background(), primitive.NewMessage("TopicL", []byte("body"+strconv.Itoa(i))).WithKeys([]string{key}))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	c := e.raw()
	offsetOf := func(offsetMsgID string) string {
		seq, err := strconv.ParseUint(offsetMsgID[16:], 16, 64)
		if err != nil {
			t.Fatalf("offsetMsgId %q: %v", offsetMsgID, err)
		}
		return strconv.FormatUint(seq, 10)
	}

	res := c.call(reqViewMessageByID, map[string]string{"offset": offsetOf(results[1].OffsetMsgID)}, nil, testAK, testSK)
	if res.Code != codeSuccess {
		t.Fatalf("VIEW_MESSAGE_BY_ID: %d %q", res.Code, res.Remark)
	}
	viewed := primitive.DecodeMessage(res.Body)
	if len(viewed) != 1 || string(viewed[0].Body) != "body1" || viewed[0].Topic != "TopicL" || viewed[0].GetKeys() != "k1" ||
		viewed[0].GetProperty(primitive.PropertyUniqueClientMessageIdKeyIndex) != results[1].MsgID {
		t.Fatalf("viewed %v", viewed)
	}
	if res := c.call(reqViewMessageByID, map[string]string{"offset": "999999"}, nil, testAK, testSK); res.Code != codeSystemError {
		t.Fatalf("VIEW_MESSAGE_BY_ID of nothing: %d %q", res.Code, res.Remark)
	}

	query := func(ext map[string]string, ak, sk string) *Command {
		h := map[string]string{"topic": testInstance + "%TopicL", "key": "k1", "maxNum": "32", "beginTimestamp": "0",
			"endTimestamp": strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)}
		for k, v := range ext {
			h[k] = v
		}
		return c.call(reqQueryMessage, h, nil, ak, sk)
	}
	res = query(nil, testAK, testSK)
	if res.Code != codeSuccess {
		t.Fatalf("QUERY_MESSAGE: %d %q", res.Code, res.Remark)
	}
	var bodies []string
	for _, m := range primitive.DecodeMessage(res.Body) {
		bodies = append(bodies, string(m.Body))
		if m.Topic != testInstance+"%TopicL" {
			t.Errorf("a queried message's topic %q, asked with the namespace", m.Topic)
		}
	}
	if slices.Sort(bodies); !slices.Equal(bodies, []string{"body0", "body1"}) {
		t.Fatalf("QUERY_MESSAGE by k1: %v", bodies)
	}
	if ms := primitive.DecodeMessage(query(map[string]string{"maxNum": "1"}, testAK, testSK).Body); len(ms) != 1 || string(ms[0].Body) != "body1" {
		t.Fatalf("QUERY_MESSAGE of one by k1: %v, want the newest", ms)
	}
	for name, ext := range map[string]map[string]string{
		"a time range before them": {"endTimestamp": strconv.FormatInt(time.Now().Add(-time.Hour).UnixMilli(), 10)},
		"an unknown key":           {"key": "k9"},
		"a client message id":      {"key": results[0].MsgID, "_UNIQUE_KEY_QUERY": "true"},
		"an unknown topic":         {"topic": testInstance + "%TopicNone"},
	} {
		if res := query(ext, testAK, testSK); res.Code != codeQueryNotFound {
			t.Errorf("QUERY_MESSAGE with %s: %d %q", name, res.Code, res.Remark)
		}
	}

	// Another instance's key reaches none of them.
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_other", Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: "otherAK", AccessKeySecret: "otherSK"}}}); err != nil {
		t.Fatal(err)
	}
	if res := c.call(reqViewMessageByID, map[string]string{"offset": offsetOf(results[0].OffsetMsgID)}, nil, "otherAK", "otherSK"); res.Code != codeSystemError || len(res.Body) != 0 {
		t.Fatalf("another instance's VIEW_MESSAGE_BY_ID: %d %q, %d bytes", res.Code, res.Remark, len(res.Body))
	}
	if res := query(map[string]string{"topic": "TopicL"}, "otherAK", "otherSK"); res.Code != codeQueryNotFound || len(res.Body) != 0 {
		t.Fatalf("another instance's QUERY_MESSAGE: %d %q", res.Code, res.Remark)
	}
}
