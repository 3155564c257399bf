package broker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestLookupByIDAndKey(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	a := f.publish("t", Message{Body: []byte("a"), Keys: []string{"order-1"}, Queue: AnyQueue})
	f.publish("t", Message{Body: []byte("b"), Keys: []string{"order-2"}, Queue: AnyQueue})
	c := f.publish("t", Message{Body: []byte("c"), Keys: []string{"order-1", "x"}, Queue: AnyQueue})

	m, err := f.b.MessageByID(inst, a.ID)
	if err != nil || string(m.Body) != "a" || m.Topic != "t" {
		t.Fatalf("MessageByID = %+v, %v", m, err)
	}
	if _, err := f.b.MessageByID("MQ_INST_other", a.ID); !errors.Is(err, ErrInstanceNotFound) && !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("lookup through another instance: %v", err)
	}
	if _, err := f.b.MessageByID(inst, "nonsense"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad id: %v", err)
	}
	got, err := f.b.MessagesByKey(context.Background(), inst, "t", KeyQuery{Key: "order-1", Max: 10})
	if err != nil || len(got) != 2 || got[0].ID != a.ID || got[1].ID != c.ID {
		t.Fatalf("MessagesByKey = %+v, %v", got, err)
	}
	// "order-1" must not match "order-10": keys are length-prefixed.
	f.publish("t", Message{Body: []byte("d"), Keys: []string{"order-10"}, Queue: AnyQueue})
	if got, _ := f.b.MessagesByKey(context.Background(), inst, "t", KeyQuery{Key: "order-1", Max: 10}); len(got) != 2 {
		t.Fatalf("prefix of a longer key matched: %d results", len(got))
	}
}

func TestRetentionReclaimsExpiredMessages(t *testing.T) {
	f := newFixture(t)
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "short", Queues: 1, Retention: time.Hour, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	f.topic("long", Normal, 1)
	f.group("GID_tcp", TCP)
	old := f.publish("short", msg("old"))
	withOld, _ := f.b.Topic(inst, "short")
	f.publish("long", msg("kept"))
	f.publish("short", Message{Body: []byte("scheduled"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(100 * time.Hour)})
	f.clock.Advance(2 * time.Hour)
	fresh := f.publish("short", msg("fresh"))

	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	// A pull from a reclaimed offset is told where the queue now starts.
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "short", 0, 0, 16, Filter{}, 0)
	if err != nil || len(pr.Messages) != 0 || pr.NextOffset != 1 || pr.MinOffset != 1 {
		t.Fatalf("pull from a reclaimed offset: %+v, %v", pr, err)
	}
	pr, err = f.b.Pull(context.Background(), inst, "GID_tcp", "short", 0, pr.NextOffset, 16, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 || pr.Messages[0].ID != fresh.ID {
		t.Fatalf("after reclaim pulled %+v, %v", pr, err)
	}
	// Only "fresh" is left: its record is "old"'s plus two bytes of body.
	after, _ := f.b.Topic(inst, "short")
	if after.Messages != 1 || after.Bytes != withOld.Bytes+2 {
		t.Fatalf("stats with old %+v, after reclaim %+v", withOld, after)
	}
	// The record goes with its entry: the other topic's longer retention keeps
	// nothing of this one on disk.
	if _, err := f.b.MessageByID(inst, old.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("record outlived its topic's retention: %v", err)
	}
	f.clock.Advance(DefaultRetention)
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if pr, _ := f.b.Pull(context.Background(), inst, "GID_tcp", "long", 0, 0, 16, Filter{}, 0); len(pr.Messages) != 0 {
		t.Fatalf("long topic still delivers %d messages after 74 h", len(pr.Messages))
	}
	// The timer, stored 74 h ago, is due at 100 h and must still be delivered then.
	f.clock.Advance(30 * time.Hour)
	var got []StoredMessage
	waitFor(t, func() bool {
		pr, _ := f.b.Pull(context.Background(), inst, "GID_tcp", "short", 0, 2, 16, Filter{}, 0)
		got = pr.Messages
		return len(got) > 0
	})
	if string(got[0].Body) != "scheduled" {
		t.Fatalf("got %q", got[0].Body)
	}
	// Offsets survive a restart even when retention emptied a queue.
	f.reopen()
	if min, max, _ := f.b.QueueOffsets(inst, "long", 0); min != 1 || max != 1 {
		t.Fatalf("emptied queue after restart: min %d max %d", min, max)
	}
}

func TestTCPOffsets(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	if _, found, err := f.b.ConsumerOffset(inst, "GID_tcp", "t", 0); err != nil || found {
		t.Fatalf("new group: found=%v err=%v", found, err)
	}
	t0 := f.clock.Now()
	for range 3 {
		f.publish("t", msg("x"))
		f.clock.Advance(time.Minute)
	}
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 2); err != nil {
		t.Fatal(err)
	}
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 99); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("offset past the end: %v", err)
	}
	f.reopen()
	if off, found, err := f.b.ConsumerOffset(inst, "GID_tcp", "t", 0); err != nil || !found || off != 2 {
		t.Fatalf("after restart: %d %v %v", off, found, err)
	}
	for _, tc := range []struct {
		at   time.Time
		want int64
	}{
		{t0.Add(-time.Hour), 0}, {t0, 0}, {t0.Add(30 * time.Second), 1}, {t0.Add(2 * time.Minute), 2}, {t0.Add(time.Hour), 3},
	} {
		if got, err := f.b.OffsetAt(inst, "t", 0, tc.at); err != nil || got != tc.want {
			t.Errorf("OffsetAt(%v) = %d, %v; want %d", tc.at.Sub(t0), got, err, tc.want)
		}
	}
	stats, err := f.b.GroupStats(inst, "GID_tcp")
	if err != nil || len(stats.Topics) != 1 || stats.Topics[0].Backlog != 1 {
		t.Fatalf("GroupStats = %+v, %v", stats, err)
	}
}

func TestQueueLocks(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Ordered, 3)
	f.group("GID_tcp", TCP)
	qs := []QueueRef{{"t", 0}, {"t", 1}, {"t", 2}, {"missing", 0}}
	a, err := f.b.LockQueues(inst, "GID_tcp", "client-a", qs[:2])
	if err != nil || len(a) != 2 {
		t.Fatalf("a locks %v, %v", a, err)
	}
	b, _ := f.b.LockQueues(inst, "GID_tcp", "client-b", qs)
	if !slices.Equal(b, []QueueRef{{"t", 2}}) {
		t.Fatalf("b locked %v; queue 0 and 1 are a's, 'missing' does not exist", b)
	}
	// Renewal keeps a's lease alive past the original one.
	f.clock.Advance(LockLease - time.Second)
	if renewed, _ := f.b.LockQueues(inst, "GID_tcp", "client-a", qs[:1]); len(renewed) != 1 {
		t.Fatal("renewal failed")
	}
	f.clock.Advance(2 * time.Second)
	b, _ = f.b.LockQueues(inst, "GID_tcp", "client-b", qs[:2])
	if !slices.Equal(b, []QueueRef{{"t", 1}}) {
		t.Fatalf("after queue 1's lease expired b locked %v", b)
	}
	f.b.UnlockQueues(inst, "GID_tcp", "client-b", qs[:1]) // not b's: no effect
	f.b.ReleaseClient(inst, "client-a")                   // a disconnects
	if b, _ = f.b.LockQueues(inst, "GID_tcp", "client-b", qs[:1]); len(b) != 1 {
		t.Fatal("a's queue not free after it disconnected")
	}
	f.group("GID_http", HTTP)
	if _, err := f.b.LockQueues(inst, "GID_http", "c", qs[:1]); !errors.Is(err, ErrWrongProtocol) {
		t.Fatalf("lock by an HTTP group: %v", err)
	}
}

func TestGroupStatsForPopConsumers(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.group("GID_http", HTTP)
	for range 5 {
		f.publish("t", msg("x"))
	}
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 3})
	f.ack("t", "GID_http", got[0])
	stats, err := f.b.GroupStats(inst, "GID_http")
	if err != nil || len(stats.Topics) != 1 {
		t.Fatalf("GroupStats = %+v, %v", stats, err)
	}
	if s := stats.Topics[0]; s.Topic != "t" || s.Backlog != 4 || s.InFlight != 2 {
		t.Fatalf("topic stats %+v, want backlog 4 with 2 in flight", s)
	}
	if !stats.LastConsumeTime.Equal(f.clock.Now()) || stats.DeadLetters != 0 {
		t.Fatalf("stats %+v", stats)
	}
}

// TestLateDeliveryOutlivesTheLongestRetention pins the bug where a timer message,
// stored longer ago than any retention, lost its record to the log's reclaim right
// after it was delivered.
func TestLateDeliveryOutlivesTheLongestRetention(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	f.publish("t", Message{Body: []byte("in 100 h"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(100 * time.Hour)})
	f.clock.Advance(100 * time.Hour)
	waitFor(t, func() bool { _, max, _ := f.b.QueueOffsets(inst, "t", 0); return max == 1 })
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 16, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 || string(pr.Messages[0].Body) != "in 100 h" {
		t.Fatalf("delivered timer after reclaim: %+v, %v", pr, err)
	}
	// Once its own retention (from delivery) has passed, it goes.
	f.clock.Advance(DefaultRetention + time.Millisecond)
	if err := f.b.Reclaim(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.MessageByID(inst, pr.Messages[0].ID); !errors.Is(err, ErrMessageNotFound) {
		t.Fatalf("record kept after its retention: %v", err)
	}
}
