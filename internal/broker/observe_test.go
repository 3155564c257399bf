package broker

import (
	"testing"
	"time"
)

// TestLatencyBuckets checks that each observation lands in the first bucket whose
// bound holds it, and that the read is cumulative, as Prometheus buckets are.
func TestLatencyBuckets(t *testing.T) {
	var h latency
	for _, d := range []time.Duration{
		0, latencyBase, // bucket 0 (<= 100 µs)
		latencyBase + 1,                     // bucket 1 (<= 200 µs)
		time.Millisecond,                    // bucket 4 (<= 1.6 ms)
		latencyBase << (latencyBuckets - 1), // the last bound, 3.2768 s
		time.Hour,                           // past every bound
		-time.Second,                        // a clock step back counts as 0
	} {
		h.observe(d)
	}
	r := h.read()
	if r.Count != 7 {
		t.Fatalf("count %d, want 7", r.Count)
	}
	want := map[int]uint64{0: 3, 1: 4, 3: 4, 4: 5, latencyBuckets - 2: 5, latencyBuckets - 1: 6}
	for k, n := range want {
		if r.Counts[k] != n {
			t.Errorf("bucket %d (<= %s): %d cumulative, want %d", k, r.Bounds[k], r.Counts[k], n)
		}
	}
	if r.Bounds[4] != 1600*time.Microsecond {
		t.Errorf("bound 4 is %s", r.Bounds[4])
	}
	wantSum := 2*latencyBase + 1 + time.Millisecond + latencyBase<<(latencyBuckets-1) + time.Hour
	if r.Sum != wantSum {
		t.Errorf("sum %s, want %s", r.Sum, wantSum)
	}
}
