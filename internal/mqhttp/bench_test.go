package mqhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/fsyncfloor"
)

// Benchmarks of the endpoint as the SDKs use it: the real Go SDK as client (signed
// requests over keep-alive connections), 64 clients, 1 KiB bodies, the broker on a
// real directory with default (fsynced) durability, client and server on one
// machine.

const benchClients = 64

func benchEnv(b *testing.B) (addr string, br *broker.Broker) {
	b.Helper()
	var err error
	asServer(func() {
		br, err = broker.Open(broker.Options{Dir: b.TempDir(), RelaxedFlush: os.Getenv("BENCH_RELAXED") != ""})
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	// Prefills publish past the default rate limit.
	if err := br.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Limits: broker.Limits{PublishRate: 1 << 30},
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		b.Fatal(err)
	}
	if _, err := br.EnsureTopic(testInstance, broker.TopicConfig{Name: "bench", Queues: 8, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	if _, err := br.EnsureGroup(testInstance, broker.GroupConfig{ID: "GID_bench", Protocol: broker.HTTP, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	srv := NewServer("127.0.0.1:0", br, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	asServer(func() { go func() { done <- srv.Start(ctx) }() })
	b.Cleanup(func() { cancel(); <-done })
	var listening net.Addr
	select {
	case listening = <-srv.Listening():
	case err := <-done:
		b.Fatal(err)
	}
	return listening.String(), br
}

var benchBody = strings.Repeat("x", 1024)

// benchMessage is a 1 KiB message as the SDKs send it.
var benchMessage = []byte("<Message><MessageBody>" + benchBody + "</MessageBody><MessageTag>TagA</MessageTag></Message>")

// benchPublish publishes one message per request from benchClients connections,
// each its own goroutine, and reports requests per second.
func benchPublish(b *testing.B, addr string) {
	b.SetBytes(int64(len(benchBody)))
	b.SetParallelism(max(1, benchClients/runtime.GOMAXPROCS(0)))
	start := time.Now()
	b.ResetTimer()
	cpu := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		c, err := dialLoad(addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.close()
		for pb.Next() {
			if status, out, err := c.do(http.MethodPost, "/topics/bench/messages?ns="+testInstance, benchMessage); err != nil || status != http.StatusCreated {
				b.Errorf("publish: %d %s %v", status, out, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	reportCPU(b, cpu, b.N)
}

// BenchmarkHTTPPublish publishes one message per request, as the SDKs send.
func BenchmarkHTTPPublish(b *testing.B) {
	addr, br := benchEnv(b)
	benchPublish(b, addr)
	reportCommits(b, br)
}

// asServer runs f with the pprof label side=server, which the goroutines it
// starts inherit: the broker's, and a server's down to each request's. A CPU
// profile of a benchmark then tells the server's CPU from the client's
// (go tool pprof -tagfocus side=server).
func asServer(f func()) {
	pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) { f() })
}

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per message since since: client and
// server together, steadier from run to run on a shared machine than the
// throughput, which the disk's and the neighbours' moods move.
func reportCPU(b *testing.B, since time.Duration, messages int) {
	if messages > 0 {
		b.ReportMetric(float64((processCPU()-since).Microseconds())/float64(messages), "cpu-µs/msg")
	}
}

// reportCommits reports how many messages shared each group commit, and how
// long its sync took.
func reportCommits(b *testing.B, br *broker.Broker) {
	if ws := br.WriteStats(); ws.Commits > 0 {
		b.ReportMetric(float64(ws.Messages)/float64(ws.Commits), "msg/commit")
		b.ReportMetric(float64(ws.SyncWait.Microseconds())/float64(ws.Commits), "µs-sync/commit")
	}
}

// BenchmarkHTTPConsumeAck consumes in batches of 16 and acks each batch.
func BenchmarkHTTPConsumeAck(b *testing.B) {
	addr, br := benchEnv(b)
	prefill(b, br, b.N)
	benchConsumeAck(b, addr)
}

// prefill stores n messages of benchBody on the bench topic, before the timer.
func prefill(b *testing.B, br *broker.Broker, n int) {
	msgs := make([]broker.Message, 64)
	for i := range msgs {
		msgs[i] = broker.Message{Body: []byte(benchBody), Queue: broker.AnyQueue}
	}
	for done := 0; done < n; done += len(msgs) {
		if _, err := br.PublishBatch(context.Background(), testInstance, "bench", msgs); err != nil {
			b.Fatal(err)
		}
	}
}

// benchConsumeAck consumes b.N messages in batches of 16 over benchClients
// connections, each acking its batch in one request.
func benchConsumeAck(b *testing.B, addr string) {
	var consumed atomic.Int64
	start := time.Now()
	b.ResetTimer()
	cpu := processCPU()
	var wg sync.WaitGroup
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialLoad(addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.close()
			var handles []string
			for consumed.Load() < int64(b.N) {
				status, out, err := c.do(http.MethodGet, "/topics/bench/messages?consumer=GID_bench&ns="+testInstance+"&numOfMessages=16", nil)
				if err != nil || (status != http.StatusOK && status != http.StatusNotFound) {
					b.Errorf("consume: %d %v", status, err)
					return
				}
				if handles = receiptHandles(handles[:0], out); status == http.StatusNotFound || len(handles) == 0 {
					continue
				}
				ack := []byte("<ReceiptHandles>")
				for _, h := range handles {
					ack = append(append(append(ack, "<ReceiptHandle>"...), h...), "</ReceiptHandle>"...)
				}
				ack = append(ack, "</ReceiptHandles>"...)
				if status, out, err := c.do(http.MethodDelete, "/topics/bench/messages?consumer=GID_bench&ns="+testInstance, ack); err != nil || status != http.StatusNoContent {
					b.Errorf("ack: %d %s %v", status, out, err)
					return
				}
				consumed.Add(int64(len(handles)))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(consumed.Load())/time.Since(start).Seconds(), "msg/s")
	reportCPU(b, cpu, int(consumed.Load()))
}

// BenchmarkHTTPLongPollLatency measures how long a message published while a
// consumer long-polls takes to reach it, reporting the 50th and 99th percentiles.
func BenchmarkHTTPLongPollLatency(b *testing.B) {
	addr, _ := benchEnv(b)
	client := mqsdk.NewAliyunMQClient("http://"+addr, testAK, testSK, "")
	p := client.GetProducer(testInstance, "bench")
	c := client.GetConsumer(testInstance, "bench", "GID_bench", "")
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		got := make(chan time.Time, 1)
		acked := make(chan struct{})
		go func() {
			defer close(acked)
			ms, err := consume(c, false, 1, 10)
			// Received here; the ack that follows is not part of the delivery,
			// but finishes before the next round starts.
			got <- time.Now()
			if err == nil {
				_ = c.AckMessage(handles(ms))
			}
		}()
		// Publish once the poll is waiting in the server; a poll that has not
		// arrived yet would measure the request, not the wake-up.
		time.Sleep(2 * time.Millisecond)
		sent := time.Now()
		if _, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "ping"}); err != nil {
			b.Fatal(err)
		}
		latencies = append(latencies, (<-got).Sub(sent))
		<-acked
	}
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds())/1000, "ms-p99")
}

// BenchmarkBareHTTP is the floor the issue measures against: the same client, 64
// keep-alive connections and signed 1 KiB requests, against a net/http handler that
// only reads the body and answers 201. The endpoint's own cost is what
// BenchmarkHTTPPublish spends beyond this.
func BenchmarkBareHTTP(b *testing.B) {
	benchBareHandler(b, func([]byte) error { return nil })
}

// BenchmarkBareHTTPFsyncFloor is what the machine allows a durable publish over
// HTTP at all: the bare handler appending each body to a group-committed file that
// only writes and fdatasyncs (internal/fsyncfloor), with no storage engine behind it.
func BenchmarkBareHTTPFsyncFloor(b *testing.B) {
	l := fsyncfloor.ForBenchmark(b)
	benchBareHandler(b, l.Append)
}

// BenchmarkBareHTTPDurable is the floor for a durable publish: the same client and
// requests against a net/http handler that only reads the body and stores it with
// the broker (fsynced, group-committed), without any of the protocol's work
// (signature, Content-MD5, XML, the answer document). What BenchmarkHTTPPublish
// spends beyond this is the endpoint's own cost.
func BenchmarkBareHTTPDurable(b *testing.B) {
	_, br := benchEnv(b)
	benchBareHandler(b, func(body []byte) error {
		_, err := br.Publish(context.Background(), testInstance, "bench", broker.Message{Body: body, Queue: broker.AnyQueue})
		return err
	})
}

// benchBareHandler runs benchPublish against a net/http handler that reads the body,
// passes it to store and answers 201, or 500 if store fails.
func benchBareHandler(b *testing.B, store func(body []byte) error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err == nil {
			err = store(body)
		}
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	benchPublish(b, ln.Addr().String())
}
