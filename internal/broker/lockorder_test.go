package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/clock"
)

// openMemBroker opens an in-memory broker with one instance. It is not closed for
// the test: a test that finds a deadlock leaves its goroutines blocked, and Close
// would block behind them.
func openMemBroker(t *testing.T) *Broker {
	t.Helper()
	b, err := Open(Options{Clock: clock.NewFake(time.UnixMilli(1_700_000_000_000))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureInstance(InstanceConfig{ID: inst, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	return b
}

// runConcurrently runs each fn n times in its own goroutine and fails if they do
// not all finish within limit (a deadlock). On success it closes b.
func runConcurrently(t *testing.T, b *Broker, n int, limit time.Duration, fns ...func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("no progress after %v: the goroutines deadlocked", limit)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

// The queue locks are taken after b.mu, never before it: deleting a group holds
// b.mu and releases the group's queue locks, so a lock call that resolved its
// queues while holding the queue locks could deadlock with it.
func TestLockQueuesWhileGroupsComeAndGo(t *testing.T) {
	b := openMemBroker(t)
	if _, err := b.EnsureTopic(inst, TopicConfig{Name: "t", Type: Ordered, Queues: 8, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureGroup(inst, GroupConfig{ID: "GID_locker", Protocol: TCP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	var refs []QueueRef
	for i := range 64 {
		refs = append(refs, QueueRef{Topic: "t", Queue: i % 8})
	}
	runConcurrently(t, b, 200, 30*time.Second,
		func(int) error {
			_, err := b.LockQueues(inst, "GID_locker", "client", refs)
			return err
		},
		func(i int) error {
			id := fmt.Sprintf("GID_%d", i%4)
			if _, err := b.EnsureGroup(inst, GroupConfig{ID: id, Protocol: TCP, Owner: "o"}); err != nil {
				return err
			}
			return b.DeleteGroup(inst, id, "o")
		})
}

// What b.mu guards is read under it: a group's redelivery limit and a topic's
// retention change when they are declared again, while pops, send-backs and
// retention read them. The race detector finds a read outside b.mu here.
func TestRedeclarationWhileConsuming(t *testing.T) {
	b := openMemBroker(t)
	ctx := context.Background()
	if _, err := b.EnsureTopic(inst, TopicConfig{Name: "t", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []GroupConfig{{ID: "GID_http", Protocol: HTTP, Owner: "o"}, {ID: "GID_tcp", Protocol: TCP, Owner: "o"}} {
		if _, err := b.EnsureGroup(inst, g); err != nil {
			t.Fatal(err)
		}
	}
	res, err := b.Publish(ctx, inst, "t", Message{Body: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	runConcurrently(t, b, 100, 30*time.Second,
		func(i int) error {
			for _, g := range []GroupConfig{{ID: "GID_http", Protocol: HTTP}, {ID: "GID_tcp", Protocol: TCP}} {
				g.Owner, g.MaxRedeliveries = "o", 5+i%2
				if _, err := b.EnsureGroup(inst, g); err != nil {
					return err
				}
			}
			_, err := b.EnsureTopic(inst, TopicConfig{Name: "t", Owner: "o", Retention: time.Duration(1+i%2) * time.Hour})
			return err
		},
		func(int) error {
			_, err := b.Pop(ctx, inst, "t", PopRequest{Group: "GID_http", Max: 1})
			return err
		},
		func(int) error { return b.SendBack(ctx, inst, "GID_tcp", res.Seq, 1, 0) },
		func(int) error { return b.Reclaim() })
}
