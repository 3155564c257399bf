package brokermetrics

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
	"github.com/orderly-dev/orderly/internal/connlimit"
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
	// Two of the three over mq-http, one over remoting; the half message over gRPC.
	for i, body := range []string{"a", "bb", "ccc"} {
		wire := broker.WireHTTP
		if i == 2 {
			wire = broker.WireTCP
		}
		if _, err := b.Publish(broker.WithWire(ctx, wire), inst, "orders", broker.Message{Body: []byte(body), Queue: broker.AnyQueue}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Publish(broker.WithWire(ctx, broker.WireGRPC), inst, "payments", broker.Message{Body: []byte("half"), Queue: broker.AnyQueue, Transactional: true}); err != nil {
		t.Fatal(err)
	}
	// A timer message an hour ahead, on a topic of its own.
	if _, err := b.EnsureTopic(inst, broker.TopicConfig{Name: "reminders", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, inst, "reminders", broker.Message{Body: []byte("later"), Queue: broker.AnyQueue, DeliverAt: clk.Now().Add(time.Hour)}); err != nil {
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

	// Refusals the protocol servers report: a bad signature with the instance's
	// key, two unknown keys, one request out of memory.
	b.NoteAuthFailure(inst)
	b.NoteAuthFailure("")
	b.NoteAuthFailure("MQ_INST_nobody")
	b.NoteThrottled(inst)

	c := New(b, map[string]Server{"http": fakeServer{connlimit.Stats{Open: 3, Refused: 7}}})
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	// The first pop took "a" and "bb" at once; "ccc" was first delivered 2 min
	// after it was stored, and is the backlog's oldest, stored 4 min ago.
	want := `
# HELP orderly_auth_failures_total Requests refused for their signature, by the instance whose AccessKey they named; instance="" counts unsigned requests and unknown keys.
# TYPE orderly_auth_failures_total counter
orderly_auth_failures_total{instance=""} 2
orderly_auth_failures_total{instance="MQ_INST_metrics"} 1
# HELP orderly_connections Connections the protocol's server holds open.
# TYPE orderly_connections gauge
orderly_connections{protocol="http"} 3
# HELP orderly_connections_refused_total Connections the protocol's server turned away past its caps (in all, per address).
# TYPE orderly_connections_refused_total counter
orderly_connections_refused_total{protocol="http"} 7
# HELP orderly_consume_latency_seconds Time from a message becoming deliverable (stored, or due) to its first delivery to a group (popped or pulled).
# TYPE orderly_consume_latency_seconds histogram
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0001"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0002"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0004"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0008"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0016"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0032"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0064"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0128"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0256"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.0512"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.1024"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.2048"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.4096"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="0.8192"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="1.6384"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="3.2768"} 2
orderly_consume_latency_seconds_bucket{instance="MQ_INST_metrics",le="+Inf"} 3
orderly_consume_latency_seconds_sum{instance="MQ_INST_metrics"} 120
orderly_consume_latency_seconds_count{instance="MQ_INST_metrics"} 3
# HELP orderly_group_backlog_messages Messages of the topic the group has not consumed yet, in flight ones included (consumer lag).
# TYPE orderly_group_backlog_messages gauge
orderly_group_backlog_messages{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_in_flight_messages Messages of the topic handed to the group and not yet acknowledged.
# TYPE orderly_group_in_flight_messages gauge
orderly_group_in_flight_messages{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_oldest_unconsumed_age_seconds Age of the oldest message of the group's backlog on the topic, since it became deliverable; 0 with no backlog.
# TYPE orderly_group_oldest_unconsumed_age_seconds gauge
orderly_group_oldest_unconsumed_age_seconds{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 240
# HELP orderly_group_messages_acked_total Deliveries of the topic the group acknowledged (pop-style groups) since the broker started.
# TYPE orderly_group_messages_acked_total counter
orderly_group_messages_acked_total{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_messages_delivered_total Messages of the topic handed to the group for the first time (a pop's first delivery, or pulled) since the broker started.
# TYPE orderly_group_messages_delivered_total counter
orderly_group_messages_delivered_total{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 3
# HELP orderly_group_messages_redelivered_total Messages of the topic handed to the group again (a pop's redelivery after the invisibility ran out, or sent back by a TCP consumer) since the broker started.
# TYPE orderly_group_messages_redelivered_total counter
orderly_group_messages_redelivered_total{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 2
# HELP orderly_group_messages_dead_lettered_total Messages of the topic moved to the group's dead letters since the broker started.
# TYPE orderly_group_messages_dead_lettered_total counter
orderly_group_messages_dead_lettered_total{group="GID_app",instance="MQ_INST_metrics",topic="orders"} 1
# HELP orderly_group_dead_letters Dead letters the group holds.
# TYPE orderly_group_dead_letters gauge
orderly_group_dead_letters{group="GID_app",instance="MQ_INST_metrics"} 1
# HELP orderly_messages_published_total Messages whose publish was acknowledged since the broker started, by the protocol they came in on (a half message counts when sent, a timer message when stored).
# TYPE orderly_messages_published_total counter
orderly_messages_published_total{instance="MQ_INST_metrics",protocol="grpc",topic="payments"} 1
orderly_messages_published_total{instance="MQ_INST_metrics",protocol="http",topic="orders"} 2
orderly_messages_published_total{instance="MQ_INST_metrics",protocol="internal",topic="reminders"} 1
orderly_messages_published_total{instance="MQ_INST_metrics",protocol="tcp",topic="orders"} 1
# HELP orderly_message_bytes_published_total Bodies' bytes of the messages counted by orderly_messages_published_total.
# TYPE orderly_message_bytes_published_total counter
orderly_message_bytes_published_total{instance="MQ_INST_metrics",protocol="grpc",topic="payments"} 4
orderly_message_bytes_published_total{instance="MQ_INST_metrics",protocol="http",topic="orders"} 3
orderly_message_bytes_published_total{instance="MQ_INST_metrics",protocol="internal",topic="reminders"} 5
orderly_message_bytes_published_total{instance="MQ_INST_metrics",protocol="tcp",topic="orders"} 3
# HELP orderly_throttled_requests_total Requests of the instance refused for its quotas (rates, connections, unacknowledged messages) or for its share of the servers' memory.
# TYPE orderly_throttled_requests_total counter
orderly_throttled_requests_total{instance="MQ_INST_metrics"} 1
# HELP orderly_topic_half_messages Transactional half messages of the topic awaiting commit or rollback.
# TYPE orderly_topic_half_messages gauge
orderly_topic_half_messages{instance="MQ_INST_metrics",topic="payments"} 1
# HELP orderly_topic_messages Messages the topic holds (published, not yet past retention).
# TYPE orderly_topic_messages gauge
orderly_topic_messages{instance="MQ_INST_metrics",topic="orders"} 3
orderly_topic_messages{instance="MQ_INST_metrics",topic="payments"} 0
orderly_topic_messages{instance="MQ_INST_metrics",topic="reminders"} 0
# HELP orderly_topic_pending_timers Timer (delayed) messages of the topic waiting for their delivery time.
# TYPE orderly_topic_pending_timers gauge
orderly_topic_pending_timers{instance="MQ_INST_metrics",topic="orders"} 0
orderly_topic_pending_timers{instance="MQ_INST_metrics",topic="payments"} 0
orderly_topic_pending_timers{instance="MQ_INST_metrics",topic="reminders"} 1
`
	names := []string{"orderly_auth_failures_total", "orderly_connections", "orderly_connections_refused_total",
		"orderly_consume_latency_seconds", "orderly_group_backlog_messages", "orderly_group_in_flight_messages",
		"orderly_group_oldest_unconsumed_age_seconds", "orderly_group_messages_acked_total",
		"orderly_group_messages_delivered_total", "orderly_group_messages_redelivered_total", "orderly_group_messages_dead_lettered_total",
		"orderly_group_dead_letters", "orderly_messages_published_total", "orderly_message_bytes_published_total",
		"orderly_throttled_requests_total", "orderly_topic_half_messages", "orderly_topic_messages", "orderly_topic_pending_timers"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	// What runs on the wall clock: every acknowledged publish and every group
	// commit is observed once, and the store reports itself on its disk.
	reg := prometheus.NewRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, f := range families {
		got[f.GetName()] = f
	}
	if n := got["orderly_publish_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); n != 5 {
		t.Errorf("publish latency: %d observations; want 5, one per acknowledged publish", n)
	}
	commitsN := got["orderly_store_group_commits_total"].GetMetric()[0].GetCounter().GetValue()
	if n := got["orderly_store_sync_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); n == 0 || float64(n) != commitsN {
		t.Errorf("sync latency: %d observations; want one per group commit (%v)", n, commitsN)
	}
	for _, name := range []string{"orderly_store_size_bytes", "orderly_store_disk_free_bytes", "orderly_store_disk_size_bytes"} {
		if f := got[name]; f == nil || f.GetMetric()[0].GetGauge().GetValue() <= 0 {
			t.Errorf("%s: %v; want a positive figure", name, f)
		}
	}
	for _, name := range []string{"orderly_store_write_amplification", "orderly_store_compaction_debt_bytes"} {
		if got[name] == nil {
			t.Errorf("%s missing", name)
		}
	}

	// The timer comes due: it leaves the pending timers for the topic's queue.
	clk.Advance(time.Hour)
	pendingTimers := func() float64 {
		return testutil.ToFloat64(collectorOf(c, "orderly_topic_pending_timers", "reminders"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for pendingTimers() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the due timer is still pending: %v", pendingTimers())
		}
		runtime.Gosched()
	}
	if info, err := b.Topic(inst, "reminders"); err != nil || info.Messages != 1 {
		t.Fatalf("reminders after the timer came due: %+v %v", info, err)
	}
}

type fakeServer struct{ s connlimit.Stats }

func (f fakeServer) Connections() connlimit.Stats { return f.s }

// collectorOf collects only c's series of one metric and topic.
func collectorOf(c prometheus.Collector, name, topic string) prometheus.Collector {
	return filtered{c, name, topic}
}

type filtered struct {
	c           prometheus.Collector
	name, topic string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { f.c.Collect(all); close(all) }()
	for m := range all {
		var out dto.Metric
		if err := m.Write(&out); err != nil || !strings.Contains(m.Desc().String(), `"`+f.name+`"`) {
			continue
		}
		for _, l := range out.GetLabel() {
			if l.GetName() == "topic" && l.GetValue() == f.topic {
				ch <- m
			}
		}
	}
}
