package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Rules of the broker that a reading of the code once found broken; each test
// failed before its fix.

// keysOf counts the store's keys of one kind, and with prefix.
func (f *fixture) keysOf(prefix ...byte) int {
	f.t.Helper()
	it, err := f.b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		f.t.Fatal(err)
	}
	defer it.close()
	n := 0
	for ok := it.first(); ok; ok = it.next() {
		n++
	}
	return n
}

func TestTimersAtMost40DaysAhead(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	far := Message{Body: []byte("x"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(MaxDeliveryDelay + time.Hour)}
	_, err := f.b.Publish(context.Background(), inst, "t", far)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "40 days") {
		t.Fatalf("a timer 40 days and an hour ahead: %v", err)
	}
	f.publish("t", Message{Body: []byte("x"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(MaxDeliveryDelay - time.Hour)})
}

func TestAFarTimerOrALongRetentionPinsNothingElse(t *testing.T) {
	f := newFixture(t)
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "short", Queues: 1, Retention: time.Hour, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "long", Queues: 1, Retention: 30 * 24 * time.Hour, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	f.publish("long", Message{Body: []byte("timer"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(39 * 24 * time.Hour)})
	f.publish("long", msg("kept for a month"))
	for i := range 10 {
		f.publish("short", Message{Body: []byte(fmt.Sprint(i)), Queue: AnyQueue, Keys: []string{"k"}})
	}
	f.clock.Advance(2 * time.Hour)
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	// Only the long topic's two records are left, and no key entry of the short
	// one.
	if n := f.keysOf(kindLog); n != 2 {
		t.Fatalf("%d records on disk, want the long topic's 2", n)
	}
	if n := f.keysOf(kindKey); n != 0 {
		t.Fatalf("%d key entries left pointing at reclaimed records", n)
	}
	if got, _ := f.b.MessagesByKey(context.Background(), inst, "short", KeyQuery{Key: "k", Max: 10}); len(got) != 0 {
		t.Fatalf("lookup by key found %d reclaimed messages", len(got))
	}
}

func TestUnresolvedHalfRollsBackWithoutAnyonePolling(t *testing.T) {
	f := newFixture(t)
	f.topic("tx", Transactional, 1)
	res := f.publish("tx", Message{Body: []byte("half"), Queue: AnyQueue, Transactional: true})
	f.clock.Advance(TransactionTimeout + time.Minute)
	// Nobody calls PopHalf or TakeTransactionChecks; the housekeeping round alone
	// rolls it back.
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.MessageByID(inst, res.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("half message after a day unresolved: %v", err)
	}
	if n := f.keysOf(kindHalf); n != 0 {
		t.Fatalf("%d half messages left", n)
	}
}

func TestDeletingATopicOrGroupReleasesEverything(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.topic("tx", Transactional, 1)
	f.group("GID_http", HTTP)
	for i := range 50 {
		f.publish("t", Message{Body: []byte(fmt.Sprint(i)), Queue: AnyQueue, Keys: []string{fmt.Sprint("k", i)}})
	}
	f.publish("t", Message{Body: []byte("later"), Queue: AnyQueue, Keys: []string{"kt"}, DeliverAt: f.clock.Now().Add(time.Hour)})
	f.publish("tx", Message{Body: []byte("half"), Queue: AnyQueue, Keys: []string{"kh"}, Transactional: true})
	// A dead letter, so the group's system topics hold something.
	ds := f.pop("t", PopRequest{Group: "GID_http", Max: 1, Invisibility: time.Second})
	if _, err := f.b.publishSystemForTest(DLQTopic("GID_http"), ds[0]); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"t", "tx"} {
		if err := f.b.DeleteTopic(inst, name, "o"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.b.DeleteGroup(inst, "GID_http", "o"); err != nil {
		t.Fatal(err)
	}
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []byte{kindLog, kindQueue, kindKey, kindOffset, kindTimer, kindHalf, kindQueueMin, kindBytes, kindRef} {
		if n := f.keysOf(kind); n != 0 {
			t.Errorf("%d keys of kind %q left after deleting every topic and group", n, kind)
		}
	}
	if n := f.keysOf(kindMeta, metaReaping); n != 0 {
		t.Errorf("%d topics still marked for reaping", n)
	}
	f.b.txns.mu.Lock()
	defer f.b.txns.mu.Unlock()
	if len(f.b.txns.halves) != 0 {
		t.Errorf("%d half messages still registered", len(f.b.txns.halves))
	}
}

// publishSystemForTest dead-letters a delivery for its group, as a pop past the
// limit would.
func (b *Broker) publishSystemForTest(topic string, d Delivery) (struct{}, error) {
	return struct{}{}, b.publishSystem(context.Background(), inst, topic, retryCopy(d.StoredMessage, 1))
}

func TestAcceptedMessagesCanBeDeliveredOnEveryWire(t *testing.T) {
	f := newFixture(t)
	f.topic("o", Ordered, 2)
	big := strings.Repeat("k", 40<<10)
	for name, m := range map[string]Message{
		"a sharding key longer than the properties field": {Body: []byte("x"), Queue: AnyQueue, ShardingKey: big},
		"properties that fill it, with a tag":             {Body: []byte("x"), Queue: AnyQueue, ShardingKey: "k", Tag: strings.Repeat("t", 100), Properties: map[string]string{"p": big[:MaxPropertiesSize-20]}},
		"a separator in a property":                       {Body: []byte("x"), Queue: AnyQueue, ShardingKey: "k", Properties: map[string]string{"p": "a\x01b"}},
	} {
		if _, err := f.b.Publish(context.Background(), inst, "o", m); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A topic or group name that passes 127 bytes with the instance prefix.
	long := strings.Repeat("n", MaxWireNameLength-len(inst))
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: long, Owner: "o"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("topic of %d bytes with its prefix: %v", len(inst)+1+len(long), err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: long[1:], Owner: "o"}); err != nil {
		t.Errorf("topic of exactly %d bytes with its prefix: %v", MaxWireNameLength, err)
	}
	group := strings.Repeat("g", MaxWireNameLength-len(inst)-len(RetryTopicPrefix))
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: group, Protocol: TCP, Owner: "o"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("group whose retry topic passes %d bytes: %v", MaxWireNameLength, err)
	}
}

func TestSendBackNamesOnlyADeliveredMessageOfTheGroup(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.topic("tx", Transactional, 1)
	f.group("GID_a", TCP)
	f.group("GID_b", TCP)
	half := f.publish("tx", Message{Body: []byte("half"), Queue: AnyQueue, Transactional: true})
	timer := f.publish("t", Message{Body: []byte("later"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(time.Hour)})
	for name, seq := range map[string]uint64{"an unresolved half message": half.Seq, "a timer not yet due": timer.Seq} {
		if err := f.b.SendBack(context.Background(), inst, "GID_a", seq, 0, 0); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("send-back of %s: %v", name, err)
		}
	}
	ctx := context.Background()
	if pr, _ := f.b.Pull(ctx, inst, "GID_a", RetryTopic("GID_a"), 0, 0, 16, Filter{}, 0); len(pr.Messages) != 0 {
		t.Fatalf("a pending message became visible on the retry topic: %+v", pr.Messages)
	}
	// A delivered message can be sent back; a copy on one group's retry topic
	// cannot be sent back by another group.
	now := f.publish("t", msg("now"))
	if err := f.b.SendBack(ctx, inst, "GID_a", now.Seq, 1, 0); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Second)
	var retry []StoredMessage
	waitFor(t, func() bool {
		pr, _ := f.b.Pull(ctx, inst, "GID_a", RetryTopic("GID_a"), 0, 0, 16, Filter{}, 0)
		retry = pr.Messages
		return len(retry) == 1
	})
	if err := f.b.SendBack(ctx, inst, "GID_b", retry[0].Seq, 1, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("another group's retry: %v", err)
	}
}

func TestIDsAndOffsetsAreNeverHandedOutTwice(t *testing.T) {
	f := newFixture(t)
	f.topic("tx", Transactional, 1)
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "short", Queues: 1, Retention: time.Hour, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	f.publish("short", msg("reclaimed"))
	last := f.publish("tx", Message{Body: []byte("rolled back"), Queue: AnyQueue, Transactional: true})
	if err := f.b.EndTransaction(inst, "tx", last.TxnHandle, false); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	// The newest records are gone: a restart must not hand out their ids again.
	f.reopen()
	again := f.publish("short", msg("new"))
	if again.Seq <= last.Seq || again.Offset != 1 {
		t.Fatalf("after restart: seq %d (newest before: %d), offset %d (want 1)", again.Seq, last.Seq, again.Offset)
	}
}

func TestReDrivingTheNewestDeadLetterKeepsItsOffset(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.publish("t", msg("dies"))
	ds := f.pop("t", PopRequest{Group: "GID_http", Max: 1})
	if _, err := f.b.publishSystemForTest(DLQTopic("GID_http"), ds[0]); err != nil {
		t.Fatal(err)
	}
	dl, _, err := f.b.DeadLetters(inst, "GID_http", 0, 10)
	if err != nil || len(dl) != 1 {
		t.Fatalf("dead letters %v, %v", dl, err)
	}
	if n, err := f.b.Redrive(context.Background(), inst, "GID_http", []string{dl[0].ID}); n != 1 || err != nil {
		t.Fatalf("re-drove %d: %v", n, err)
	}
	stats, _ := f.b.GroupStats(inst, "GID_http")
	f.reopen()
	after, _ := f.b.GroupStats(inst, "GID_http")
	if stats.DeadLetters != 0 || after.DeadLetters != 0 {
		t.Fatalf("dead letters counted %d, after restart %d", stats.DeadLetters, after.DeadLetters)
	}
	if _, err := f.b.publishSystemForTest(DLQTopic("GID_http"), ds[0]); err != nil {
		t.Fatal(err)
	}
	dl2, _, _ := f.b.DeadLetters(inst, "GID_http", 0, 10)
	if len(dl2) != 1 || dl2[0].Offset == dl[0].Offset || dl2[0].ID == dl[0].ID {
		t.Fatalf("new dead letter %+v reuses the re-driven one's offset or id (%d, %s)", dl2, dl[0].Offset, dl[0].ID)
	}
}

func TestAnExpiredOrderedBatchComesBackWholeToASmallerPop(t *testing.T) {
	f := newFixture(t)
	f.topic("o", Ordered, 1)
	f.group("GID_http", HTTP)
	for i := range 8 {
		f.publish("o", Message{Body: []byte(fmt.Sprint(i)), Queue: AnyQueue, ShardingKey: "k"})
	}
	req := PopRequest{Group: "GID_http", Max: 8, Orderly: true, Invisibility: time.Minute}
	if got := bodies(f.pop("o", req)); len(got) != 8 {
		t.Fatalf("first batch %v", got)
	}
	f.clock.Advance(2 * time.Minute)
	// The consumer now asks for 3 at a time: it gets the batch's head, and the
	// rest only once the head is acknowledged, in order, each once.
	req.Max = 3
	var got []string
	for range 10 {
		ds := f.pop("o", req)
		if again := f.pop("o", req); len(again) != 0 {
			t.Fatalf("a second batch %v went out while %v was out", bodies(again), bodies(ds))
		}
		got = append(got, bodies(ds)...)
		for _, err := range f.ack("o", "GID_http", ds...) {
			if err != nil {
				t.Fatal(err)
			}
		}
		if len(got) >= 8 {
			break
		}
	}
	if strings.Join(got, ",") != "0,1,2,3,4,5,6,7" {
		t.Fatalf("redelivered %v", got)
	}
}

func TestScansAreBounded(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	f.group("GID_http", HTTP)
	n := maxScan + 100
	msgs := make([]Message, 0, 256)
	for i := range n {
		msgs = append(msgs, Message{Body: []byte(fmt.Sprint(i)), Queue: AnyQueue, Tag: "a"})
		if len(msgs) == cap(msgs) || i == n-1 || i == n/2 {
			if _, err := f.b.PublishBatch(context.Background(), inst, "t", msgs); err != nil {
				t.Fatal(err)
			}
			msgs = msgs[:0]
		}
		if i == n/2 {
			f.clock.Advance(time.Hour)
		}
	}
	f.publish("t", Message{Body: []byte("b"), Queue: AnyQueue, Tag: "b"})
	onlyB, _ := ParseTagFilter("b")
	// A pull whose filter matches nothing in the first maxScan entries returns
	// how far it looked, not the whole backlog's walk.
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 32, onlyB, 0)
	if err != nil || len(pr.Messages) != 0 || pr.NextOffset != maxScan {
		t.Fatalf("first pull: %d messages, next %d, %v", len(pr.Messages), pr.NextOffset, err)
	}
	pr, err = f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, pr.NextOffset, 32, onlyB, 0)
	if err != nil || len(pr.Messages) != 1 || string(pr.Messages[0].Body) != "b" {
		t.Fatalf("second pull: %+v, %v", pr, err)
	}
	// A SQL92 filter reads every record it scans: its step is smaller.
	sqlB, _ := ParseSQLFilter("TAGS = 'b'")
	for from, want := int64(0), int64(maxSQLScan); ; want = min(want+maxSQLScan, int64(n)) {
		pr, err = f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, from, 32, sqlB, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pr.Messages) == 1 {
			if string(pr.Messages[0].Body) != "b" || from+maxSQLScan <= int64(n) {
				t.Fatalf("a SQL92 pull from %d: %q, out of its step", from, pr.Messages[0].Body)
			}
			break
		}
		if len(pr.Messages) != 0 || pr.NextOffset != want {
			t.Fatalf("a SQL92 pull from %d: %d messages, next %d; want none and %d", from, len(pr.Messages), pr.NextOffset, want)
		}
		from = pr.NextOffset
	}
	// A pop goes on scanning by itself, a bounded step at a time.
	ds := f.pop("t", PopRequest{Group: "GID_http", Max: 16, Filter: onlyB})
	if len(ds) != 1 || string(ds[0].Body) != "b" {
		t.Fatalf("pop: %v", bodies(ds))
	}
	// Offset by time: the first message stored an hour later.
	off, err := f.b.OffsetAt(inst, "t", 0, f.clock.Now())
	if err != nil || off != int64(n/2+1) {
		t.Fatalf("offset at the later hour: %d, %v; want %d", off, err, n/2+1)
	}
}

func TestKeyEntriesGoWithRecords(t *testing.T) {
	f := newFixture(t)
	f.topic("tx", Transactional, 1)
	res := f.publish("tx", Message{Body: []byte("half"), Queue: AnyQueue, Transactional: true, Keys: []string{"order-1"}})
	if err := f.b.EndTransaction(inst, "tx", res.TxnHandle, false); err != nil {
		t.Fatal(err)
	}
	if n := f.keysOf(kindKey); n != 0 {
		t.Fatalf("%d key entries point at a rolled-back message", n)
	}
}
