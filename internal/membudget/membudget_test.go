package membudget

import (
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
