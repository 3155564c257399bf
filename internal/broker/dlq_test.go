package broker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestHTTPMessagePastMaxRedeliveriesGoesToDeadLetters(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: "GID_http", Protocol: HTTP, MaxRedeliveries: 2, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	res := f.publish("t", Message{Body: []byte("poison"), Tag: "T", Keys: []string{"k"}, Queue: AnyQueue})
	f.publish("t", msg("fine"))
	for want := 1; want <= 3; want++ { // one delivery and two redeliveries
		got := f.popNow("t", "GID_http")
		var poison *Delivery
		for i := range got {
			if string(got[i].Body) == "poison" {
				poison = &got[i]
			} else {
				f.ack("t", "GID_http", got[i])
			}
		}
		if poison == nil || poison.ConsumedTimes != want {
			t.Fatalf("delivery %d: %+v", want, got)
		}
		f.clock.Advance(DefaultInvisibility)
	}
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("delivered past the limit: %v (times %d)", bodies(got), got[0].ConsumedTimes)
	}
	dead, next, err := f.b.DeadLetters(inst, "GID_http", 0, 16)
	if err != nil || len(dead) != 1 || next != 1 {
		t.Fatalf("DeadLetters = %+v, %d, %v", dead, next, err)
	}
	d := dead[0]
	if string(d.Body) != "poison" || d.Tag != "T" || d.Properties[PropertyRetryTopic] != "t" ||
		d.Properties[PropertyOriginMessageID] != res.ID || d.ReconsumeTimes != 3 {
		t.Fatalf("dead letter %+v", d)
	}
	if info, _ := f.b.Topic(inst, DLQTopic("GID_http")); !info.System || info.Messages != 1 {
		t.Fatalf("DLQ topic %+v", info)
	}

	// Re-driven, it is a new message on its topic, and leaves the dead letters.
	n, err := f.b.Redrive(context.Background(), inst, "GID_http", []string{d.ID, "00000000000000000000000000000000"})
	if err != nil || n != 1 {
		t.Fatalf("Redrive = %d, %v", n, err)
	}
	back := f.popNow("t", "GID_http")
	if b := bodies(back); !slices.Equal(b, []string{"poison"}) || back[0].ConsumedTimes != 1 {
		t.Fatalf("after re-drive popped %v", back)
	}
	if dead, _, _ := f.b.DeadLetters(inst, "GID_http", 0, 16); len(dead) != 0 {
		t.Fatalf("re-driven message still among the dead letters: %v", dead)
	}
}

func TestSystemTopicsAreNotPublishableAndGoWithTheGroup(t *testing.T) {
	f := newFixture(t)
	f.group("GID_tcp", TCP)
	if _, err := f.b.Publish(context.Background(), inst, RetryTopic("GID_tcp"), msg("x")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("publish to a retry topic: %v", err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: DLQTopic("x"), Owner: "o"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("declaring a DLQ name: %v", err)
	}
	if err := f.b.DeleteGroup(inst, "GID_tcp", "o"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{RetryTopic("GID_tcp"), DLQTopic("GID_tcp")} {
		if _, err := f.b.Topic(inst, name); !errors.Is(err, ErrTopicNotFound) {
			t.Fatalf("%s outlived its group: %v", name, err)
		}
	}
}

func TestTCPSendBackRetriesWithDelayThenDeadLetters(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	ctx := context.Background()
	res := f.publish("t", msg("retry me"))

	// Level 0 means 3 + reconsume times: level 3 is 10 s.
	if err := f.b.SendBack(ctx, inst, "GID_tcp", res.Seq, 0, 2); err != nil {
		t.Fatal(err)
	}
	pullRetry := func() []StoredMessage {
		pr, err := f.b.Pull(ctx, inst, "GID_tcp", RetryTopic("GID_tcp"), 0, 0, 16, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return pr.Messages
	}
	if got := pullRetry(); len(got) != 0 {
		t.Fatal("retry delivered before its delay")
	}
	waitFor(t, func() bool { return f.clock.Timers() >= 1 })
	f.clock.Advance(10 * time.Second)
	var retried []StoredMessage
	waitFor(t, func() bool { retried = pullRetry(); return len(retried) == 1 })
	r := retried[0]
	if r.ReconsumeTimes != 1 || r.Properties[PropertyRetryTopic] != "t" || r.Properties[PropertyOriginMessageID] != res.ID {
		t.Fatalf("retry %+v", r)
	}
	// Second failure: retried again; third: past max 2, dead-lettered.
	if err := f.b.SendBack(ctx, inst, "GID_tcp", r.Seq, 0, 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.clock.Timers() >= 1 })
	f.clock.Advance(30 * time.Second) // level 4
	waitFor(t, func() bool { retried = pullRetry(); return len(retried) == 2 })
	if err := f.b.SendBack(ctx, inst, "GID_tcp", retried[1].Seq, 0, 2); err != nil {
		t.Fatal(err)
	}
	dead, _, err := f.b.DeadLetters(inst, "GID_tcp", 0, 16)
	if err != nil || len(dead) != 1 || dead[0].ReconsumeTimes != 3 || dead[0].Properties[PropertyOriginMessageID] != res.ID {
		t.Fatalf("dead letters %+v, %v", dead, err)
	}
	// A negative level (orderly consumers past their limit) goes straight there.
	if err := f.b.SendBack(ctx, inst, "GID_tcp", res.Seq, -1, 0); err != nil {
		t.Fatal(err)
	}
	if dead, _, _ := f.b.DeadLetters(inst, "GID_tcp", 0, 16); len(dead) != 2 {
		t.Fatalf("after delay level -1: %d dead letters", len(dead))
	}
	if err := f.b.SendBack(ctx, "MQ_INST_other", "GID_tcp", res.Seq, 0, 0); err == nil {
		t.Fatal("send-back through another instance")
	}
}
