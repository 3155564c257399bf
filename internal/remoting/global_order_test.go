package remoting

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
)

// A globally ordered topic (one queue) takes messages without a sharding key, from
// the real client and in frames that leave the queue to the broker (queueId -1), and
// an orderly consumer gets them in the one order they were sent. A partitioned
// ordered topic refuses a keyless message whose queue the broker would have to
// choose, with a remark that says how to fix it.
func TestGlobalOrderWithoutShardingKey(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_GLOBAL", broker.Ordered, 1)
	e.topic("MQ_PARTS", broker.Ordered, 4)
	e.group("GID_global", broker.TCP, 16)
	ctx := context.Background()

	var want []string
	p := e.producer(producer.WithGroupName("PID_global"))
	for i := range 10 {
		body := fmt.Sprintf("m%02d", i)
		if res, err := p.SendSync(ctx, primitive.NewMessage("MQ_GLOBAL", []byte(body))); err != nil || res.Status != primitive.SendOK {
			t.Fatalf("send %s: %v %v", body, res, err)
		}
		want = append(want, body)
	}
	c := e.raw()
	send := func(topic, body string) *Command {
		return c.call(reqSendMessage, map[string]string{"producerGroup": "PID_global", "topic": topic, "defaultTopic": "TBW102",
			"defaultTopicQueueNums": "4", "queueId": "-1", "sysFlag": "0", "bornTimestamp": "1795255600000", "flag": "0",
			"properties": "UNIQ_KEY\x01C00002070005000000000000000000" + body[1:] + "\x02", "reconsumeTimes": "0", "unitMode": "false",
			"maxReconsumeTimes": "16", "batch": "false"}, []byte(body), testAK, testSK)
	}
	for i := 10; i < 15; i++ {
		body := fmt.Sprintf("m%02d", i)
		if res := send("MQ_GLOBAL", body); res.Code != codeSuccess || res.ExtFields["queueId"] != "0" {
			t.Fatalf("keyless raw send to the global topic: code %d %q %v", res.Code, res.Remark, res.ExtFields)
		}
		want = append(want, body)
	}
	res := send("MQ_PARTS", "m99")
	if res.Code != codeMessageIllegal || !strings.Contains(res.Remark, "sharding key") || !strings.Contains(res.Remark, "1 queue") {
		t.Fatalf("keyless send to a partitioned ordered topic: code %d %q", res.Code, res.Remark)
	}
	if n := e.storedIn(testInstance, "MQ_PARTS"); n != 0 {
		t.Fatalf("the refused message was stored (%d)", n)
	}

	got := newCollector()
	pc := e.pushConsumer("GID_global", consumer.WithConsumerOrder(true))
	if err := pc.Subscribe("MQ_GLOBAL", consumer.MessageSelector{}, func(_ context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		got.add(ms...)
		return consumer.ConsumeSuccess, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := pc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Shutdown() })
	msgs := got.wait(t, 30*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) >= len(want) })
	var bodies []string
	for _, m := range msgs {
		bodies = append(bodies, string(m.Body))
	}
	if !slices.Equal(bodies, want) {
		t.Fatalf("consumed %q, sent %q", bodies, want)
	}
}
