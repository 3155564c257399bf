package remoting

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/fsyncfloor"
)

// Benchmarks of the endpoint on this machine: 1 KiB bodies, the broker on a real
// directory with default (fsynced) durability, client and server sharing the two
// cores. The clients speak frames directly and sign every request as the Go client
// does, without its own CPU cost (its consume loop, logging and per-message
// goroutines would take most of the two cores); the client tests prove the real
// client works.

const benchProducers = 64

var benchBody = []byte(strings.Repeat("x", 1024))

func benchServer(b *testing.B, queues int) (addr string, br *broker.Broker) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	br, err = broker.Open(broker.Options{Dir: b.TempDir(), StorePort: uint32(ln.Addr().(*net.TCPAddr).Port)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	// No publish rate limit: the benchmarks measure the server, and the push
	// benchmark's fill alone passes the default 20,000 messages a second.
	if err := br.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Limits: broker.Limits{PublishRate: 1 << 30},
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		b.Fatal(err)
	}
	if _, err := br.EnsureTopic(testInstance, broker.TopicConfig{Name: "bench", Queues: queues, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	if _, err := br.EnsureGroup(testInstance, broker.GroupConfig{ID: "GID_bench", Protocol: broker.TCP, Owner: "o"}); err != nil {
		b.Fatal(err)
	}
	srv := NewServer("", "", br, logr.Discard())
	srv.Listener = ln
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	return (<-srv.Listening()).String(), br
}

// BenchmarkTCPSendSync: 64 producers, each sending one message at a time and
// waiting for its answer (SEND_MESSAGE, as SendSync does), over one shared
// connection, as the producers of one Go client process share theirs.
func BenchmarkTCPSendSync(b *testing.B) {
	addr, br := benchServer(b, 8)
	benchSendSync(b, addr, br)
}

func benchSendSync(b *testing.B, addr string, br *broker.Broker) {
	mux := newMuxClient(b, addr)
	b.SetBytes(int64(len(benchBody)))
	b.SetParallelism(max(1, benchProducers/runtime.GOMAXPROCS(0)))
	var queue atomic.Int64
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			q := queue.Add(1) % 8
			res := mux.call(reqSendMessage, map[string]string{
				"producerGroup": "PID_bench", "topic": testInstance + "%bench", "defaultTopic": "TBW102", "defaultTopicQueueNums": "4",
				"queueId": strconv.FormatInt(q, 10), "sysFlag": "0", "bornTimestamp": strconv.FormatInt(time.Now().UnixMilli(), 10),
				"flag": "0", "properties": "TAGS\x01TagA\x02UNIQ_KEY\x01C0A8000100002A9F0000000000000001\x02", "reconsumeTimes": "0",
				"unitMode": "false", "maxReconsumeTimes": "0", "batch": "false",
			}, benchBody)
			if res.Code != codeSuccess {
				b.Errorf("send: %d %s", res.Code, res.Remark)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	reportWrites(b, br)
}

// BenchmarkBareTCPDurable is the floor for BenchmarkTCPSendSync: the same client
// and frames against a server that reads each frame, stores its body with the
// broker (fsynced, group-committed) and answers with an empty frame, concurrently
// per connection as the endpoint does, without the protocol's work (signature,
// header fields, properties, the answer's fields).
func BenchmarkBareTCPDurable(b *testing.B) {
	_, br := benchServer(b, 8)
	benchBareServer(b, br, func(body []byte) error {
		_, err := br.Publish(context.Background(), testInstance, "bench", broker.Message{Body: body, Queue: broker.AnyQueue})
		return err
	})
}

// BenchmarkBareTCP is the bare server storing nothing: what the client, the frames
// and the two cores allow before any durability.
func BenchmarkBareTCP(b *testing.B) {
	_, br := benchServer(b, 8)
	benchBareServer(b, br, func([]byte) error { return nil })
}

// BenchmarkBareTCPFsyncFloor is what the machine allows a durable send over TCP at
// all: the bare server appending each body to a group-committed file that only
// writes and fdatasyncs (internal/fsyncfloor), with no storage engine behind it.
func BenchmarkBareTCPFsyncFloor(b *testing.B) {
	_, br := benchServer(b, 8)
	l := fsyncfloor.ForBenchmark(b)
	benchBareServer(b, br, l.Append)
}

// benchBareServer runs benchSendSync against a server that reads each frame, passes
// its body to store and answers with an empty frame, concurrently per connection.
func benchBareServer(b *testing.B, br *broker.Broker, store func(body []byte) error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				var wmu sync.Mutex
				r := bufio.NewReaderSize(nc, 64<<10)
				for {
					cmd, err := ReadCommand(r)
					if err != nil {
						return
					}
					go func() {
						code := int16(codeSuccess)
						if store(cmd.Body) != nil {
							code = codeSystemError
						}
						frame, _ := AppendFrame(nil, &Command{Code: code, Opaque: cmd.Opaque, Flag: flagResponse})
						wmu.Lock()
						_, _ = nc.Write(frame)
						wmu.Unlock()
					}()
				}
			}()
		}
	}()
	benchSendSync(b, ln.Addr().String(), br)
}

// BenchmarkTCPPushConsume: a push consumer's pulls (32 messages each, as the Go
// client asks) over 8 queues, with the offset committed on each pull as the
// client piggybacks it, until b.N stored messages are consumed.
func BenchmarkTCPPushConsume(b *testing.B) {
	const queues = 8
	addr, br := benchServer(b, queues)
	// Fill the queues first, outside the timing.
	batch := make([]broker.Message, 0, 64)
	for sent := 0; sent < b.N; {
		batch = batch[:0]
		for len(batch) < cap(batch) && sent+len(batch) < b.N {
			batch = append(batch, broker.Message{Body: benchBody, Tag: "TagA", Queue: (sent + len(batch)) % queues})
		}
		if _, err := br.PublishBatch(context.Background(), testInstance, "bench", batch); err != nil {
			b.Fatal(err)
		}
		sent += len(batch)
	}
	hb := `{"clientID":"bench@1","producerDataSet":[],"consumerDataSet":[{"groupName":"` + testInstance + `%GID_bench","consumeType":"CONSUME_PASSIVELY","messageModel":"CLUSTERING","consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","subscriptionDataSet":[{"topic":"` + testInstance + `%bench","subString":"*","expressionType":"TAG"}],"unitMode":false}]}`
	// One client connection, as one Go client process shares one per broker.
	c := dialRaw(b, addr)
	if res := c.call(reqHeartbeat, nil, []byte(hb), testAK, testSK); res.Code != codeSuccess {
		b.Fatalf("heartbeat: %d %s", res.Code, res.Remark)
	}
	mux := newMuxClient(b, addr)
	b.SetBytes(int64(len(benchBody)))
	var consumed atomic.Int64
	start := time.Now()
	b.ResetTimer()
	var wg sync.WaitGroup
	for q := range queues {
		wg.Go(func() {
			offset := int64(0)
			for consumed.Load() < int64(b.N) {
				res := mux.call(reqPullMessage, map[string]string{
					"consumerGroup": testInstance + "%GID_bench", "topic": testInstance + "%bench", "queueId": strconv.Itoa(q),
					"queueOffset": strconv.FormatInt(offset, 10), "maxMsgNums": "32", "sysFlag": "3",
					"commitOffset": strconv.FormatInt(offset, 10), "suspendTimeoutMillis": "200", "subscription": "", "subVersion": "0", "expressionType": "TAG",
				}, nil)
				switch res.Code {
				case codeSuccess:
					consumed.Add(int64(countRecords(res.Body)))
				case codePullNotFound:
					if offset >= int64(b.N/queues+1) {
						return
					}
				default:
					b.Errorf("pull: %d %s", res.Code, res.Remark)
					return
				}
				offset, _ = strconv.ParseInt(res.ExtFields["nextBeginOffset"], 10, 64)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if consumed.Load() < int64(b.N) {
		b.Fatalf("consumed %d of %d", consumed.Load(), b.N)
	}
	b.ReportMetric(float64(consumed.Load())/time.Since(start).Seconds(), "msg/s")
}

// countRecords walks a pull body by the records' sizes.
func countRecords(body []byte) int {
	n := 0
	for len(body) >= 4 {
		size := int(binary.BigEndian.Uint32(body))
		if size <= 0 || size > len(body) {
			break
		}
		body = body[size:]
		n++
	}
	return n
}

func reportWrites(b *testing.B, br *broker.Broker) {
	if ws := br.WriteStats(); ws.Commits > 0 {
		b.ReportMetric(float64(ws.Messages)/float64(ws.Commits), "msgs/fsync")
	}
}

// muxClient shares one connection among concurrent callers, matching answers to
// requests by opaque, as the Go client does.
type muxClient struct {
	tb      testing.TB
	conn    net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	next    int32
	waiting map[int32]chan *Command
}

func newMuxClient(tb testing.TB, addr string) *muxClient {
	raw := dialRaw(tb, addr)
	m := &muxClient{tb: tb, conn: raw.conn, waiting: map[int32]chan *Command{}}
	go func() {
		for {
			res, err := ReadCommand(raw.r)
			if err != nil {
				return
			}
			m.mu.Lock()
			ch := m.waiting[res.Opaque]
			delete(m.waiting, res.Opaque)
			m.mu.Unlock()
			if ch != nil && res.IsResponse() {
				ch <- res
			}
		}
	}()
	return m
}

func (m *muxClient) call(code int16, ext map[string]string, body []byte) *Command {
	ch := make(chan *Command, 1)
	m.mu.Lock()
	m.next++
	opaque := m.next
	m.waiting[opaque] = ch
	m.mu.Unlock()
	cmd := &Command{Code: code, Opaque: opaque, ExtFields: ext, Body: body}
	Sign(cmd, testAK, testSK)
	frame, err := AppendFrame(nil, cmd)
	if err != nil {
		m.tb.Fatal(err)
	}
	m.wmu.Lock()
	_, err = m.conn.Write(frame)
	m.wmu.Unlock()
	if err != nil {
		m.tb.Fatal(err)
	}
	select {
	case res := <-ch:
		return res
	case <-time.After(30 * time.Second):
		m.tb.Fatal("no answer within 30 s")
		return nil
	}
}
