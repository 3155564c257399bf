package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// These tests consume while a producer publishes, and account for every message.
// A pull or pop that read the queue's index twice through different views of the
// store once skipped records committed between the two reads as if retention had
// reclaimed them.

const racePublishes = 20000

// publishConcurrently publishes n messages to a one-queue topic from one goroutine
// while consume runs; it returns once both are done.
func publishConcurrently(t *testing.T, f *fixture, topic string, n int, consume func(stop <-chan struct{})) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(stop)
		for i := range n {
			// Small batches from one producer commit in many group commits, some
			// of them between two index reads of a consumer.
			if _, err := f.b.Publish(context.Background(), inst, topic, msg(fmt.Sprint(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	consume(stop)
	wg.Wait()
}

func TestPullWhilePublishingMissesNothing(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	seen := make([]bool, racePublishes)
	got := 0
	offset := int64(0)
	pull := func() (more bool) {
		res, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, offset, 32, TagFilter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if int(res.NextOffset-offset) != len(res.Messages) {
			t.Fatalf("pull at %d returned %d messages and advanced to %d", offset, len(res.Messages), res.NextOffset)
		}
		for _, m := range res.Messages {
			var i int
			fmt.Sscan(string(m.Body), &i)
			if seen[i] {
				t.Fatalf("message %d pulled twice", i)
			}
			seen[i] = true
			got++
		}
		offset = res.NextOffset
		return len(res.Messages) > 0
	}
	publishConcurrently(t, f, "t", racePublishes, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
				pull()
			}
		}
	})
	for pull() {
	}
	if got != racePublishes {
		t.Fatalf("pulled %d of %d published messages", got, racePublishes)
	}
}

func TestPopWhilePublishingMissesNothing(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	seen := make([]bool, racePublishes)
	got := 0
	pop := func() (more bool) {
		ds := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
		for _, d := range ds {
			var i int
			fmt.Sscan(string(d.Body), &i)
			if seen[i] {
				t.Fatalf("message %d delivered twice", i)
			}
			seen[i] = true
			got++
		}
		if len(ds) > 0 {
			for i, err := range f.ack("t", "GID_http", ds...) {
				if err != nil {
					t.Fatalf("ack %d: %v", i, err)
				}
			}
		}
		return len(ds) > 0
	}
	publishConcurrently(t, f, "t", racePublishes, func(stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			default:
				pop()
			}
		}
	})
	for pop() {
	}
	if got != racePublishes {
		t.Fatalf("popped %d of %d published messages", got, racePublishes)
	}
}
