package broker

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/fsyncfloor"
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
	if err := br.EnsureInstance(InstanceConfig{ID: inst, Owner: "o", Limits: benchLimits}); err != nil {
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
	benchProduce(b, func(body []byte) error {
		_, err := br.Publish(context.Background(), inst, "bench", Message{Body: body, Queue: AnyQueue})
		return err
	})
	reportCommits(b, br)
}

// benchProduce runs benchProducers goroutines that each store 1 KiB bodies with
// store, one at a time, until b.N are stored, and reports msg/s.
func benchProduce(b *testing.B, store func(body []byte) error) {
	body := make([]byte, 1024)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(parallelism())
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := store(body); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
}

// BenchmarkFsyncFloor is what the disk allows BenchmarkPublish at all: the same 64
// producers appending 1 KiB records to a group-committed file that does nothing but
// write and fdatasync (internal/fsyncfloor). No store can acknowledge durable
// writes from 64 waiting producers faster than this on the same disk.
func BenchmarkFsyncFloor(b *testing.B) { benchFloor(b, fsyncfloor.ForBenchmark(b)) }

// BenchmarkFsyncFloorGrowing is the same floor for a store that keeps what it
// writes: the file grows with every batch instead of being overwritten in place,
// so each sync also commits the file's new blocks (fsyncfloor.OpenGrowing).
func BenchmarkFsyncFloorGrowing(b *testing.B) { benchFloor(b, fsyncfloor.GrowingForBenchmark(b)) }

// benchFloor runs benchProduce against a floor and reports its group commits as
// reportCommits does the broker's.
func benchFloor(b *testing.B, l *fsyncfloor.Log) {
	benchProduce(b, l.Append)
	records, syncs, mean := l.Stats()
	b.ReportMetric(float64(records)/float64(syncs), "msg/commit")
	b.ReportMetric(float64(mean.Microseconds()), "µs-sync/commit")
}

// reportCommits reports how well group commit worked: messages per fsync, and the
// mean time the syncer waited for the disk.
func reportCommits(b *testing.B, br *Broker) {
	commits := br.commits.stats.commits.Load()
	if commits == 0 {
		return
	}
	b.ReportMetric(float64(br.commits.stats.messages.Load())/float64(commits), "msg/commit")
	b.ReportMetric(float64(br.commits.stats.syncWait.Load())/float64(commits)/1e3, "µs-sync/commit")
}

// fill publishes n 1 KiB messages to topic in batches, from a few goroutines.
func fill(b testing.TB, br *Broker, topic string, n int, key func(i int) string) {
	b.Helper()
	body := make([]byte, 1024)
	const batch = 64
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(batch)) - batch
				if start >= n {
					return
				}
				msgs := make([]Message, 0, batch)
				for i := start; i < min(start+batch, n); i++ {
					msgs = append(msgs, Message{Body: body, ShardingKey: key(i), Queue: AnyQueue})
				}
				if _, err := br.PublishBatch(context.Background(), inst, topic, msgs); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// benchPopAck pops in batches of 16 from benchProducers consumers and acknowledges
// every batch, until b.N messages are consumed.
func benchPopAck(b *testing.B, typ MessageType, orderly bool) {
	br := benchBroker(b)
	if _, err := br.EnsureTopic(inst, TopicConfig{Name: "bench", Type: typ, Queues: 8, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	if _, err := br.EnsureGroup(inst, GroupConfig{ID: "GID_bench", Protocol: HTTP, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	fill(b, br, "bench", b.N, func(i int) string { return strconv.Itoa(i % 1000) })
	if os.Getenv("BENCH_SETTLE") != "" {
		if err := br.SettleStorage(time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	var consumed atomic.Int64
	start := time.Now()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range benchProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			handles := make([]string, 0, 16)
			for consumed.Load() < int64(b.N) {
				got, err := br.Pop(ctx, inst, "bench", PopRequest{Group: "GID_bench", Max: 16, Orderly: orderly, Wait: 10 * time.Millisecond})
				if err != nil {
					b.Error(err)
					return
				}
				handles = handles[:0]
				for _, d := range got {
					handles = append(handles, d.Handle)
				}
				if len(handles) == 0 {
					continue
				}
				errs, err := br.Ack(inst, "bench", "GID_bench", handles)
				if err != nil || slices.ContainsFunc(errs, func(e error) bool { return e != nil }) {
					b.Errorf("ack: %v %v", err, errs)
					return
				}
				consumed.Add(int64(len(handles)))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(consumed.Load())/time.Since(start).Seconds(), "msg/s")
}

func BenchmarkPopAck(b *testing.B)        { benchPopAck(b, Normal, false) }
func BenchmarkOrderedPopAck(b *testing.B) { benchPopAck(b, Ordered, true) }

// BenchmarkPublishWithBacklog publishes like BenchmarkPublish onto a topic that
// already holds a backlog (ORDERLY_BENCH_BACKLOG messages, default 10 million, about
// 10 GiB), and reports the process's resident memory. Compare its msg/s with
// BenchmarkPublish's.
func BenchmarkPublishWithBacklog(b *testing.B) {
	if b.N == 1 {
		return // the framework's probe run: not worth filling 10 GiB for
	}
	backlog := 10_000_000
	if v, err := strconv.Atoi(os.Getenv("ORDERLY_BENCH_BACKLOG")); err == nil {
		backlog = v
	}
	br := benchBroker(b)
	if _, err := br.EnsureTopic(inst, TopicConfig{Name: "bench", Queues: 8, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	fill(b, br, "bench", backlog, func(int) string { return "" })
	benchProduce(b, func(body []byte) error {
		_, err := br.Publish(context.Background(), inst, "bench", Message{Body: body, Queue: AnyQueue})
		return err
	})
	b.ReportMetric(float64(rssBytes())/(1<<20), "MiB-rss")
}

// rssBytes reads this process's resident set size.
func rssBytes() int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkRestartAfterKill fills a broker in a child process with 1 GiB of
// messages (ORDERLY_BENCH_RESTART_MIB to change), kills it with SIGKILL, and
// measures how long a new broker takes to open the directory and serve a pull.
func BenchmarkRestartAfterKill(b *testing.B) {
	mib := 1024
	if v, err := strconv.Atoi(os.Getenv("ORDERLY_BENCH_RESTART_MIB")); err == nil {
		mib = v
	}
	dir := b.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRestartChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), restartDirEnv+"="+dir, restartMiBEnv+"="+strconv.Itoa(mib))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil { // "filled"
		b.Fatal(err)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	// The first open recovers from the kill; later ones open a cleanly closed store.
	afterKill := time.Duration(0)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		br, err := Open(Options{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		pr, err := br.Pull(context.Background(), inst, "GID_bench", "bench", 0, 0, 16, Filter{}, 0)
		if err != nil || len(pr.Messages) == 0 {
			b.Fatalf("first pull after restart: %d messages, %v", len(pr.Messages), err)
		}
		if afterKill == 0 {
			afterKill = time.Since(start)
		}
		b.StopTimer()
		_ = br.Close()
		b.StartTimer()
	}
	b.ReportMetric(afterKill.Seconds(), "s-to-serve-after-kill")
}

const (
	restartDirEnv = "ORDERLY_RESTART_CHILD_DIR"
	restartMiBEnv = "ORDERLY_RESTART_CHILD_MIB"
)

// TestRestartChild is BenchmarkRestartAfterKill's child: without its environment it
// does nothing.
func TestRestartChild(t *testing.T) {
	dir := os.Getenv(restartDirEnv)
	if dir == "" {
		return
	}
	mib, _ := strconv.Atoi(os.Getenv(restartMiBEnv))
	br, err := Open(Options{Dir: dir, RelaxedFlush: true}) // fast to fill; the kill is what matters
	if err != nil {
		t.Fatal(err)
	}
	if err := br.EnsureInstance(InstanceConfig{ID: inst, Owner: "o", Limits: benchLimits}); err != nil {
		t.Fatal(err)
	}
	if _, err := br.EnsureTopic(inst, TopicConfig{Name: "bench", Queues: 8, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := br.EnsureGroup(inst, GroupConfig{ID: "GID_bench", Protocol: TCP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	fill(t, br, "bench", mib<<10, func(int) string { return "" })
	fmt.Println("filled")
	select {} // wait to be killed
}

// benchLimits lift the publish rates: the benchmarks measure the engine, not a
// tenant's quota.
var benchLimits = Limits{PublishRate: 1 << 30, PublishBytesRate: 1 << 40}
