package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

func storedBodies(ms []StoredMessage) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Body)
	}
	return out
}

func TestMessagesBetweenReturnsTheRangeAcrossQueuesOldestFirst(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 3)
	start := f.clock.Now()
	for i, body := range []string{"a", "b", "c", "d", "e"} {
		f.clock.Advance(time.Second)
		f.publish("t", Message{Body: []byte(body), Queue: i % 3})
	}
	// a at +1s ... e at +5s.
	between := func(from, to time.Duration, max int) RangeResult {
		t.Helper()
		res, err := f.b.MessagesBetween(inst, "t", start.Add(from), start.Add(to), max)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := between(2*time.Second, 5*time.Second, 10); !slices.Equal(storedBodies(res.Messages), []string{"b", "c", "d"}) || res.Truncated {
		t.Fatalf("[+2s, +5s): %v truncated=%v", storedBodies(res.Messages), res.Truncated)
	}
	if res := between(0, time.Minute, 2); !slices.Equal(storedBodies(res.Messages), []string{"a", "b"}) || !res.Truncated {
		t.Fatalf("first 2 of all: %v truncated=%v", storedBodies(res.Messages), res.Truncated)
	}
	if res := between(6*time.Second, time.Minute, 10); len(res.Messages) != 0 || res.Truncated {
		t.Fatalf("after the last: %v", storedBodies(res.Messages))
	}
	res := between(0, time.Minute, 10)
	for _, m := range res.Messages {
		if m.Offset < 0 || m.Topic != "t" || m.ID == "" {
			t.Fatalf("message without its place: %+v", m)
		}
	}

	for _, bad := range []struct {
		from, to time.Duration
		max      int
	}{{time.Second, time.Second, 1}, {0, time.Minute, 0}, {0, time.Minute, MaxRangeMessages + 1}} {
		if _, err := f.b.MessagesBetween(inst, "t", start.Add(bad.from), start.Add(bad.to), bad.max); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, err := f.b.MessagesBetween(inst, "missing", start, start.Add(time.Minute), 1); !errors.Is(err, ErrTopicNotFound) {
		t.Errorf("missing topic: %v", err)
	}
}

func TestMessagesBetweenStopsAtTheReadBudget(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	start := f.clock.Now()
	big := make([]byte, MaxReadBytes/2+1)
	for range 3 {
		f.publish("t", Message{Body: big, Queue: AnyQueue})
	}
	res, err := f.b.MessagesBetween(inst, "t", start, start.Add(time.Minute), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Messages) != 1 || !res.Truncated {
		t.Fatalf("%d messages of over half the budget each, truncated=%v; want 1, true", len(res.Messages), res.Truncated)
	}
}

func deliveryOfGroup(t *testing.T, s MessageState, group string) GroupDelivery {
	t.Helper()
	for _, d := range s.Deliveries {
		if d.Group == group {
			return d
		}
	}
	t.Fatalf("no delivery state for %s in %+v", group, s.Deliveries)
	return GroupDelivery{}
}

func TestMessageStateFollowsEachGroup(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.group("GID_tcp", TCP)
	f.group("GID_idle", HTTP)
	first := f.publish("t", msg("first"))
	second := f.publish("t", msg("second"))
	state := func(id string) MessageState {
		t.Helper()
		s, err := f.b.MessageState(inst, id)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// No group consumed the topic yet.
	if s := state(first.ID); len(s.Deliveries) != 0 || s.Message.Offset != 0 || string(s.Message.Body) != "first" {
		t.Fatalf("before consumption: %+v", s)
	}

	ds := f.pop("t", PopRequest{Group: "GID_http", Max: 1, Invisibility: time.Minute})
	if len(ds) != 1 || string(ds[0].Body) != "first" {
		t.Fatalf("popped %v", bodies(ds))
	}
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 1); err != nil {
		t.Fatal(err)
	}
	s := state(first.ID)
	if len(s.Deliveries) != 2 {
		t.Fatalf("want the two consuming groups, got %+v", s.Deliveries)
	}
	if d := deliveryOfGroup(t, s, "GID_http"); d.State != DeliveryInFlight || d.ConsumedTimes != 1 ||
		!d.NextVisibleTime.Equal(f.clock.Now().Add(time.Minute).Truncate(time.Millisecond)) {
		t.Fatalf("popped: %+v", d)
	}
	if d := deliveryOfGroup(t, s, "GID_tcp"); d.State != DeliveryDone {
		t.Fatalf("committed past: %+v", d)
	}
	s = state(second.ID)
	if s.Message.Offset != 1 {
		t.Fatalf("second at offset %d", s.Message.Offset)
	}
	for _, g := range []string{"GID_http", "GID_tcp"} {
		if d := deliveryOfGroup(t, s, g); d.State != DeliveryPending {
			t.Fatalf("%s before it reached the second: %+v", g, d)
		}
	}
	f.ack("t", "GID_http", ds...)
	if d := deliveryOfGroup(t, state(first.ID), "GID_http"); d.State != DeliveryDone {
		t.Fatalf("acknowledged: %+v", d)
	}

	// A timer not yet due is no group's yet.
	timer := f.publish("t", Message{Body: []byte("later"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(time.Hour)})
	s = state(timer.ID)
	if s.Message.Offset != -1 {
		t.Fatalf("pending timer at offset %d", s.Message.Offset)
	}
	for _, d := range s.Deliveries {
		if d.State != DeliveryNotDue {
			t.Fatalf("pending timer: %+v", d)
		}
	}
	// Once due it enters the queue late and is found there.
	f.clock.Advance(time.Hour + time.Second)
	waitFor(t, func() bool { s := state(timer.ID); return s.Message.Offset == 2 })
	if d := deliveryOfGroup(t, state(timer.ID), "GID_tcp"); d.State != DeliveryPending {
		t.Fatalf("due timer: %+v", d)
	}

	if _, err := f.b.MessageState(inst, "nonsense"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad id: %v", err)
	}
	if _, err := f.b.MessageState("MQ_INST_other", first.ID); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("another instance's message: %v", err)
	}
}

func TestResetOffsetsOfAPopGroup(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.group("GID_http", HTTP)
	for _, body := range []string{"a", "b"} {
		f.publish("t", msg(body))
	}
	f.clock.Advance(time.Minute)
	middle := f.clock.Now()
	for _, body := range []string{"c", "d"} {
		f.publish("t", msg(body))
	}
	all := f.pop("t", PopRequest{Group: "GID_http", Max: 16, Invisibility: time.Hour})
	if len(all) != 4 {
		t.Fatalf("popped %v", bodies(all))
	}
	f.ack("t", "GID_http", all[0])

	// Back to the middle: c and d come again, in flight or not; old handles no
	// longer acknowledge anything.
	offs, err := f.b.ResetOffsets(inst, "GID_http", "t", middle)
	if err != nil || len(offs) != 2 || offs[0]+offs[1] != 2 {
		t.Fatalf("ResetOffsets = %v, %v", offs, err)
	}
	if errs := f.ack("t", "GID_http", all[1:]...); slices.ContainsFunc(errs, func(e error) bool { return e == nil }) {
		t.Fatalf("an old handle acknowledged after the reset: %v", errs)
	}
	again := f.popNow("t", "GID_http")
	got := bodies(again)
	slices.Sort(got)
	if !slices.Equal(got, []string{"c", "d"}) || again[0].ConsumedTimes != 1 {
		t.Fatalf("after reset to the middle popped %v", got)
	}
	if s, _ := f.b.GroupStats(inst, "GID_http"); s.Topics[0].InFlight != 2 || s.Topics[0].Backlog != 2 {
		t.Fatalf("stats after reset: %+v", s.Topics)
	}

	// Forward past everything: nothing left, nothing in flight; and that holds
	// across a restart.
	if _, err := f.b.ResetOffsets(inst, "GID_http", "t", f.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("after reset to the end popped %v", bodies(got))
	}
	f.reopen()
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("after reset and restart popped %v", bodies(got))
	}
	if _, err := f.b.ResetOffsets(inst, "GID_http", DLQTopic("GID_http"), middle); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("reset on a system topic: %v", err)
	}
}

func TestResetOffsetsOfAPullGroupMovesItsConsumers(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	for _, body := range []string{"a", "b", "c"} {
		f.publish("t", msg(body))
	}
	ctx := context.Background()
	pull := func(offset int64) PullResult {
		t.Helper()
		res, err := f.b.Pull(ctx, inst, "GID_tcp", "t", 0, offset, 32, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// A consumer read everything and committed its position.
	if res := pull(0); len(res.Messages) != 3 {
		t.Fatalf("pulled %d", len(res.Messages))
	}
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 3); err != nil {
		t.Fatal(err)
	}

	// Reset to the start.
	if offs, err := f.b.ResetOffsets(inst, "GID_tcp", "t", time.Time{}); err != nil || !slices.Equal(offs, []int64{0}) {
		t.Fatalf("ResetOffsets = %v, %v", offs, err)
	}
	// The consumer still commits its old position: ignored until it pulls.
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 3); err != nil {
		t.Fatal(err)
	}
	if off, found, err := f.b.ConsumerOffset(inst, "GID_tcp", "t", 0); err != nil || !found || off != 0 {
		t.Fatalf("committed offset after reset = %d, %v, %v; want 0", off, found, err)
	}
	// Its next pull from the old position is moved to the new one, once.
	if res := pull(3); len(res.Messages) != 0 || res.NextOffset != 0 {
		t.Fatalf("first pull after reset: %d messages, next %d; want none, 0", len(res.Messages), res.NextOffset)
	}
	if res := pull(0); len(res.Messages) != 3 {
		t.Fatalf("pull from the reset offset: %d messages", len(res.Messages))
	}
	if res := pull(3); res.NextOffset != 3 {
		t.Fatalf("the reset applied twice: next %d", res.NextOffset)
	}
	// Commits count again.
	if err := f.b.CommitOffset(inst, "GID_tcp", "t", 0, 2); err != nil {
		t.Fatal(err)
	}
	if off, _, _ := f.b.ConsumerOffset(inst, "GID_tcp", "t", 0); off != 2 {
		t.Fatalf("commit after the consumer moved: %d", off)
	}
}

// TestResetRacesConsumption runs resets against pops, acks and commits: the lock
// order holds (no deadlock) and no state is corrupted (run under -race).
func TestResetRacesConsumption(t *testing.T) {
	b := openMemBroker(t)
	if _, err := b.EnsureTopic(inst, TopicConfig{Name: "t", Queues: 2, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []GroupConfig{{ID: "GID_http", Protocol: HTTP, Owner: "o", MaxRedeliveries: 1}, {ID: "GID_tcp", Protocol: TCP, Owner: "o"}} {
		if _, err := b.EnsureGroup(inst, g); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var lastID atomic.Value // of string
	lastID.Store("")
	runConcurrently(t, b, 200, 30*time.Second,
		func(i int) error {
			r, err := b.Publish(ctx, inst, "t", msg("m"))
			if err == nil {
				lastID.Store(r.ID)
			}
			return err
		},
		func(i int) error {
			ds, err := b.Pop(ctx, inst, "t", PopRequest{Group: "GID_http", Max: 4, Invisibility: time.Millisecond})
			if err != nil || len(ds) == 0 || i%2 == 0 {
				return err
			}
			_, err = b.Ack(inst, "t", "GID_http", []string{ds[0].Handle})
			return err
		},
		func(i int) error {
			_, err := b.Pull(ctx, inst, "GID_tcp", "t", i%2, int64(i), 8, Filter{}, 0)
			if err == nil {
				err = b.CommitOffset(inst, "GID_tcp", "t", i%2, 0)
			}
			return err
		},
		func(i int) error {
			for _, g := range []string{"GID_http", "GID_tcp"} {
				if _, err := b.ResetOffsets(inst, g, "t", time.Time{}); err != nil {
					return err
				}
			}
			_, err := b.GroupStats(inst, "GID_http")
			return err
		},
		func(i int) error {
			if id := lastID.Load().(string); id != "" {
				_, err := b.MessageState(inst, id)
				return err
			}
			return nil
		},
	)
}

func TestMessagesByKeyStopsAtTheReadBudget(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	big := make([]byte, MaxReadBytes/2+1)
	for range 3 {
		f.publish("t", Message{Body: big, Keys: []string{"k"}, Queue: AnyQueue})
	}
	f.publish("t", Message{Body: []byte("small"), Keys: []string{"other"}, Queue: AnyQueue})
	if ms, err := f.b.MessagesByKey(context.Background(), inst, "t", KeyQuery{Key: "k", Max: 10}); err != nil || len(ms) != 1 {
		t.Fatalf("MessagesByKey of three bodies over half the budget = %d, %v; want 1", len(ms), err)
	}
	if ms, err := f.b.MessagesByKey(context.Background(), inst, "t", KeyQuery{Key: "other", Max: 10}); err != nil || len(ms) != 1 || string(ms[0].Body) != "small" {
		t.Fatalf("MessagesByKey(other) = %v, %v", storedBodies(ms), err)
	}
}

// TestMessagesByKeyInATimeRange: the range is applied while the key's entries are
// scanned, not to the first Max of them, so a range after many older messages
// with the key finds its own; entries of older stores, without store times, are
// found the same way.
func TestMessagesByKeyInATimeRange(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 4)
	t0 := f.clock.Now()
	for i := range 200 {
		f.publish("t", Message{Body: fmt.Appendf(nil, "%d", i), Keys: []string{"k", fmt.Sprint("other", i%3)}, Queue: AnyQueue})
		f.clock.Advance(time.Second)
	}
	query := func(from, to time.Duration, max int) []string {
		t.Helper()
		q := KeyQuery{Key: "k", From: t0.Add(from), To: t0.Add(to), Max: max}
		ms, err := f.b.MessagesByKey(context.Background(), inst, "t", q)
		if err != nil {
			t.Fatal(err)
		}
		return storedBodies(ms)
	}
	check := func(store string) {
		t.Helper()
		if got, want := query(150*time.Second, 159*time.Second, 64), seqStrings(150, 160); !slices.Equal(got, want) {
			t.Errorf("%s: seconds 150 to 159 = %v, want %v", store, got, want)
		}
		if got, want := query(150*time.Second, 190*time.Second, 5), seqStrings(150, 155); !slices.Equal(got, want) {
			t.Errorf("%s: five from second 150 = %v, want %v", store, got, want)
		}
		newest := func(from, to time.Duration, max int) []string {
			t.Helper()
			q := KeyQuery{Key: "k", From: t0.Add(from), Max: max, NewestFirst: true}
			if to != 0 {
				q.To = t0.Add(to) // else no end
			}
			ms, err := f.b.MessagesByKey(context.Background(), inst, "t", q)
			if err != nil {
				t.Fatal(err)
			}
			return storedBodies(ms)
		}
		if got, want := newest(150*time.Second, 159*time.Second, 3), []string{"159", "158", "157"}; !slices.Equal(got, want) {
			t.Errorf("%s: the newest three of seconds 150 to 159 = %v, want %v", store, got, want)
		}
		if got, want := newest(198*time.Second, 0, 64), []string{"199", "198"}; !slices.Equal(got, want) {
			t.Errorf("%s: the newest from second 198, no end = %v, want %v", store, got, want)
		}
		if got := newest(-time.Hour, -time.Minute, 64); len(got) != 0 {
			t.Errorf("%s: newest before the first = %v, want none", store, got)
		}
		if got := query(300*time.Second, 400*time.Second, 64); len(got) != 0 {
			t.Errorf("%s: after the last = %v, want none", store, got)
		}
		if got := query(-time.Hour, -time.Minute, 64); len(got) != 0 {
			t.Errorf("%s: before the first = %v, want none", store, got)
		}
		if got, want := query(-time.Hour, 2*time.Second, 64), seqStrings(0, 3); !slices.Equal(got, want) {
			t.Errorf("%s: up to second 2 = %v, want %v", store, got, want)
		}
	}
	check("store times in the index")

	// An older store's entries hold no time: rewrite them so.
	tp, err := f.b.topicLocked(inst, "t")
	if err != nil {
		t.Fatal(err)
	}
	prefix := keyIndexKey(tp.id, "k", 0)
	prefix = prefix[:len(prefix)-8]
	it, err := f.b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		t.Fatal(err)
	}
	w := f.b.store.newBatch()
	n := 0
	for ok := it.first(); ok; ok = it.next() {
		w.set(slices.Clone(it.key()), nil)
		n++
	}
	_ = it.close()
	if n != 200 {
		t.Fatalf("%d entries for the key, want 200", n)
	}
	if err := f.b.store.commit(w); err != nil {
		t.Fatal(err)
	}
	check("no store times in the index")
}

func seqStrings(from, to int) []string {
	var s []string
	for i := from; i < to; i++ {
		s = append(s, fmt.Sprint(i))
	}
	return s
}
