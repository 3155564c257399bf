package broker

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"
)

// Benchmarks run against a real directory with the default durability (fsync before
// acknowledging), 1 KiB bodies and 64 concurrent producers, the shape the targets in
// README.md are stated for. Each reports msg/s; `make bench` runs them with -count
// so that medians can be taken.

const benchProducers = 64

func benchBroker(b *testing.B) *Broker {
	b.Helper()
	br, err := Open(Options{Dir: b.TempDir(), RelaxedFlush: os.Getenv("BENCH_RELAXED") != ""})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	if err := br.EnsureInstance(InstanceConfig{ID: inst, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	return br
}

// parallelism makes RunParallel use benchProducers goroutines.
func parallelism() int {
	return max(1, benchProducers/runtime.GOMAXPROCS(0))
}

func BenchmarkPublish(b *testing.B) {
	br := benchBroker(b)
	if _, err := br.EnsureTopic(inst, TopicConfig{Name: "bench", Queues: 8, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(parallelism())
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := br.Publish(ctx, inst, "bench", Message{Body: body, Queue: AnyQueue}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	reportCommits(b, br)
}

// reportCommits reports how well group commit worked: messages per fsync, and the
// mean time the syncer waited for the disk.
func reportCommits(b *testing.B, br *Broker) {
	commits := br.writeStats.commits.Load()
	if commits == 0 {
		return
	}
	b.ReportMetric(float64(br.writeStats.messages.Load())/float64(commits), "msg/commit")
	b.ReportMetric(float64(br.writeStats.syncWait.Load())/float64(commits)/1e3, "µs-sync/commit")
}
