package mqhttp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// The package's own client, which Orderly's consumer runtime uses, against the
// server: publish, consume with the invisibility extension, redelivery once that
// window passes, ack, and the protocol's errors as typed errors.
func TestClientInvisibilityExtension(t *testing.T) {
	e := newEnv(t)
	e.topic("MQ_ORDER", broker.Ordered, 2)
	e.group("GID_rt", broker.HTTP)
	ctx := context.Background()
	c := &Client{Endpoint: e.endpoint, AccessKeyID: testAK, AccessKeySecret: testSK, InstanceID: testInstance}
	if _, err := c.Publish(ctx, "MQ_ORDER", "a <&> b", "T", "k1"); err != nil {
		t.Fatal(err)
	}
	req := ConsumeRequest{Topic: "MQ_ORDER", Group: "GID_rt", Orderly: true, Max: 1, Invisible: 7 * time.Second}
	got, err := c.Consume(ctx, req)
	if err != nil || len(got) != 1 {
		t.Fatalf("consume: %v %v", got, err)
	}
	m := got[0]
	if m.Body != "a <&> b" || m.Tag != "T" || m.ShardingKey() != "k1" || m.ConsumedTimes != 1 ||
		m.NextConsumeTime-m.FirstConsumeTime != 7000 {
		t.Fatalf("consumed %+v", m)
	}
	if _, err := c.Consume(ctx, req); !IsCode(err, "MessageNotExist") {
		t.Fatalf("while in flight: %v", err)
	}
	e.clock.Advance(7 * time.Second)
	again, err := c.Consume(ctx, req)
	if err != nil || len(again) != 1 || again[0].ID != m.ID || again[0].ConsumedTimes != 2 {
		t.Fatalf("redelivery: %+v %v", again, err)
	}
	if err := c.Ack(ctx, "MQ_ORDER", "GID_rt", []string{m.Handle}); err == nil {
		t.Fatalf("ack of a superseded handle succeeded")
	}
	if err := c.Ack(ctx, "MQ_ORDER", "GID_rt", []string{again[0].Handle}); err != nil {
		t.Fatalf("ack: %v", err)
	}
	for _, bad := range []string{"0", "x", "43201"} {
		status, body, err := c.Do(ctx, "GET", "/topics/MQ_ORDER/messages?consumer=GID_rt&numOfMessages=1&ns="+testInstance,
			nil, map[string][]string{InvisibleSecondsHeader: {bad}})
		if err != nil || !IsCode(apiError(status, body), "InvalidArgument") {
			t.Fatalf("invisibility %q: %d %s %v", bad, status, body, err)
		}
	}
	bad := *c
	bad.AccessKeySecret = "wrong"
	if _, err := bad.Consume(ctx, req); !IsCode(err, "SignatureDoesNotMatch") {
		t.Fatalf("bad signature: %v", err)
	}
	// Counted against the instance whose key it named, for the metrics.
	if s, err := e.broker.InstanceStats(testInstance); err != nil || s.AuthFailures != 1 {
		t.Fatalf("auth failures counted: %+v %v", s, err)
	}
	// Publishes are counted as mq-http's.
	if info, err := e.broker.Topic(testInstance, "MQ_ORDER"); err != nil || len(info.PublishedBy) != 1 || info.PublishedBy[0].Wire != broker.WireHTTP {
		t.Fatalf("publishes by wire: %+v %v", info.PublishedBy, err)
	}
}

// The progress extension: a consume carrying a worker's report leaves it with the
// broker whether or not a message comes, and a malformed one is refused as the
// protocol refuses a bad parameter.
func TestClientProgressExtension(t *testing.T) {
	e := newEnv(t)
	e.topic("T", broker.Normal, 1)
	e.group("GID_rt", broker.HTTP)
	ctx := context.Background()
	c := &Client{Endpoint: e.endpoint, AccessKeyID: testAK, AccessKeySecret: testSK, InstanceID: testInstance}
	req := ConsumeRequest{Topic: "T", Group: "GID_rt", Max: 1,
		Progress: &broker.WorkerProgress{Worker: "0c6f-uid", Handled: 41, Failed: 2}}
	if _, err := c.Consume(ctx, req); !IsCode(err, "MessageNotExist") {
		t.Fatalf("consume: %v", err)
	}
	got, err := e.broker.WorkerProgress(testInstance, "GID_rt")
	if err != nil || got["0c6f-uid"] != *req.Progress {
		t.Fatalf("progress %v %v", got, err)
	}
	for _, bad := range []string{"uid 1", "uid 1 2 3", "uid x 2", "uid 1 -2", "two  1 2", strings.Repeat("u", 65) + " 1 2"} {
		status, body, err := c.Do(ctx, "GET", "/topics/T/messages?consumer=GID_rt&numOfMessages=1&ns="+testInstance,
			nil, map[string][]string{ProgressHeader: {bad}})
		if err != nil || !IsCode(apiError(status, body), "InvalidArgument") {
			t.Fatalf("progress %q: %d %s %v", bad, status, body, err)
		}
	}
	if got, _ := e.broker.WorkerProgress(testInstance, "GID_rt"); len(got) != 1 {
		t.Fatalf("refused reports were noted: %v", got)
	}
}
