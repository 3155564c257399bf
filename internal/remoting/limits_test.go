package remoting

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/orderly-dev/orderly/internal/broker"
)

// These tests speak frames over TCP, as a careless or hostile client would:
// deadlines, frame memory, connection caps and quotas. requests_test.go has the
// bounds on what requests carry, tenant quotas and check-backs.

// signedFrame returns the frame of a request signed with the test instance's key.
func signedFrame(t testing.TB, code int16, opaque int32, ext map[string]string, body []byte) []byte {
	t.Helper()
	cmd := &Command{Code: code, Opaque: opaque, ExtFields: ext, Body: body}
	Sign(cmd, testAK, testSK)
	frame, err := AppendFrame(nil, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return frame
}

// sendExt is a SEND_MESSAGE header to a topic of the test instance.
func sendExt(topic, props string) map[string]string {
	return map[string]string{"producerGroup": "PID_raw", "topic": topic, "queueId": "0", "sysFlag": "0",
		"bornTimestamp": "0", "flag": "0", "properties": props, "reconsumeTimes": "0"}
}

// eventually polls cond until it holds, failing after limit.
func eventually(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
	}
}

// closedWithin reads c until the server closes it and returns how long that took
// and what it sent; it fails if c is still open after limit.
func closedWithin(t testing.TB, c net.Conn, limit time.Duration) (time.Duration, int64) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(limit))
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection is still open after %v", limit)
	}
	return time.Since(start), n
}

func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestAFrameMustArriveWithinItsDeadline(t *testing.T) {
	e := newEnvWith(t, broker.Limits{}, func(s *Server) { s.Limits.FrameTimeout = 300 * time.Millisecond })
	// A prefix announcing 15 MiB, then 2 KiB of it, then nothing.
	stalled := dial(t, e.nameAddr)
	if _, err := stalled.Write(prefix(15<<20, 2<<10)); err != nil {
		t.Fatal(err)
	}
	// A frame whose bytes trickle in, one every 20 ms: each byte arrives in time,
	// the frame does not.
	trickled := dial(t, e.nameAddr)
	go func() {
		frame := signedFrame(t, reqGetRouteInfo, 1, map[string]string{"topic": "TopicA"}, nil)
		for _, b := range frame {
			if _, err := trickled.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond) // the client's pace
		}
	}()
	for name, c := range map[string]net.Conn{"stalled": stalled, "trickled": trickled} {
		took, n := closedWithin(t, c, 10*time.Second)
		if took > 3*time.Second || n != 0 {
			t.Errorf("%s frame: closed after %v with %d bytes sent back", name, took, n)
		}
	}
	// A frame under 4 KiB, and the start of a larger one, are charged to no budget.
	if used := e.server.memory.InUse(); used != 0 {
		t.Errorf("%d bytes still charged", used)
	}
}

func TestAnIdleConnectionIsClosed(t *testing.T) {
	e := newEnvWith(t, broker.Limits{}, func(s *Server) { s.Limits.IdleTimeout = 300 * time.Millisecond })
	e.topic("TopicA", broker.Normal, 1)
	idle := dial(t, e.nameAddr)
	// One that sends a request every 100 ms for a second stays open.
	busy := e.raw()
	for range 10 {
		if res := busy.call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("route: %d %s", res.Code, res.Remark)
		}
		time.Sleep(100 * time.Millisecond) // the client's pace
	}
	if took, _ := closedWithin(t, idle, 10*time.Second); took > 3*time.Second {
		t.Errorf("an idle connection was closed after %v", took)
	}
}

// TestSlowFramesHoldNoMemoryTheyDoNotCarry: 200 connections each announce a 15 MiB
// frame and send 6 KiB of it. Allocating what the prefixes announce would take 3
// GiB; the server holds what arrived.
// signedStart returns the start of a signed send whose body announces size bytes:
// its header and sent bytes of the body.
func signedStart(t *testing.T, size, sent int) []byte {
	t.Helper()
	f := signedFrame(t, reqSendMessage, 1, sendExt("TopicA", ""), make([]byte, size))
	header := int(binary.BigEndian.Uint32(f[4:]) & 0xFFFFFF)
	return f[:8+header+sent]
}

func TestSlowFramesHoldNoMemoryTheyDoNotCarry(t *testing.T) {
	e := newEnv(t)
	const conns = 200
	start := signedStart(t, 15<<20, 6<<10)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	held := make([]net.Conn, conns)
	for i := range held {
		held[i] = dial(t, e.nameAddr)
		if _, err := held[i].Write(start); err != nil {
			t.Fatal(err)
		}
	}
	// Each frame grew from 4 KiB to 8 KiB as its bytes came; that is all charged.
	eventually(t, 10*time.Second, "every connection read its bytes", func() bool { return e.server.memory.InUse() == conns*8<<10 })
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	stack := int64(after.StackInuse) - int64(before.StackInuse)
	t.Logf("%d connections announcing 15 MiB each: heap +%d KiB (%d bytes each, both ends), stacks +%d KiB, frame budget %d KiB",
		conns, heap>>10, heap/conns, stack>>10, e.server.memory.InUse()>>10)
	if heap > 32<<20 {
		t.Errorf("heap grew by %d MiB", heap>>20)
	}
	for _, c := range held {
		_ = c.Close()
	}
	eventually(t, 10*time.Second, "the budget given back", func() bool { return e.server.memory.InUse() == 0 })
}

func TestFrameMemoryIsBudgeted(t *testing.T) {
	e := newEnvWith(t, broker.Limits{}, func(s *Server) {
		s.Limits.Memory = 1 << 20
		s.Limits.FrameTimeout = 4 * time.Second
	})
	e.topic("TopicA", broker.Normal, 1)
	mem := e.server.memory
	big := signedFrame(t, reqSendMessage, 1, sendExt("TopicA", ""), make([]byte, 3<<20))
	small := signedFrame(t, reqSendMessage, 2, sendExt("TopicA", ""), make([]byte, 64<<10))

	// A large frame half sent holds the whole budget: its buffer grew to 1 MiB.
	a := dialRaw(t, e.nameAddr)
	if _, err := a.conn.Write(big[:700<<10]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the large frame charged", func() bool { return mem.InUse() == 1<<20 })
	// Small frames need none of it.
	if res := e.raw().call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("route while the budget is taken: %d %s", res.Code, res.Remark)
	}
	// A frame over 4 KiB waits for memory...
	b := dialRaw(t, e.nameAddr)
	if _, err := b.conn.Write(small); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the second frame waiting", func() bool { return mem.Waiting() == 1 })
	// ...until the first is read (past the budget: it holds all there is) and served.
	if _, err := a.conn.Write(big[700<<10:]); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*rawClient{"large": a, "waiting": b} {
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		res, err := ReadCommand(c.r)
		if err != nil || res.Code != codeSuccess {
			t.Fatalf("%s frame: %+v %v", name, res, err)
		}
	}
	eventually(t, 10*time.Second, "the budget given back", func() bool { return mem.InUse() == 0 })

	// A frame whose bytes stop is dropped at its deadline, and the frame waiting
	// for its memory goes on.
	a2, d := dial(t, e.nameAddr), dialRaw(t, e.nameAddr)
	if _, err := a2.Write(big[:700<<10]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the large frame charged", func() bool { return mem.InUse() == 1<<20 })
	// The second frame starts half a frame timeout later, so that its own
	// deadline is not the moment the stalled one's memory comes back: both have
	// the same timeout, and the scenario is one ending before the other.
	time.Sleep(time.Second)
	if _, err := d.conn.Write(small); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the second frame waiting", func() bool { return mem.Waiting() == 1 })
	if took, n := closedWithin(t, a2, 15*time.Second); took > 8*time.Second || n != 0 {
		t.Errorf("the stalled frame: closed after %v with %d bytes answered", took, n)
	}
	_ = d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if res, err := ReadCommand(d.r); err != nil || res.Code != codeSuccess {
		t.Fatalf("the waiting frame: %+v %v", res, err)
	}
	eventually(t, 10*time.Second, "the budget given back", func() bool { return mem.InUse() == 0 && mem.Waiting() == 0 })

	// A request that has no use for its body gives its memory back once its
	// signature is checked: a held pull carrying 900 KiB holds none of it.
	e.group("GID_raw", broker.TCP, 16)
	consumer := e.raw()
	hb := `{"clientID":"raw@1","consumerDataSet":[{"groupName":"GID_raw","subscriptionDataSet":[{"topic":"TopicA","subString":"*"}]}]}`
	if res := consumer.call(reqHeartbeat, nil, []byte(hb), testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("heartbeat: %d %s", res.Code, res.Remark)
	}
	_, end, err := e.broker.QueueOffsets(testInstance, "TopicA", 0)
	if err != nil {
		t.Fatal(err)
	}
	pull := map[string]string{"consumerGroup": "GID_raw", "topic": "TopicA", "queueId": "0", "queueOffset": fmt.Sprint(end),
		"maxMsgNums": "32", "sysFlag": "2", "suspendTimeoutMillis": "3000"}
	if _, err := consumer.conn.Write(signedFrame(t, reqPullMessage, 99, pull, make([]byte, 900<<10))); err != nil {
		t.Fatal(err)
	}
	// The request counts in flight from before its handler runs; the memory goes
	// back once the handler has checked the signature, well within the hold.
	eventually(t, 2*time.Second, "the pull held, holding no memory", func() bool {
		e.server.connsMu.Lock()
		defer e.server.connsMu.Unlock()
		for c := range e.server.conns {
			if len(c.inFlight) == 1 {
				return mem.InUse() == 0
			}
		}
		return false
	})
}

// logCounter counts log lines containing a message.
type logCounter struct {
	mu    sync.Mutex
	lines []string
}

func (l *logCounter) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, msg) {
			n++
		}
	}
	return n
}

func TestConnectionCaps(t *testing.T) {
	logs := &logCounter{}
	e := newEnvWith(t, broker.Limits{}, func(s *Server) {
		s.Limits.MaxConns, s.Limits.MaxConnsPerHost = 10, 2
		s.Log = funcr.New(func(prefix, args string) {
			logs.mu.Lock()
			logs.lines = append(logs.lines, args)
			logs.mu.Unlock()
		}, funcr.Options{})
	})
	e.topic("TopicA", broker.Normal, 1)
	route := map[string]string{"topic": "TopicA"}
	var held []*rawClient
	for range 2 {
		c := e.raw()
		if res := c.call(reqGetRouteInfo, route, nil, testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("route: %d", res.Code)
		}
		held = append(held, c)
	}
	// Past the cap of one address, connections are closed without a word (remoting
	// has nothing a server says first), and logged once.
	for range 5 {
		if _, n := closedWithin(t, dial(t, e.nameAddr), 10*time.Second); n != 0 {
			t.Fatalf("a refused connection got %d bytes", n)
		}
	}
	if n := logs.count("Refusing connections past the connection caps"); n != 1 {
		t.Errorf("5 refusals from one address logged %d times; want once", n)
	}
	// Another address is served (127.0.0.2 is loopback too).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other, err := d.Dial("tcp", e.nameAddr)
	if err != nil {
		t.Skipf("no second loopback address: %v", err)
	}
	t.Cleanup(func() { _ = other.Close() })
	if _, err := other.Write(signedFrame(t, reqGetRouteInfo, 1, route, nil)); err != nil {
		t.Fatal(err)
	}
	_ = other.SetReadDeadline(time.Now().Add(10 * time.Second))
	if res, err := ReadCommand(bufioReader(other)); err != nil || res.Code != codeSuccess {
		t.Fatalf("another address: %+v %v", res, err)
	}
	// A connection given back makes room again.
	_ = held[0].conn.Close()
	eventually(t, 10*time.Second, "a new connection served", func() bool {
		c, err := net.Dial("tcp", e.nameAddr)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(signedFrame(t, reqGetRouteInfo, 1, route, nil)); err != nil {
			return false
		}
		res, err := ReadCommand(bufioReader(c))
		return err == nil && res.Code == codeSuccess
	})
}

func TestAnInstancesConnectionQuota(t *testing.T) {
	e := newEnvWith(t, broker.Limits{Connections: 1}, nil)
	e.topic("TopicA", broker.Normal, 1)
	route := map[string]string{"topic": "TopicA"}
	usage := func() int {
		u, err := e.broker.Usage(testInstance)
		if err != nil {
			t.Fatal(err)
		}
		return u.Connections
	}
	first := e.raw()
	if res := first.call(reqGetRouteInfo, route, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("first connection: %d %s", res.Code, res.Remark)
	}
	// Unauthenticated requests count for no instance.
	if res := e.raw().call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, "", ""); res.Code != codeNoPermission {
		t.Fatalf("unsigned: %d %q", res.Code, res.Remark)
	}
	second := e.raw()
	res := second.call(reqGetRouteInfo, route, nil, testAK, testSK)
	if res.Code != codeSystemBusy || !strings.Contains(res.Remark, "limit of 1 connections") {
		t.Fatalf("second connection: %d %q; want SYSTEM_BUSY", res.Code, res.Remark)
	}
	if _, n := closedWithin(t, second.conn, 10*time.Second); n != 0 {
		t.Fatalf("%d more bytes after the refusal", n)
	}
	if u := usage(); u != 1 {
		t.Fatalf("%d connections counted", u)
	}
	_ = first.conn.Close()
	eventually(t, 10*time.Second, "the connection given back", func() bool { return usage() == 0 })
	if res := e.raw().call(reqGetRouteInfo, route, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("after the first closed: %d %s", res.Code, res.Remark)
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 64<<10) }

// TestPullAnswersAClientDoesNotReadAreBudgeted sends 200 pulls, each answered
// with 1 MiB of records, on a connection that never reads. The answers take the
// connection's memory until written: once it is taken, the next pulls wait
// instead of reading, the process's heap holds about the budget, not 200 MiB,
// and the writer's timeout closes the connection and gives everything back.
// Another connection's pulls are served meanwhile.
func TestPullAnswersAClientDoesNotReadAreBudgeted(t *testing.T) {
	const connMemory = 4 << 20
	e := newEnvWith(t, broker.Limits{}, func(s *Server) {
		s.Limits.ConnMemory = connMemory
		s.Limits.WriteTimeout = 3 * time.Second
	})
	e.topic("TopicA", broker.Normal, 1)
	e.group("GID_raw", broker.TCP, 16)
	for range 8 { // 256 KiB each: a pull of 32 returns three (1 MiB bounds it)
		if _, err := e.broker.Publish(t.Context(), testInstance, "TopicA", broker.Message{Body: make([]byte, 256<<10), Queue: 0}); err != nil {
			t.Fatal(err)
		}
	}
	subscribe := func(c *rawClient, id string) {
		hb := `{"clientID":"` + id + `","consumerDataSet":[{"groupName":"GID_raw","subscriptionDataSet":[{"topic":"TopicA","subString":"*"}]}]}`
		if res := c.call(reqHeartbeat, nil, []byte(hb), testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("heartbeat: %d %s", res.Code, res.Remark)
		}
	}
	pull := func(opaque int32) []byte {
		return signedFrame(t, reqPullMessage, opaque, map[string]string{"consumerGroup": "GID_raw", "topic": "TopicA",
			"queueId": "0", "queueOffset": "0", "maxMsgNums": "32", "sysFlag": "0"}, nil)
	}
	hog := e.raw()
	subscribe(hog, "hog@1")
	var before, during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var frames []byte
	for i := range 200 {
		frames = append(frames, pull(int32(1000+i))...)
	}
	if _, err := hog.conn.Write(frames); err != nil {
		t.Fatal(err)
	}
	mem := e.server.memory
	eventually(t, 10*time.Second, "the connection's budget taken by answers", func() bool { return mem.InUse() >= connMemory-(1<<20) })
	// A neighbour's pull is served while the hog's wait.
	good := e.raw()
	subscribe(good, "good@1")
	res := good.call(reqPullMessage, map[string]string{"consumerGroup": "GID_raw", "topic": "TopicA",
		"queueId": "0", "queueOffset": "0", "maxMsgNums": "32", "sysFlag": "0"}, nil, testAK, testSK)
	if res.Code != codeSuccess || len(res.Body) < 512<<10 {
		t.Fatalf("the neighbour's pull: code %d, %d bytes", res.Code, len(res.Body))
	}
	runtime.GC()
	runtime.ReadMemStats(&during)
	heap := int64(during.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("200 unread pull answers of 1 MiB: heap +%d MiB, budget in use %d MiB", heap>>20, mem.InUse()>>20)
	if used := mem.InUse(); used > connMemory+(1<<20) {
		t.Errorf("the hog's answers hold %d bytes, past its %d", used, connMemory)
	}
	if heap > 48<<20 {
		t.Errorf("the heap grew by %d MiB for answers nobody reads", heap>>20)
	}
	// The writer gives up on the hog (which reads nothing, even now); everything
	// it held comes back.
	eventually(t, 30*time.Second, "the hog closed and its budget given back", func() bool {
		e.server.connsMu.Lock()
		defer e.server.connsMu.Unlock()
		return len(e.server.conns) == 1 && mem.InUse() == 0
	})
}

// TestALargeFrameWithoutAKnownKeyIsRefusedUnread: a frame whose body needs more
// than 4 KiB is read past its header only if the header names a known AccessKey.
// Unsigned, or signed with a key nobody has, it is answered NO_PERMISSION at
// once, before any of its body arrives, holds no memory, and the connection
// ends, since the body still on the wire cannot be read as frames.
func TestALargeFrameWithoutAKnownKeyIsRefusedUnread(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicA", broker.Normal, 1)
	for name, cmd := range map[string]*Command{
		"unsigned": {Code: reqSendMessage, Opaque: 7, ExtFields: sendExt("TopicA", ""), Body: make([]byte, 1<<20)},
		"unknown key": func() *Command {
			c := &Command{Code: reqSendMessage, Opaque: 7, ExtFields: sendExt("TopicA", ""), Body: make([]byte, 1<<20)}
			Sign(c, "LTAI-nobody", "whatever")
			return c
		}(),
	} {
		f, err := AppendFrame(nil, cmd)
		if err != nil {
			t.Fatal(err)
		}
		header := int(binary.BigEndian.Uint32(f[4:]) & 0xFFFFFF)
		c := dialRaw(t, e.nameAddr)
		if _, err := c.conn.Write(f[:8+header]); err != nil { // the header only
			t.Fatal(err)
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		res, err := ReadCommand(c.r)
		if err != nil || res.Code != codeNoPermission || res.Opaque != 7 {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		if took, _ := closedWithin(t, c.conn, 10*time.Second); took > 5*time.Second {
			t.Errorf("%s: the connection stayed open %v", name, took)
		}
		if used := e.server.memory.InUse(); used != 0 {
			t.Errorf("%s: %d bytes of frame memory held", name, used)
		}
	}
	// Signed with the instance's key, the same frame is read and served.
	if res := e.raw().call(reqSendMessage, sendExt("TopicA", ""), make([]byte, 1<<20), testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("the signed frame: %d %s", res.Code, res.Remark)
	}
}
