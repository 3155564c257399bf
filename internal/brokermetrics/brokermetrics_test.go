package brokermetrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
)

// TestTheMetricsFollowTheBroker publishes, pops, acknowledges and dead-letters
// through a real broker, and reads the figures back as Prometheus scrapes them.
func TestTheMetricsFollowTheBroker(t *testing.T) {
	clk := clock.NewFake(time.UnixMilli(1_700_000_000_000))
	b, err := broker.Open(broker.Options{Dir: t.TempDir(), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const inst = "MQ_INST_metrics"
	ctx := context.Background()
	if err := b.EnsureInstance(broker.InstanceConfig{ID: inst, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []broker.TopicConfig{{Name: "orders", Queues: 2, Owner: "o"}, {Name: "payments", Type: broker.Transactional, Owner: "o"}} {
		if _, err := b.EnsureTopic(inst, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.EnsureGroup(inst, broker.GroupConfig{ID: "GID_app", Protocol: broker.HTTP, MaxRedeliveries: 1, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"a", "bb", "ccc"} {
		if _, err := b.Publish(ctx, inst, "orders", broker.Message{Body: []byte(body), Queue: broker.AnyQueue}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Publish(ctx, inst, "payments", broker.Message{Body: []byte("half"), Queue: broker.AnyQueue, Transactional: true}); err != nil {
		t.Fatal(err)
	}
	pop := func(want int) []broker.Delivery {
		t.Helper()
		ds, err := b.Pop(ctx, inst, "orders", broker.PopRequest{Group: "GID_app", Max: 2, Invisibility: time.Minute})
		if err != nil || len(ds) != want {
			t.Fatalf("pop: %d, %v; want %d", len(ds), err, want)
		}
		return ds
	}
	ds := pop(2)
	if errs, err := b.Ack(inst, "orders", "GID_app", []string{ds[0].Handle}); err != nil || errs[0] != nil {
		t.Fatalf("ack: %v %v", errs, err)
	}
	// The unacknowledged one comes back once (with the third, new), then, past its
	// one redelivery, goes to the dead letters.
	clk.Advance(2 * time.Minute)
	pop(2)
	clk.Advance(2 * time.Minute)
	pop(1)

	c := New(b)
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	want := `
# HELP orderly_group_backlog_messages Messages of the topic the group has not consumed yet, in flight ones included (consumer lag).
# TYPE orderly_group_backlog_messages gauge
orderly_group_backlog_messages{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_in_flight_messages Messages of the topic handed to the group and not yet acknowledged.
# TYPE orderly_group_in_flight_messages gauge
orderly_group_in_flight_messages{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_messages_acked_total Deliveries the group acknowledged (pop-style groups) since the broker started.
# TYPE orderly_group_messages_acked_total counter
orderly_group_messages_acked_total{group="GID_app",instance="MQ_INST_metrics"} 1
# HELP orderly_group_messages_delivered_total Messages handed to the group for the first time (a pop's first delivery, or pulled) since the broker started.
# TYPE orderly_group_messages_delivered_total counter
orderly_group_messages_delivered_total{group="GID_app",instance="MQ_INST_metrics"} 3
# HELP orderly_group_messages_redelivered_total Messages handed to the group again (a pop's redelivery after the invisibility ran out, or sent back by a TCP consumer) since the broker started.
# TYPE orderly_group_messages_redelivered_total counter
orderly_group_messages_redelivered_total{group="GID_app",instance="MQ_INST_metrics"} 2
# HELP orderly_group_messages_dead_lettered_total Messages moved to the group's dead letters since the broker started.
# TYPE orderly_group_messages_dead_lettered_total counter
orderly_group_messages_dead_lettered_total{group="GID_app",instance="MQ_INST_metrics"} 1
# HELP orderly_group_dead_letters Dead letters the group holds.
# TYPE orderly_group_dead_letters gauge
orderly_group_dead_letters{group="GID_app",instance="MQ_INST_metrics"} 1
# HELP orderly_messages_published_total Messages that entered the topic's queues since it was created (a half message when committed, a timer when due; retries and dead letters are on their group's system topics).
# TYPE orderly_messages_published_total counter
orderly_messages_published_total{instance="MQ_INST_metrics",topic="orders"} 3
orderly_messages_published_total{instance="MQ_INST_metrics",topic="payments"} 0
# HELP orderly_topic_half_messages Transactional half messages of the topic awaiting commit or rollback.
# TYPE orderly_topic_half_messages gauge
orderly_topic_half_messages{instance="MQ_INST_metrics",topic="payments"} 1
# HELP orderly_topic_messages Messages the topic holds (published, not yet past retention).
# TYPE orderly_topic_messages gauge
orderly_topic_messages{instance="MQ_INST_metrics",topic="orders"} 3
orderly_topic_messages{instance="MQ_INST_metrics",topic="payments"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"orderly_group_backlog_messages", "orderly_group_in_flight_messages", "orderly_group_messages_acked_total",
		"orderly_group_messages_delivered_total", "orderly_group_messages_redelivered_total", "orderly_group_messages_dead_lettered_total",
		"orderly_group_dead_letters", "orderly_messages_published_total", "orderly_topic_half_messages",
		"orderly_topic_messages"); err != nil {
		t.Fatal(err)
	}
	// The collector registers beside controller-runtime's own collectors.
	if err := prometheus.NewRegistry().Register(c); err != nil {
		t.Fatal(err)
	}
}
