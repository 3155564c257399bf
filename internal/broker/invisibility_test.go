package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestChangeInvisibilityExtendsAndHandsBack(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	f.publish("t", msg("m"))
	got := f.pop("t", PopRequest{Group: "GID_http", Max: 1, Invisibility: 20 * time.Second})
	if len(got) != 1 {
		t.Fatalf("popped %d", len(got))
	}
	first := got[0]

	// Longer: not delivered again when the first window ends; the new handle takes
	// over from the old.
	h, err := f.b.ChangeInvisibility(inst, "t", "GID_http", first.Handle, time.Minute)
	if err != nil || h == "" || h == first.Handle {
		t.Fatalf("ChangeInvisibility = %q, %v", h, err)
	}
	if errs := f.ack("t", "GID_http", first); !errors.Is(errs[0], ErrInvalidHandle) {
		t.Fatalf("ack with the superseded handle: %v", errs)
	}
	if _, err := f.b.ChangeInvisibility(inst, "t", "GID_http", first.Handle, time.Minute); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("change with the superseded handle: %v", err)
	}
	f.clock.Advance(30 * time.Second)
	if again := f.popNow("t", "GID_http"); len(again) != 0 {
		t.Fatalf("delivered again inside the extended window: %v", bodies(again))
	}

	// Zero: delivered again at once, as another delivery with a new handle.
	h2, err := f.b.ChangeInvisibility(inst, "t", "GID_http", h, 0)
	if err != nil {
		t.Fatal(err)
	}
	if errs, _ := f.b.Ack(inst, "t", "GID_http", []string{h2}); !errors.Is(errs[0], ErrHandleExpired) {
		t.Fatalf("ack of a handle handed back: %v", errs)
	}
	back := f.popNow("t", "GID_http")
	if !slices.Equal(bodies(back), []string{"m"}) || back[0].ConsumedTimes != 2 || back[0].Handle == h {
		t.Fatalf("after a hand-back popped %+v", back)
	}
	if errs := f.ack("t", "GID_http", back[0]); errs[0] != nil {
		t.Fatalf("ack: %v", errs)
	}
	if _, err := f.b.ChangeInvisibility(inst, "t", "GID_http", back[0].Handle, time.Minute); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("change after the ack: %v", err)
	}
}

func TestChangeInvisibilityRefusesWhatIsNotACurrentHandle(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.topic("u", Normal, 1)
	f.group("GID_http", HTTP)
	f.group("GID_tcp", TCP)
	f.publish("t", msg("m"))
	d := f.pop("t", PopRequest{Group: "GID_http", Max: 1, Invisibility: 20 * time.Second})[0]
	for _, c := range []struct {
		topic, group, handle string
		d                    time.Duration
		want                 error
	}{
		{"t", "GID_http", "garbage", time.Minute, ErrInvalidHandle},
		{"u", "GID_http", d.Handle, time.Minute, ErrInvalidHandle}, // another topic's
		{"t", "GID_tcp", d.Handle, time.Minute, ErrWrongProtocol},
		{"t", "GID_http", d.Handle, -time.Second, ErrInvalidArgument},
		{"t", "GID_http", d.Handle, MaxInvisibility + time.Second, ErrInvalidArgument},
	} {
		if _, err := f.b.ChangeInvisibility(inst, c.topic, c.group, c.handle, c.d); !errors.Is(err, c.want) {
			t.Errorf("ChangeInvisibility(%s, %s, %.10s, %v) = %v, want %v", c.topic, c.group, c.handle, c.d, err, c.want)
		}
	}
	f.clock.Advance(20 * time.Second)
	if _, err := f.b.ChangeInvisibility(inst, "t", "GID_http", d.Handle, time.Minute); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("change past the window: %v", err)
	}
}

func TestHandingBackPastMaxRedeliveriesDeadLetters(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: "GID_http", Protocol: HTTP, MaxRedeliveries: 1, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	f.publish("t", msg("poison"))
	for want := 1; want <= 2; want++ {
		got := f.popNow("t", "GID_http")
		if len(got) != 1 || got[0].ConsumedTimes != want {
			t.Fatalf("delivery %d: %+v", want, got)
		}
		if _, err := f.b.ChangeInvisibility(inst, "t", "GID_http", got[0].Handle, 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.popNow("t", "GID_http"); len(got) != 0 {
		t.Fatalf("delivered past the limit: %v", bodies(got))
	}
	if dead, _, err := f.b.DeadLetters(inst, "GID_http", 0, 16); err != nil || len(dead) != 1 || string(dead[0].Body) != "poison" {
		t.Fatalf("DeadLetters = %+v, %v", dead, err)
	}
}

func TestDeadLetterDelivery(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	res := f.publish("t", Message{Body: []byte("given up"), Tag: "T", Queue: AnyQueue})
	f.publish("t", msg("next"))
	got := f.popNow("t", "GID_http")
	if len(got) != 2 {
		t.Fatalf("popped %d", len(got))
	}
	ctx := context.Background()
	if err := f.b.DeadLetterDelivery(ctx, inst, "t", "GID_http", got[0].Handle); err != nil {
		t.Fatal(err)
	}
	if err := f.b.DeadLetterDelivery(ctx, inst, "t", "GID_http", got[0].Handle); !errors.Is(err, ErrHandleExpired) {
		t.Fatalf("second forward: %v", err)
	}
	if errs := f.ack("t", "GID_http", got[0]); !errors.Is(errs[0], ErrHandleExpired) {
		t.Fatalf("ack after the forward: %v", errs)
	}
	dead, _, err := f.b.DeadLetters(inst, "GID_http", 0, 16)
	if err != nil || len(dead) != 1 || string(dead[0].Body) != "given up" || dead[0].Tag != "T" ||
		dead[0].Properties[PropertyOriginMessageID] != res.ID || dead[0].ReconsumeTimes != 1 {
		t.Fatalf("DeadLetters = %+v, %v", dead, err)
	}
	// Never delivered again, while the other message comes back as usual.
	f.clock.Advance(DefaultInvisibility)
	if back := f.popNow("t", "GID_http"); !slices.Equal(bodies(back), []string{"next"}) {
		t.Fatalf("after the window popped %v", bodies(back))
	}
	if err := f.b.DeadLetterDelivery(ctx, inst, "t", "GID_http", "garbage"); !errors.Is(err, ErrInvalidHandle) {
		t.Fatalf("forward of garbage: %v", err)
	}
}

// A long poll waiting behind an ordered queue's batch in flight takes the next
// messages as soon as the batch is acknowledged, or dead-lettered, not at its
// deadline: push consumers keep such polls open on every queue.
func TestOrderedLongPollWakesWhenTheBatchIsDone(t *testing.T) {
	f := newFixture(t)
	f.topic("orders", Ordered, 1)
	f.group("GID_http", HTTP)
	for i := range 4 {
		f.publish("orders", Message{Body: []byte(fmt.Sprint(i)), ShardingKey: "k", Queue: AnyQueue})
	}
	for _, done := range []func(Delivery){
		func(d Delivery) { f.ack("orders", "GID_http", d) },
		func(d Delivery) {
			if err := f.b.DeadLetterDelivery(context.Background(), inst, "orders", "GID_http", d.Handle); err != nil {
				t.Fatal(err)
			}
		},
	} {
		head := f.pop("orders", PopRequest{Group: "GID_http", Max: 1, Orderly: true})
		if len(head) != 1 {
			t.Fatalf("popped %d", len(head))
		}
		got := make(chan []Delivery, 1)
		go func() {
			// The fake clock never reaches the deadline: only a wake-up ends it.
			out, err := f.b.Pop(context.Background(), inst, "orders", PopRequest{Group: "GID_http", Max: 1, Orderly: true, Wait: 30 * time.Second})
			if err != nil {
				t.Error(err)
			}
			got <- out
		}()
		time.Sleep(50 * time.Millisecond) // let it wait
		done(head[0])
		select {
		case next := <-got:
			if len(next) != 1 {
				t.Fatalf("after %s: popped %v", head[0].Body, bodies(next))
			}
			f.ack("orders", "GID_http", next...)
		case <-time.After(5 * time.Second):
			t.Fatalf("the waiting poll was not woken after %s was done", head[0].Body)
		}
	}
}
