package mqhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// BenchmarkWires runs the mq-http and the RocketMQ 5.x gRPC endpoints side by side,
// in one run, over the same broker settings and with the same load: 64 concurrent
// senders of 1 KiB messages, each waiting for its answer; and 64 consumers that
// receive batches of 16 and acknowledge each batch in one request. The machine's
// absolute figures move by a factor of two from run to run, so the two wires are
// compared only within a run.
//
// It lives beside the mq-http benchmarks to share their lean load connection.
// Both clients are lean, so that the figures measure the servers rather than the
// clients on the same two cores: the raw HTTP/1.1 connections of the mq-http
// benchmarks, and gRPC's generated stubs on one HTTP/2 connection over TLS, as
// the 5.x clients connect. Every request is signed as the public clients sign it.
// (internal/mqgrpc's own benchmarks drive the real Go client, whose Ack takes one
// message per call.)
func BenchmarkWires(b *testing.B) {
	b.Run("send/mqhttp", func(b *testing.B) {
		addr, br := benchEnv(b)
		benchPublish(b, addr)
		reportCommits(b, br)
	})
	for _, mode := range grpcModes {
		b.Run("send/"+mode.name, func(b *testing.B) {
			_, br := benchEnv(b)
			benchGRPCSend(b, grpcBenchClient(b, br, mode.tls))
			reportCommits(b, br)
		})
	}
	b.Run("receive-ack16/mqhttp", func(b *testing.B) {
		addr, br := benchEnv(b)
		prefill(b, br, b.N)
		benchConsumeAck(b, addr)
	})
	for _, mode := range grpcModes {
		b.Run("receive-ack16/"+mode.name, func(b *testing.B) {
			_, br := benchEnv(b)
			prefill(b, br, b.N)
			benchGRPCReceiveAck(b, grpcBenchClient(b, br, mode.tls))
		})
	}
}

// grpcModes: plain text, like the mq-http runs beside it (the endpoint serves
// both on one port), and TLS, as the Go client always dials.
var grpcModes = []struct {
	name string
	tls  bool
}{{"grpc", false}, {"grpc-tls", true}}

// grpcBenchClient serves br's gRPC endpoint, over TLS if withTLS, and dials it:
// one HTTP/2 connection, as a client process has (BENCH_GRPC_CONNS for more).
func grpcBenchClient(b *testing.B, br *broker.Broker, withTLS bool) []*h2Conn {
	b.Helper()
	srv := mqgrpc.NewServer("127.0.0.1:0", "", br, logr.Discard())
	var clientTLS *tls.Config
	if withTLS {
		dir := b.TempDir()
		if err := wiretls.EnsureDevCerts(dir, []string{"127.0.0.1"}); err != nil {
			b.Fatal(err)
		}
		certs, err := wiretls.LoadCerts(dir)
		if err != nil {
			b.Fatal(err)
		}
		ca, err := certs.CA()
		if err != nil {
			b.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		srv.TLS = certs.Config()
		clientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	asServer(func() { go func() { done <- srv.Start(ctx) }() })
	b.Cleanup(func() { cancel(); <-done })
	var addr string
	select {
	case a := <-srv.Listening():
		addr = a.String()
	case err := <-done:
		b.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv("BENCH_GRPC_CONNS"))
	var out []*h2Conn
	for range max(n, 1) {
		c, err := dialH2(addr, clientTLS)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.close)
		out = append(out, c)
	}
	return out
}

// field returns the bytes of the last occurrence of length-delimited field num
// in msg, or nil: the client reads only the few fields it needs out of an
// answer, as the HTTP load client reads only the receipt handles out of its.
func field(msg []byte, num protowire.Number) []byte {
	var out []byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return nil
		}
		msg = msg[l:]
		if typ == protowire.BytesType {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				return nil
			}
			if n == num {
				out = v
			}
			msg = msg[l:]
			continue
		}
		if l = protowire.ConsumeFieldValue(n, typ, msg); l < 0 {
			return nil
		}
		msg = msg[l:]
	}
	return out
}

// statusOK reports whether an answer's status (field 1 of every answer but a
// receive's message frames) has code OK.
func statusOK(a []byte) bool {
	st := field(a, 1)
	for len(st) > 0 {
		n, typ, l := protowire.ConsumeTag(st)
		if l < 0 {
			return false
		}
		st = st[l:]
		if n == 1 && typ == protowire.VarintType {
			code, _ := protowire.ConsumeVarint(st)
			return pb.Code(code) == pb.Code_OK
		}
		if l = protowire.ConsumeFieldValue(n, typ, st); l < 0 {
			return false
		}
		st = st[l:]
	}
	return false
}

// signedMD is a call's metadata, signed anew for each call as the clients sign.
func signedMD() metadata.MD {
	return mqgrpc.SignedMetadata(testAK, testSK, testInstance, "bench@1@0@raw", time.Now())
}

var benchResource = &pb.Resource{ResourceNamespace: testInstance, Name: "bench"}

func benchGRPCSend(b *testing.B, conns []*h2Conn) {
	b.SetBytes(int64(len(benchBody)))
	b.SetParallelism(max(1, benchClients/runtime.GOMAXPROCS(0)))
	var seq, next atomic.Int64
	tag := "TagA"
	body := []byte(benchBody)
	start := time.Now()
	b.ResetTimer()
	cpu := processCPU()
	b.RunParallel(func(tpb *testing.PB) {
		conn := conns[int(next.Add(1))%len(conns)]
		call := newH2Call()
		for tpb.Next() {
			m := &pb.Message{Topic: benchResource, Body: body, SystemProperties: &pb.SystemProperties{
				Tag: &tag, MessageId: "01BENCH" + strconv.FormatInt(seq.Add(1), 16), BodyEncoding: pb.Encoding_IDENTITY,
				MessageType: pb.MessageType_NORMAL, BornTimestamp: timestamppb.Now(), BornHost: "bench",
			}}
			req, _ := proto.Marshal(&pb.SendMessageRequest{Messages: []*pb.Message{m}})
			answer, err := conn.call(call, pb.MessagingService_SendMessage_FullMethodName, signedMD(), req)
			if err != nil || len(answer) != 1 || !statusOK(answer[0]) {
				b.Errorf("send: %v %x", err, answer)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	reportCPU(b, cpu, b.N)
}

func benchGRPCReceiveAck(b *testing.B, conns []*h2Conn) {
	group := &pb.Resource{ResourceNamespace: testInstance, Name: "GID_bench"}
	// A short poll, as the mq-http consumers make: the messages are stored
	// before the timer starts.
	receive, _ := proto.Marshal(&pb.ReceiveMessageRequest{
		Group: group, MessageQueue: &pb.MessageQueue{Topic: benchResource}, BatchSize: 16,
		InvisibleDuration: durationpb.New(time.Minute), LongPollingTimeout: durationpb.New(0),
	})
	var consumed atomic.Int64
	start := time.Now()
	b.ResetTimer()
	cpu := processCPU()
	var wg sync.WaitGroup
	for i := range benchClients {
		conn := conns[i%len(conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var entries []*pb.AckMessageEntry
			call := newH2Call()
			for consumed.Load() < int64(b.N) {
				entries = entries[:0]
				frames, err := conn.call(call, pb.MessagingService_ReceiveMessage_FullMethodName, signedMD(), receive)
				if err != nil {
					b.Errorf("receive: %v", err)
					return
				}
				for _, f := range frames {
					// A message frame (2): its system properties (3) hold the
					// message id (3) and the receipt handle (12).
					if sp := field(field(f, 2), 3); sp != nil {
						entries = append(entries, &pb.AckMessageEntry{MessageId: string(field(sp, 3)), ReceiptHandle: string(field(sp, 12))})
					}
				}
				if len(entries) == 0 {
					continue
				}
				ack, _ := proto.Marshal(&pb.AckMessageRequest{Group: group, Topic: benchResource, Entries: entries})
				answer, err := conn.call(call, pb.MessagingService_AckMessage_FullMethodName, signedMD(), ack)
				if err != nil || len(answer) != 1 || !statusOK(answer[0]) {
					b.Errorf("ack: %v %x", err, answer)
					return
				}
				consumed.Add(int64(len(entries)))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(consumed.Load())/time.Since(start).Seconds(), "msg/s")
	reportCPU(b, cpu, int(consumed.Load()))
}
