package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// What one client can make the broker hold is bounded: an answer's bytes, a
// batch, a group's pop state.

func TestReadsAreBoundedInBytes(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	f.group("GID_http", HTTP)
	big := strings.Repeat("x", 700<<10)
	for range 3 {
		f.publish("t", Message{Body: []byte(big), Queue: AnyQueue})
	}
	huge := strings.Repeat("y", 3<<20)
	f.publish("t", Message{Body: []byte(huge), Queue: AnyQueue})
	pr, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 0, 32, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 || pr.NextOffset != 1 {
		t.Fatalf("pull of 700 KiB messages: %d messages, next %d, %v; want 1 under the %d-byte bound", len(pr.Messages), pr.NextOffset, err, MaxReadBytes)
	}
	// A message over the bound still goes, alone.
	pr, err = f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, 3, 32, Filter{}, 0)
	if err != nil || len(pr.Messages) != 1 || len(pr.Messages[0].Body) != len(huge) {
		t.Fatalf("pull of a 3 MiB message: %d messages, %v", len(pr.Messages), err)
	}
	total := 0
	for range 10 {
		ds := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
		if len(ds) > 1 {
			t.Fatalf("a pop returned %d messages of 700 KiB or more", len(ds))
		}
		total += len(ds)
	}
	if total != 4 {
		t.Fatalf("popped %d of 4", total)
	}
}

func TestBatchPublishIsBounded(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	many := make([]Message, MaxBatchMessages+1)
	for i := range many {
		many[i] = msg("x")
	}
	if _, err := f.b.PublishBatch(context.Background(), inst, "t", many); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("batch of %d messages: %v", len(many), err)
	}
	large := []Message{{Body: make([]byte, 3<<20), Queue: AnyQueue}, {Body: make([]byte, 2<<20), Queue: AnyQueue}}
	if _, err := f.b.PublishBatch(context.Background(), inst, "t", large); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("batch of 5 MiB: %v", err)
	}
	if _, err := f.b.PublishBatch(context.Background(), inst, "t", many[:MaxBatchMessages]); err != nil {
		t.Fatalf("batch of %d messages: %v", MaxBatchMessages, err)
	}
}

func TestAGroupsPopStateIsBounded(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	batch := make([]Message, 1024)
	for n := 0; n < MaxPendingPerQueue+100; n += len(batch) {
		for i := range batch {
			batch[i] = msg(fmt.Sprint(n + i))
		}
		if _, err := f.b.PublishBatch(context.Background(), inst, "t", batch); err != nil {
			t.Fatal(err)
		}
	}
	// A consumer that never acknowledges: the broker stops handing it new
	// messages at the bound, and says so.
	got := 0
	var last []Delivery
	for {
		ds, err := f.b.Pop(context.Background(), inst, "t", PopRequest{Group: "GID_http", Max: 16})
		if errors.Is(err, ErrThrottled) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got += len(ds)
		if last == nil {
			last = ds // the oldest: acknowledging them moves the committed offset
		}
		if got > MaxPendingPerQueue {
			t.Fatalf("%d messages in flight, past the bound of %d", got, MaxPendingPerQueue)
		}
	}
	if got != MaxPendingPerQueue {
		t.Fatalf("%d in flight when throttled, want %d", got, MaxPendingPerQueue)
	}
	// Acknowledging makes room again.
	for _, err := range f.ack("t", "GID_http", last...) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ds := f.pop("t", PopRequest{Group: "GID_http", Max: 16}); len(ds) != len(last) {
		t.Fatalf("popped %d after acknowledging %d", len(ds), len(last))
	}
}
