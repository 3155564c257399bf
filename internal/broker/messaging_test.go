package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/clock"
)

const inst = "MQ_INST_test"

// fixture is a broker with one instance, on a fake clock.
type fixture struct {
	t     *testing.T
	b     *Broker
	clock *clock.Fake
	dir   string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clock.NewFake(time.UnixMilli(1_700_000_000_000)), dir: t.TempDir()}
	f.open()
	if err := f.b.EnsureInstance(InstanceConfig{ID: inst, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	return f
}

// open opens the broker on f.dir (a real directory, so reopening tests recovery).
func (f *fixture) open() {
	f.t.Helper()
	b, err := Open(Options{Dir: f.dir, Clock: f.clock})
	if err != nil {
		f.t.Fatal(err)
	}
	f.b = b
	f.t.Cleanup(func() { _ = b.Close() })
}

func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.b.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

func (f *fixture) topic(name string, typ MessageType, queues int) {
	f.t.Helper()
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: name, Type: typ, Queues: queues, Owner: "o"}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) group(id string, p Protocol) {
	f.t.Helper()
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: id, Protocol: p, Owner: "o"}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) publish(topic string, m Message) PublishResult {
	f.t.Helper()
	res, err := f.b.Publish(context.Background(), inst, topic, m)
	if err != nil {
		f.t.Fatalf("Publish: %v", err)
	}
	return res
}

func (f *fixture) pop(topic string, req PopRequest) []Delivery {
	f.t.Helper()
	out, err := f.b.Pop(context.Background(), inst, topic, req)
	if err != nil {
		f.t.Fatalf("Pop: %v", err)
	}
	return out
}

func (f *fixture) ack(topic, group string, ds ...Delivery) []error {
	f.t.Helper()
	hs := make([]string, len(ds))
	for i, d := range ds {
		hs[i] = d.Handle
	}
	errs, err := f.b.Ack(inst, topic, group, hs)
	if err != nil {
		f.t.Fatalf("Ack: %v", err)
	}
	return errs
}

func msg(body string) Message { return Message{Body: []byte(body), Queue: AnyQueue} }

func bodies(ds []Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Body)
	}
	return out
}

func TestTopicRules(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		cfg  TopicConfig
		want error
	}{
		{"bad characters", TopicConfig{Name: "a.b"}, ErrInvalidArgument},
		{"too long", TopicConfig{Name: string(slices.Repeat([]byte("x"), 128))}, ErrInvalidArgument},
		{"unknown type", TopicConfig{Name: "t", Type: "Delay"}, ErrInvalidArgument},
		{"too many queues", TopicConfig{Name: "t", Queues: 257}, ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.b.EnsureTopic(inst, tc.cfg); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}

	info, err := f.b.EnsureTopic(inst, TopicConfig{Name: "MQ_ORDER", Type: Ordered, Queues: 4, Owner: "o"})
	if err != nil || info.Queues != 4 || info.Retention != DefaultRetention {
		t.Fatalf("EnsureTopic = %+v, %v", info, err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "MQ_ORDER", Type: Normal, Queues: 4, Owner: "o"}); !errors.Is(err, ErrImmutable) {
		t.Fatalf("type change: err = %v", err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "MQ_ORDER", Type: Ordered, Queues: 2, Owner: "o"}); !errors.Is(err, ErrImmutable) {
		t.Fatalf("shrink: err = %v", err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "MQ_ORDER", Type: Ordered, Queues: 4, Owner: "other"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("other owner: err = %v", err)
	}
	if info, err := f.b.EnsureTopic(inst, TopicConfig{Name: "MQ_ORDER", Type: Ordered, Queues: 6, Owner: "o"}); err != nil || info.Queues != 6 {
		t.Fatalf("grow: %+v, %v", info, err)
	}
	if _, err := f.b.EnsureTopic("MQ_INST_missing", TopicConfig{Name: "t"}); !errors.Is(err, ErrInstanceNotFound) {
		t.Fatalf("unknown instance: err = %v", err)
	}
}

func TestInstancesAreIsolated(t *testing.T) {
	f := newFixture(t)
	if err := f.b.EnsureInstance(InstanceConfig{ID: "MQ_INST_other", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	f.topic("shared-name", Normal, 1)
	if _, err := f.b.Topic("MQ_INST_other", "shared-name"); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("other instance sees the topic: err = %v", err)
	}
	if _, err := f.b.Publish(context.Background(), "MQ_INST_other", "shared-name", msg("x")); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("publish through the other instance: err = %v", err)
	}
}

func TestPublishRefusesMessagesThatDoNotFitTheTopic(t *testing.T) {
	f := newFixture(t)
	f.topic("normal", Normal, 2)
	f.topic("ordered", Ordered, 2)
	f.topic("txn", Transactional, 2)
	ctx := context.Background()
	for _, tc := range []struct {
		topic string
		m     Message
		want  error
	}{
		{"normal", Message{Body: []byte("x"), Queue: AnyQueue, Transactional: true}, ErrMessageType},
		{"txn", msg("x"), ErrMessageType},
		{"ordered", msg("no sharding key"), ErrMessageType},
		{"normal", Message{Body: make([]byte, MaxBodySize+1), Queue: AnyQueue}, ErrInvalidArgument},
		{"normal", Message{Body: []byte("x"), Queue: 2}, ErrInvalidArgument},
		{"missing", msg("x"), ErrTopicNotFound},
	} {
		if _, err := f.b.Publish(ctx, inst, tc.topic, tc.m); !errors.Is(err, tc.want) {
			t.Errorf("publish to %s: err = %v, want %v", tc.topic, err, tc.want)
		}
	}
	// The largest allowed body goes through.
	if _, err := f.b.Publish(ctx, inst, "normal", Message{Body: make([]byte, MaxBodySize), Queue: AnyQueue}); err != nil {
		t.Fatalf("4 MiB body: %v", err)
	}
}

func TestPublishedMessagesAreReadBackWhole(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	in := Message{
		Body: []byte("hello <&> world"), Tag: "TagA", Keys: []string{"k1", "k2"},
		Properties: map[string]string{"a": "1", "b": "2"}, Queue: AnyQueue,
		BornHost: "10.0.0.1:1234", Flag: 7, BornAt: time.UnixMilli(1_600_000_000_000),
	}
	res := f.publish("t", in)
	if len(res.ID) != 32 || res.BodyMD5 != bodyMD5(in.Body) || res.Offset != 0 {
		t.Fatalf("PublishResult = %+v", res)
	}
	if seq, ok := parseMessageID(res.ID); !ok || seq != res.Seq {
		t.Fatalf("id %s does not encode seq %d", res.ID, res.Seq)
	}

	// It survives a restart.
	f.reopen()
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 32, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 {
		t.Fatalf("Pull = %+v, %v", pr, err)
	}
	got := pr.Messages[0]
	if got.ID != res.ID || string(got.Body) != string(in.Body) || got.Tag != in.Tag || !slices.Equal(got.Keys, in.Keys) ||
		got.Properties["a"] != "1" || got.Properties["b"] != "2" || got.BornHost != in.BornHost || got.Flag != 7 ||
		!got.BornAt.Equal(in.BornAt) || got.BodyMD5 != res.BodyMD5 || !got.StoreTime.Equal(res.StoreTime) {
		t.Fatalf("read back %+v\nwant %+v", got, in)
	}
	if pr.NextOffset != 1 || pr.MinOffset != 0 || pr.MaxOffset != 1 {
		t.Fatalf("offsets = %+v", pr)
	}
}

func TestShardingKeyKeepsPublishOrderInOneQueue(t *testing.T) {
	f := newFixture(t)
	f.topic("orders", Ordered, 4)
	f.group("GID_tcp", TCP)
	queueOf := map[string]int{}
	for i := range 30 {
		key := fmt.Sprintf("order-%d", i%3)
		r := f.publish("orders", Message{Body: []byte(fmt.Sprintf("%s/%d", key, i)), ShardingKey: key, Queue: AnyQueue})
		if q, seen := queueOf[key]; seen && q != r.Queue {
			t.Fatalf("key %s moved from queue %d to %d", key, q, r.Queue)
		}
		queueOf[key] = r.Queue
	}
	for key, q := range queueOf {
		pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "orders", q, 0, 100, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		var seen []int
		for _, m := range pr.Messages {
			var k string
			var n int
			fmt.Sscanf(string(m.Body), "order-%1s/%d", &k, &n)
			if m.ShardingKey == key {
				seen = append(seen, n)
			}
		}
		if len(seen) != 10 || !slices.IsSorted(seen) {
			t.Fatalf("key %s on queue %d read in order %v", key, q, seen)
		}
	}
}

func TestConcurrentPublishersGetDistinctOffsetsAndEverythingIsStored(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 4)
	f.group("GID_tcp", TCP)
	const producers, each = 16, 50
	var wg sync.WaitGroup
	ids := make(chan string, producers*each)
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r, err := f.b.Publish(context.Background(), inst, "t", msg(fmt.Sprintf("%d-%d", p, i)))
				if err != nil {
					t.Error(err)
					return
				}
				ids <- r.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
	total := 0
	for q := range 4 {
		pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", q, 0, 1024, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range pr.Messages {
			if m.Offset != int64(i) || !seen[m.ID] {
				t.Fatalf("queue %d position %d: offset %d id %s", q, i, m.Offset, m.ID)
			}
		}
		total += len(pr.Messages)
	}
	if total != producers*each {
		t.Fatalf("stored %d messages, want %d", total, producers*each)
	}
}

func TestPopAckAndRedelivery(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.group("GID_http", HTTP)
	for i := range 4 {
		f.publish("t", Message{Body: []byte(fmt.Sprint(i)), Keys: []string{fmt.Sprint("key", i)}, Properties: map[string]string{"a": "1"}, Queue: AnyQueue})
	}
	start := f.clock.Now()
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
	if len(got) != 4 {
		t.Fatalf("popped %d, want 4", len(got))
	}
	for _, d := range got {
		if d.ConsumedTimes != 1 || !d.NextConsumeTime.Equal(start.Add(DefaultInvisibility)) || !d.FirstConsumeTime.Equal(start) || d.Handle == "" {
			t.Fatalf("delivery %+v", d)
		}
	}
	// Invisible to the group while in flight.
	if again := f.pop("t", PopRequest{Group: "GID_http", Max: 16}); len(again) != 0 {
		t.Fatalf("in-flight messages popped again: %v", bodies(again))
	}
	// Ack two; leave two.
	if errs := f.ack("t", "GID_http", got[0], got[1]); errs[0] != nil || errs[1] != nil {
		t.Fatalf("ack errors %v", errs)
	}
	// A second ack of the same handle: the message is gone.
	if errs := f.ack("t", "GID_http", got[0]); !errors.Is(errs[0], ErrHandleExpired) {
		t.Fatalf("double ack: %v", errs)
	}

	f.clock.Advance(DefaultInvisibility)
	back := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
	if got, want := sortedBodies(back), sortedBodies(got[2:]); !slices.Equal(got, want) {
		t.Fatalf("redelivered %v, want %v", got, want)
	}
	for _, d := range back {
		if d.ConsumedTimes != 2 || !d.FirstConsumeTime.Equal(start) {
			t.Fatalf("redelivery %+v", d)
		}
	}
	// The old handles expired with the invisibility window, and differ from the new.
	if errs := f.ack("t", "GID_http", got[2]); !errors.Is(errs[0], ErrHandleExpired) {
		t.Fatalf("ack with an expired handle: %v", errs)
	}
	if back[0].Handle == got[2].Handle || back[0].Handle == got[3].Handle {
		t.Fatal("a redelivery reused a handle")
	}
	errs, err := f.b.Ack(inst, "t", "GID_http", []string{back[0].Handle, "garbage", back[1].Handle[:64] + "F"})
	if err != nil || errs[0] != nil || !errors.Is(errs[1], ErrInvalidHandle) || !errors.Is(errs[2], ErrInvalidHandle) {
		t.Fatalf("mixed ack: %v, %v", errs, err)
	}
}

func sortedBodies(ds []Delivery) []string {
	b := bodies(ds)
	slices.Sort(b)
	return b
}

func TestPopProgressSurvivesRestartAndUnackedComeBack(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	for i := range 6 {
		f.publish("t", msg(fmt.Sprint(i)))
	}
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 6})
	// Ack out of order: 0, 1 and 4. Committed progress can only reach offset 2.
	f.ack("t", "GID_http", got[0], got[1], got[4])
	f.reopen()
	back := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
	if b := bodies(back); !slices.Contains(b, "2") || !slices.Contains(b, "3") || !slices.Contains(b, "5") || slices.Contains(b, "0") || slices.Contains(b, "1") {
		t.Fatalf("after restart popped %v; want 2, 3, 5 again and never 0 or 1", b)
	}
}

// TestSQLFilter: a SQL92 filter reads the user's properties, TAGS and KEYS, on
// pop and on pull alike; what it rules out is done for the group.
func TestSQLFilter(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.group("GID_tcp", TCP)
	for i, m := range []Message{
		{Tag: "A", Properties: map[string]string{"a": "1"}},
		{Tag: "B", Properties: map[string]string{"a": "5"}},
		{Tag: "A", Properties: map[string]string{"a": "x"}},
		{Tag: "A"},
		{Tag: "A", Keys: []string{"k1", "k2"}, Properties: map[string]string{"a": "2", "region": "eu-west"}},
	} {
		m.Body, m.Queue = []byte(fmt.Sprint(i)), AnyQueue
		f.publish("t", m)
	}
	for expr, want := range map[string][]string{
		"TAGS = 'A' AND a BETWEEN 0 AND 3": {"0", "4"},
		"a > 1":                            {"1", "4"},
		"a IS NULL":                        {"3"},
		"KEYS CONTAINS 'k2' AND region STARTSWITH 'eu'": {"4"},
		"TAGS IN ('B')": {"1"},
	} {
		filter, err := ParseSQLFilter(expr)
		if err != nil {
			t.Fatal(err)
		}
		res, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 32, filter, 0)
		if err != nil {
			t.Fatal(err)
		}
		var pulled []string
		for _, m := range res.Messages {
			pulled = append(pulled, string(m.Body))
		}
		if !slices.Equal(pulled, want) || res.NextOffset != 5 {
			t.Errorf("pull with %q: %v, next offset %d; want %v and 5", expr, pulled, res.NextOffset, want)
		}
	}
	filter, _ := ParseSQLFilter("a > 1")
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 16, Filter: filter})
	if b := bodies(got); !slices.Equal(b, []string{"1", "4"}) {
		t.Fatalf("pop with a > 1: %v", b)
	}
	f.ack("t", "GID_http", got...)
	if rest := f.pop("t", PopRequest{Group: "GID_http", Max: 16}); len(rest) != 0 {
		t.Fatalf("messages the filter ruled out delivered later: %v", bodies(rest))
	}
	for _, bad := range []string{"", "a >", "a = NULL", "a != 1"} {
		if _, err := ParseSQLFilter(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q: %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestTagFilter(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	for i, tag := range []string{"A", "B", "C", "", "A"} {
		f.publish("t", Message{Body: []byte(fmt.Sprint(i)), Tag: tag, Queue: AnyQueue})
	}
	filter, err := ParseTagFilter("A||C")
	if err != nil {
		t.Fatal(err)
	}
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 16, Filter: filter})
	if b := bodies(got); !slices.Equal(b, []string{"0", "2", "4"}) {
		t.Fatalf("A||C popped %v", b)
	}
	f.ack("t", "GID_http", got...)
	// Filtered-out messages are done for the group: nothing is left.
	all, _ := ParseTagFilter("*")
	if rest := f.pop("t", PopRequest{Group: "GID_http", Max: 16, Filter: all}); len(rest) != 0 {
		t.Fatalf("filtered messages delivered later: %v", bodies(rest))
	}
	if _, err := ParseTagFilter("||"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty filter: %v", err)
	}
}

func TestOrderedPopOneBatchPerQueue(t *testing.T) {
	f := newFixture(t)
	f.topic("orders", Ordered, 1)
	f.group("GID_http", HTTP)
	for i := range 5 {
		f.publish("orders", Message{Body: []byte(fmt.Sprint(i)), ShardingKey: "k", Queue: AnyQueue})
	}
	first := f.pop("orders", PopRequest{Group: "GID_http", Max: 3, Orderly: true})
	if b := bodies(first); !slices.Equal(b, []string{"0", "1", "2"}) {
		t.Fatalf("first batch %v", b)
	}
	if !first[0].NextConsumeTime.Equal(f.clock.Now().Add(DefaultOrderedInvisibility)) {
		t.Fatalf("ordered invisibility: next consume %v", first[0].NextConsumeTime)
	}
	// Nothing more from the queue while the batch is in flight, even partly acked.
	f.ack("orders", "GID_http", first[0])
	if next := f.pop("orders", PopRequest{Group: "GID_http", Max: 3, Orderly: true}); len(next) != 0 {
		t.Fatalf("second batch while the first is in flight: %v", bodies(next))
	}
	// Unacked, the rest of the batch comes back whole and in order.
	f.clock.Advance(DefaultOrderedInvisibility)
	again := f.pop("orders", PopRequest{Group: "GID_http", Max: 3, Orderly: true})
	if b := bodies(again); !slices.Equal(b, []string{"1", "2"}) {
		t.Fatalf("redelivered batch %v", b)
	}
	f.ack("orders", "GID_http", again...)
	rest := f.pop("orders", PopRequest{Group: "GID_http", Max: 16, Orderly: true})
	if b := bodies(rest); !slices.Equal(b, []string{"3", "4"}) {
		t.Fatalf("next batch %v", b)
	}
	if _, err := f.b.Pop(context.Background(), inst, "orders", PopRequest{Group: "GID_http", Max: 1, Orderly: true, Wait: 0}); err != nil {
		t.Fatal(err)
	}
	f.topic("plain", Normal, 1)
	if _, err := f.b.Pop(context.Background(), inst, "plain", PopRequest{Group: "GID_http", Max: 1, Orderly: true}); !errors.Is(err, ErrMessageType) {
		t.Fatalf("orderly pop of a normal topic: %v", err)
	}
}

func TestGroupProtocolIsEnforced(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	f.group("GID_http", HTTP)
	if _, err := f.b.Pop(context.Background(), inst, "t", PopRequest{Group: "GID_tcp", Max: 1}); !errors.Is(err, ErrWrongProtocol) {
		t.Fatalf("pop by a TCP group: %v", err)
	}
	if _, err := f.b.Pull(context.Background(), inst, "GID_http", "t", 0, 0, 1, Filter{}, 0); !errors.Is(err, ErrWrongProtocol) {
		t.Fatalf("pull by an HTTP group: %v", err)
	}
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: "GID_tcp", Protocol: HTTP, Owner: "o"}); !errors.Is(err, ErrImmutable) {
		t.Fatalf("protocol change: %v", err)
	}
}

func TestLongPollGetsAMessagePublishedWhileWaiting(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.group("GID_http", HTTP)
	got := make(chan []Delivery, 1)
	base := f.clock.Timers() // the broker's own loops hold timers too
	go func() {
		out, err := f.b.Pop(context.Background(), inst, "t", PopRequest{Group: "GID_http", Max: 16, Wait: 30 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- out
	}()
	// Wait until the poller sleeps on the clock, then publish: it must not need the
	// clock to move.
	waitFor(t, func() bool { return f.clock.Timers() > base })
	f.publish("t", msg("late"))
	select {
	case out := <-got:
		if b := bodies(out); !slices.Equal(b, []string{"late"}) {
			t.Fatalf("long poll got %v", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll did not return the message published while it waited")
	}
}

func TestLongPollTimesOutEmpty(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	got := make(chan []Delivery, 1)
	base := f.clock.Timers()
	go func() {
		out, _ := f.b.Pop(context.Background(), inst, "t", PopRequest{Group: "GID_http", Max: 1, Wait: 5 * time.Second})
		got <- out
	}()
	waitFor(t, func() bool { return f.clock.Timers() > base })
	f.clock.Advance(5 * time.Second)
	if out := <-got; len(out) != 0 {
		t.Fatalf("got %v", bodies(out))
	}
}

func TestDeletingATopicRemovesItsMessages(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	f.publish("t", msg("x"))
	if err := f.b.DeleteTopic(inst, "t", "someone-else"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.Topic(inst, "t"); err != nil {
		t.Fatalf("another owner's delete removed the topic: %v", err)
	}
	if err := f.b.DeleteTopic(inst, "t", "o"); err != nil {
		t.Fatal(err)
	}
	f.topic("t", Normal, 1) // same name, new topic: starts empty
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 10, Filter{}, 0)
	if err != nil || len(pr.Messages) != 0 || pr.MaxOffset != 0 {
		t.Fatalf("recreated topic holds %+v, %v", pr, err)
	}
	f.reopen()
	if info, err := f.b.Topic(inst, "t"); err != nil || info.Messages != 0 {
		t.Fatalf("after restart: %+v, %v", info, err)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
