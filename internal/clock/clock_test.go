package clock

import (
	"testing"
	"time"
)

func TestFakeTimersFireInOrderOfDueTime(t *testing.T) {
	f := NewFake(time.Unix(1000, 0))
	early, late := f.NewTimer(time.Second), f.NewTimer(time.Minute)
	stopped := f.NewTimer(2 * time.Second)
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer returned false")
	}
	if f.Timers() != 2 {
		t.Fatalf("Timers() = %d, want 2", f.Timers())
	}

	f.Advance(1500 * time.Millisecond)
	select {
	case at := <-early.C():
		if !at.Equal(time.Unix(1001, 500_000_000)) {
			t.Fatalf("fired with %v", at)
		}
	default:
		t.Fatal("due timer did not fire")
	}
	select {
	case <-late.C():
		t.Fatal("timer fired early")
	case <-stopped.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if early.Stop() {
		t.Fatal("Stop of a fired timer returned true")
	}
	f.Advance(time.Minute)
	<-late.C()
}

func TestFakeZeroTimerFiresAtOnce(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	select {
	case <-f.NewTimer(0).C():
	default:
		t.Fatal("zero-duration timer did not fire")
	}
}
