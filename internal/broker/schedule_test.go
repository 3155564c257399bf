package broker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// popNow pops what is ready without waiting.
func (f *fixture) popNow(topic, group string) []Delivery {
	f.t.Helper()
	return f.pop(topic, PopRequest{Group: group, Max: 16})
}

// eventually retries pop until it returns something or 10 s of real time pass: the
// timer loop delivers asynchronously after the fake clock moves.
func (f *fixture) eventuallyPop(topic, group string) []Delivery {
	f.t.Helper()
	var out []Delivery
	waitFor(f.t, func() bool { out = f.popNow(topic, group); return len(out) > 0 })
	return out
}

func TestTimerMessageIsNotDeliveredBeforeItsTime(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 2)
	f.group("GID_http", HTTP)
	due := f.clock.Now().Add(10 * time.Second)
	res := f.publish("t", Message{Body: []byte("later"), Queue: AnyQueue, DeliverAt: due})
	if res.Offset != -1 {
		t.Fatalf("a timer message got offset %d before it was due", res.Offset)
	}
	f.publish("t", msg("now"))
	if b := bodies(f.popNow("t", "GID_http")); !slices.Equal(b, []string{"now"}) {
		t.Fatalf("before its time popped %v", b)
	}
	f.clock.Advance(9999 * time.Millisecond)
	// Give the timer loop every chance to misbehave, then check nothing came.
	waitFor(t, func() bool { return f.clock.Timers() >= 1 })
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("1 ms early popped %v", bodies(got))
	}
	f.clock.Advance(time.Millisecond)
	got := f.eventuallyPop("t", "GID_http")
	if b := bodies(got); !slices.Equal(b, []string{"later"}) || got[0].StoreTime.After(due) {
		t.Fatalf("at its time popped %v", b)
	}
}

func TestTimerSurvivesRestart(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.publish("t", Message{Body: []byte("scheduled"), Queue: AnyQueue, DeliverAt: f.clock.Now().Add(time.Hour)})
	f.reopen()
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("popped %v an hour early", bodies(got))
	}
	f.clock.Advance(time.Hour)
	if b := bodies(f.eventuallyPop("t", "GID_http")); !slices.Equal(b, []string{"scheduled"}) {
		t.Fatalf("after restart popped %v", b)
	}
}

func TestDelayLevel(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.publish("t", Message{Body: []byte("level 3"), Queue: AnyQueue, DelayLevel: 3}) // 10 s
	f.publish("t", Message{Body: []byte("level 99"), Queue: AnyQueue, DelayLevel: 99})
	waitFor(t, func() bool { return f.clock.Timers() >= 1 })
	f.clock.Advance(10 * time.Second)
	first := f.eventuallyPop("t", "GID_http")
	if b := bodies(first); !slices.Equal(b, []string{"level 3"}) {
		t.Fatalf("after 10 s popped %v", b)
	}
	f.ack("t", "GID_http", first...)
	f.clock.Advance(2 * time.Hour) // levels above 18 clamp to 2 h
	if b := bodies(f.eventuallyPop("t", "GID_http")); !slices.Equal(b, []string{"level 99"}) {
		t.Fatalf("after 2 h popped %v", b)
	}
}

func TestTransactionCommitAndRollbackByPublishHandle(t *testing.T) {
	f := newFixture(t)
	f.topic("txn", Transactional, 2)
	f.group("GID_http", HTTP)
	commit := f.publish("txn", Message{Body: []byte("commit me"), Queue: AnyQueue, Transactional: true, CheckImmunity: 30 * time.Second})
	rollback := f.publish("txn", Message{Body: []byte("roll me back"), Queue: AnyQueue, Transactional: true})
	if commit.TxnHandle == "" || commit.Offset != -1 {
		t.Fatalf("half publish result %+v", commit)
	}
	if got := f.popNow("txn", "GID_http"); len(got) != 0 {
		t.Fatalf("half messages visible before commit: %v", bodies(got))
	}
	if err := f.b.EndTransaction(inst, "txn", commit.TxnHandle, true); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if err := f.b.EndTransaction(inst, "txn", rollback.TxnHandle, false); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	// Exactly once: a second commit finds nothing to commit.
	if err := f.b.EndTransaction(inst, "txn", commit.TxnHandle, true); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("second commit: %v", err)
	}
	f.reopen()
	if b := bodies(f.popNow("txn", "GID_http")); !slices.Equal(b, []string{"commit me"}) {
		t.Fatalf("after commit, rollback and restart popped %v", b)
	}
	// Nothing is left to check back.
	f.clock.Advance(time.Hour)
	if got, _ := f.b.PopHalf(context.Background(), inst, "txn", "GID_http", 16, 0); len(got) != 0 {
		t.Fatalf("resolved messages offered for check-back: %v", bodies(got))
	}
}

func TestTransactionCheckBack(t *testing.T) {
	f := newFixture(t)
	f.topic("txn", Transactional, 1)
	f.group("GID_http", HTTP)
	ctx := context.Background()
	res := f.publish("txn", Message{Body: []byte("unresolved"), Queue: AnyQueue, Transactional: true, CheckImmunity: 10 * time.Second})

	if got, _ := f.b.PopHalf(ctx, inst, "txn", "GID_http", 16, 0); len(got) != 0 {
		t.Fatal("check-back offered before the immunity time")
	}
	f.clock.Advance(10 * time.Second)
	// The publish handle expired with the immunity time.
	if err := f.b.EndTransaction(inst, "txn", res.TxnHandle, true); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("commit with the publish handle after immunity: %v", err)
	}
	first, err := f.b.PopHalf(ctx, inst, "txn", "GID_http", 16, 0)
	if err != nil || len(first) != 1 || first[0].ConsumedTimes != 1 || string(first[0].Body) != "unresolved" {
		t.Fatalf("first check-back: %+v, %v", first, err)
	}
	// Not again until about 10 s later; then with a new handle and count.
	if again, _ := f.b.PopHalf(ctx, inst, "txn", "GID_http", 16, 0); len(again) != 0 {
		t.Fatal("check-back offered twice in one period")
	}
	f.clock.Advance(CheckInterval)
	second, err := f.b.PopHalf(ctx, inst, "txn", "GID_http", 16, 0)
	if err != nil || len(second) != 1 || second[0].ConsumedTimes != 2 || second[0].Handle == first[0].Handle {
		t.Fatalf("second check-back: %+v, %v", second, err)
	}
	if err := f.b.EndTransaction(inst, "txn", first[0].Handle, true); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("commit with the first check's handle: %v", err)
	}
	if err := f.b.EndTransaction(inst, "txn", second[0].Handle, true); err != nil {
		t.Fatalf("commit from check-back: %v", err)
	}
	if b := bodies(f.popNow("txn", "GID_http")); !slices.Equal(b, []string{"unresolved"}) {
		t.Fatalf("after commit popped %v", b)
	}
}

func TestUnresolvedTransactionRollsBackAfterADay(t *testing.T) {
	f := newFixture(t)
	f.topic("txn", Transactional, 1)
	f.group("GID_http", HTTP)
	f.publish("txn", Message{Body: []byte("forgotten"), Queue: AnyQueue, Transactional: true})
	f.clock.Advance(TransactionTimeout)
	if got, _ := f.b.PopHalf(context.Background(), inst, "txn", "GID_http", 16, 0); len(got) != 0 {
		t.Fatalf("offered after the deadline: %v", bodies(got))
	}
	f.reopen()
	if got, _ := f.b.PopHalf(context.Background(), inst, "txn", "GID_http", 16, 0); len(got) != 0 {
		t.Fatal("rolled-back message came back after restart")
	}
	if got := f.popNow("txn", "GID_http"); len(got) != 0 {
		t.Fatal("rolled-back message delivered")
	}
}

func TestTCPTransactionCheckGoesToTheProducerGroup(t *testing.T) {
	f := newFixture(t)
	f.topic("txn", Transactional, 1)
	f.group("GID_tcp", TCP)
	res := f.publish("txn", Message{Body: []byte("tcp half"), Queue: AnyQueue, Transactional: true, ProducerGroup: "PG_orders"})
	f.clock.Advance(DefaultCheckImmunity)
	if got, _ := f.b.TakeTransactionChecks(inst, "PG_other", 16); len(got) != 0 {
		t.Fatal("check sent to another producer group")
	}
	got, err := f.b.TakeTransactionChecks(inst, "PG_orders", 16)
	if err != nil || len(got) != 1 || got[0].Seq != res.Seq {
		t.Fatalf("checks: %+v, %v", got, err)
	}
	if err := f.b.ResolveTransaction(inst, res.Seq, "PG_other", true); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("resolve by another group: %v", err)
	}
	if err := f.b.ResolveTransaction(inst, res.Seq, "PG_orders", true); err != nil {
		t.Fatal(err)
	}
	if err := f.b.ResolveTransaction(inst, res.Seq, "PG_orders", true); err != nil {
		t.Fatalf("a repeated decision must be harmless: %v", err)
	}
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "txn", 0, 0, 16, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 || pr.Messages[0].Seq != res.Seq {
		t.Fatalf("pull after commit: %+v, %v", pr, err)
	}
}
