package mqgrpc_test

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
)

// Benchmarks of the endpoint as the Go client uses it, over TLS: 64 concurrent
// senders, 1 KiB bodies, receive + ack in batches of 16, the broker on a real
// directory with default (fsynced) durability, client and server on one machine;
// comparable with internal/mqhttp's.

const benchSenders = 64

var benchBody = []byte(strings.Repeat("x", 1024))

func benchEnv(b *testing.B) *env {
	b.Helper()
	br, err := broker.Open(broker.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	// The prefill of the receive benchmark publishes past the default rate.
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
	srv := mqgrpc.NewServer("127.0.0.1:0", "", br, logr.Discard())
	srv.TLS = serverTLS
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	addr := <-srv.Listening()
	return &env{broker: br, server: srv, endpoint: addr.String()}
}

func BenchmarkGRPCSend(b *testing.B) {
	e := benchEnv(b)
	p, err := rmq.NewProducer(e.config(""), rmq.WithTopics("bench"))
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Start(); err != nil {
		b.Fatal(err)
	}
	defer p.GracefulStop()
	b.SetBytes(int64(len(benchBody)))
	b.SetParallelism(max(1, benchSenders/runtime.GOMAXPROCS(0)))
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := &rmq.Message{Topic: "bench", Body: benchBody}
			m.SetTag("TagA")
			if _, err := p.Send(context.Background(), m); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkGRPCReceiveAck16(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	batch := make([]broker.Message, 256)
	for i := range batch {
		batch[i] = broker.Message{Body: benchBody, Tag: "TagA", Queue: broker.AnyQueue}
	}
	for n := 0; n < 16*(b.N+1); n += len(batch) { // 16 for each receive
		if _, err := e.broker.PublishBatch(ctx, testInstance, "bench", batch); err != nil {
			b.Fatal(err)
		}
	}
	c, err := rmq.NewSimpleConsumer(e.config("GID_bench"), rmq.WithSimpleAwaitDuration(2*time.Second),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{"bench": rmq.SUB_ALL}))
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(); err != nil {
		b.Fatal(err)
	}
	defer c.GracefulStop()
	b.SetBytes(int64(len(benchBody)))
	var got atomic.Int64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mvs, err := c.Receive(ctx, 16, 20*time.Second)
			if err != nil && !isCode(err, 40401) {
				b.Error(err)
				return
			}
			for _, mv := range mvs {
				if err := c.Ack(ctx, mv); err != nil {
					b.Error(err)
					return
				}
			}
			got.Add(int64(len(mvs)))
		}
	})
	b.ReportMetric(float64(got.Load())/time.Since(start).Seconds(), "msgs/s")
}
