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

// accountWhilePublishing publishes racePublishes messages to a one-queue topic
// from one goroutine while it calls take, which consumes a batch and returns its
// bodies; then it calls take until a batch comes back empty, and checks that every
// message was taken exactly once.
func accountWhilePublishing(t *testing.T, f *fixture, topic string, take func() [][]byte) {
	t.Helper()
	seen := make([]bool, racePublishes)
	got := 0
	account := func() bool {
		bodies := take()
		for _, body := range bodies {
			var i int
			fmt.Sscan(string(body), &i)
			if seen[i] {
				t.Fatalf("message %d taken twice", i)
			}
			seen[i] = true
			got++
		}
		return len(bodies) > 0
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(stop)
		for i := range racePublishes {
			// Small batches from one producer commit in many group commits, some
			// of them between two index reads of a consumer.
			if _, err := f.b.Publish(context.Background(), inst, topic, msg(fmt.Sprint(i))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-stop:
			running = false
		default:
			account()
		}
	}
	wg.Wait()
	for account() {
	}
	if got != racePublishes {
		t.Fatalf("took %d of %d published messages", got, racePublishes)
	}
}

func TestPullWhilePublishingMissesNothing(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_tcp", TCP)
	offset := int64(0)
	accountWhilePublishing(t, f, "t", func() [][]byte {
		res, err := f.b.Pull(context.Background(), inst, "GID_tcp", "t", 0, offset, 32, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if int(res.NextOffset-offset) != len(res.Messages) {
			t.Fatalf("pull at %d returned %d messages and advanced to %d", offset, len(res.Messages), res.NextOffset)
		}
		offset = res.NextOffset
		var bodies [][]byte
		for _, m := range res.Messages {
			bodies = append(bodies, m.Body)
		}
		return bodies
	})
}

func TestPopWhilePublishingMissesNothing(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("GID_http", HTTP)
	accountWhilePublishing(t, f, "t", func() [][]byte {
		ds := f.pop("t", PopRequest{Group: "GID_http", Max: 16})
		if len(ds) > 0 {
			for i, err := range f.ack("t", "GID_http", ds...) {
				if err != nil {
					t.Fatalf("ack %d: %v", i, err)
				}
			}
		}
		var bodies [][]byte
		for _, d := range ds {
			bodies = append(bodies, d.Body)
		}
		return bodies
	})
}
