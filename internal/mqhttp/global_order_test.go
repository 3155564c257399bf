package mqhttp

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"

	"github.com/orderly-dev/orderly/internal/broker"
)

// A globally ordered topic (one queue) takes messages published by the SDK without
// a sharding key, and orderly consumption gives them back in the order they were
// published, a batch at a time. A partitioned ordered topic refuses a keyless
// message with a reason that says how to fix it.
func TestSDKGlobalOrderWithoutShardingKey(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_GLOBAL", broker.Ordered, 1)
	e.topic("MQ_PARTS", broker.Ordered, 3)
	e.group("GID_global", broker.HTTP)
	p := e.client.GetProducer(testInstance, "MQ_GLOBAL")
	var want []string
	for i := range 12 {
		body := fmt.Sprintf("m%02d", i)
		if _, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: body}); err != nil {
			t.Fatalf("publish %s without a sharding key: %v", body, err)
		}
		want = append(want, body)
	}
	c := e.client.GetConsumer(testInstance, "MQ_GLOBAL", "GID_global", "")
	var got []string
	for range len(want) {
		ms, err := consume(c, true, 5, 0)
		if err != nil {
			if strings.Contains(err.Error(), "MessageNotExist") {
				break
			}
			t.Fatal(err)
		}
		got = append(got, bodiesOf(ms)...)
		if err := c.AckMessage(handles(ms)); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("consumed %q, published %q", got, want)
	}

	_, err := e.client.GetProducer(testInstance, "MQ_PARTS").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"})
	if err == nil || !strings.Contains(err.Error(), "sharding key") || !strings.Contains(err.Error(), "1 queue") {
		t.Fatalf("keyless publish to a partitioned ordered topic: %v", err)
	}
	if info, err := e.broker.Topic(testInstance, "MQ_PARTS"); err != nil || info.Messages != 0 {
		t.Fatalf("the refused message was stored: %+v %v", info, err)
	}
}
