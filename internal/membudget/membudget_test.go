package membudget

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAWaitEndsAtItsDeadline(t *testing.T) {
	b := New(100)
	if !b.Take(100, 0, time.Now(), nil) {
		t.Fatal("the whole budget refused")
	}
	start := time.Now()
	if b.Take(1, 0, start.Add(50*time.Millisecond), nil) {
		t.Fatal("past the budget, taken")
	}
	if waited := time.Since(start); waited < 50*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("waited %v for a 50 ms deadline", waited)
	}
	// A taker holding all that is taken may go past the limit; a giver wakes a
	// waiter.
	if !b.Take(50, 100, time.Now(), nil) {
		t.Fatal("the sole holder refused")
	}
	got := make(chan bool)
	go func() { got <- b.Take(60, 0, time.Now().Add(10*time.Second), nil) }()
	for deadline := time.Now().Add(5 * time.Second); b.Waiting() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no waiter")
		}
	}
	b.Give(150)
	if !<-got || b.InUse() != 60 {
		t.Fatalf("the waiter: %d in use", b.InUse())
	}
	done := make(chan struct{})
	close(done)
	if b.Take(100, 0, time.Now().Add(time.Hour), done) {
		t.Fatal("taken after done")
	}
	b.Force(100)
	if b.InUse() != 160 {
		t.Fatalf("forced past the limit: %d in use", b.InUse())
	}
}

// TestConcurrentTakersNeverPassTheLimit has many takers take and give at once;
// apart from a sole holder, what is held never passes the limit.
func TestConcurrentTakersNeverPassTheLimit(t *testing.T) {
	b := New(1000)
	done := make(chan struct{})
	over := make(chan int, 1)
	for range 8 {
		go func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if b.Take(300, 0, time.Now().Add(time.Second), done) {
					if u := b.InUse(); u > 1000 {
						select {
						case over <- u:
						default:
						}
					}
					b.Give(300)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // the takers contend meanwhile
	close(done)
	select {
	case u := <-over:
		t.Fatalf("%d bytes held, past the limit of 1000", u)
	default:
	}
}

// A request's hold takes from its tenant's share and the server's: past the
// tenant's share it fails at its deadline while another tenant's request is
// served, and everything comes back with Release.
func TestAHoldTakesFromItsTenantAndTheServer(t *testing.T) {
	s := NewShares(100, 60)
	a := s.Hold("a", time.Now().Add(50*time.Millisecond), nil)
	if err := a.Take(context.Background(), 60); err != nil {
		t.Fatal(err)
	}
	a2 := s.Hold("a", time.Now().Add(50*time.Millisecond), nil)
	if err := a2.Take(context.Background(), 10); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("a second request past the tenant's share: %v", err)
	}
	b := s.Hold("b", time.Now().Add(50*time.Millisecond), nil)
	if err := b.Take(context.Background(), 40); err != nil {
		t.Fatalf("another tenant within the server's budget: %v", err)
	}
	if err := b.Take(context.Background(), 10); !errors.Is(err, ErrNoMemory) {
		t.Fatalf("past the server's budget: %v", err)
	}
	if got := s.All().InUse(); got != 100 {
		t.Fatalf("the server's budget holds %d, want 100", got)
	}
	a.Release()
	b.Release()
	if s.All().InUse() != 0 || s.Tenant("a").InUse() != 0 || s.Tenant("b").InUse() != 0 || a.Held() != 0 {
		t.Fatalf("after release: server %d, a %d, b %d", s.All().InUse(), s.Tenant("a").InUse(), s.Tenant("b").InUse())
	}
}
