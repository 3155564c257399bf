package mqhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// memoryServer runs the endpoint with small memory budgets and a second
// instance, "other", with its own key and topic "t".
func memoryServer(t *testing.T, lim Limits) (addr string, srv *Server, b *broker.Broker) {
	t.Helper()
	addr, b = startServer(t, broker.Limits{}, func(s *Server) { s.Limits = lim; srv = s })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_other", Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: "AK_other", AccessKeySecret: "SK_other"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureTopic("MQ_INST_other", broker.TopicConfig{Name: "t", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	return addr, srv, b
}

// holdBodies opens n connections, each sending a signed publish that declares
// size bytes of body and sends sent of them. It returns the connections.
func holdBodies(t *testing.T, addr string, n, size, sent int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	part := make([]byte, sent)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := io.WriteString(c, signedHead(t, addr, size, "")); err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = c.Write(part) }() // as far as the socket buffers take it
		conns[i] = c
	}
	return conns
}

// TestATenantsBodiesAreBudgeted has one tenant send 20 signed publishes that each
// declare 4 MiB, send 3 MiB and hold the rest back. A body's declared size is
// taken from the tenant's memory (8 MiB here) before it is read: two fit, the
// other 18 wait holding nothing and are answered 503 Throttling at their
// deadline, the heap holds about the budget (not 80 MiB, nor 60), and another
// tenant publishes as before. When the connections end, everything comes back.
func TestATenantsBodiesAreBudgeted(t *testing.T) {
	const perInstance, body = 8 << 20, 4 << 20
	addr, srv, _ := memoryServer(t, Limits{InstanceMemory: perInstance, WriteTimeout: 8 * time.Second, ReadTimeout: 5 * time.Second})
	var before, during runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := holdBodies(t, addr, 20, body, 3<<20)
	mine := srv.memory.Tenant(testInstance)
	eventually(t, 10*time.Second, "the tenant's budget taken, the rest waiting", func() bool {
		return mine.InUse() == perInstance && mine.Waiting() == 18
	})
	if used := mine.InUse(); used > perInstance {
		t.Errorf("the tenant's bodies hold %d bytes, past its %d", used, perInstance)
	}
	runtime.GC()
	runtime.ReadMemStats(&during)
	heap := int64(during.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("20 bodies of 4 MiB, 3 MiB sent: heap +%d MiB, the tenant's budget %d MiB, %d waiting", heap>>20, mine.InUse()>>20, mine.Waiting())
	if heap > 24<<20 {
		t.Errorf("the heap grew by %d MiB for bodies of one tenant", heap>>20)
	}
	// The neighbour is served meanwhile.
	other := &Client{Endpoint: "http://" + addr, AccessKeyID: "AK_other", AccessKeySecret: "SK_other"}
	if _, err := other.Publish(context.Background(), "t", "hello", "", ""); err != nil {
		t.Fatalf("the other tenant's publish: %v", err)
	}
	// The waiting ones are refused in the protocol's terms at their deadline; the
	// others lose their connection at the read timeout.
	throttled := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "HTTP/1.1 503") && strings.Contains(string(buf[:n]), "<Code>Throttling</Code>") {
			throttled++
		}
	}
	if throttled != 18 {
		t.Errorf("%d of the 18 waiting requests were answered 503 Throttling", throttled)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	eventually(t, 10*time.Second, "every budget given back", func() bool { return mine.InUse() == 0 && srv.memory.All().InUse() == 0 })
}

// TestAPopWaitsOnItsTenantsMemory: while a tenant's budget is taken by held
// bodies, its pop cannot read (and is answered Throttling at its deadline),
// and another tenant's pop reads as before.
func TestAPopWaitsOnItsTenantsMemory(t *testing.T) {
	const perInstance = 4 << 20
	addr, srv, b := memoryServer(t, Limits{InstanceMemory: perInstance, WriteTimeout: 8 * time.Second, ReadTimeout: 5 * time.Second})
	for _, inst := range []string{testInstance, "MQ_INST_other"} {
		if _, err := b.Publish(context.Background(), inst, "t", broker.Message{Body: []byte("m"), Queue: broker.AnyQueue}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.EnsureGroup("MQ_INST_other", broker.GroupConfig{ID: "GID_http", Protocol: broker.HTTP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	holdBodies(t, addr, 1, perInstance, perInstance-1)
	mine := srv.memory.Tenant(testInstance)
	eventually(t, 10*time.Second, "the tenant's budget taken", func() bool { return mine.InUse() == perInstance })
	const pop = "/topics/t/messages?consumer=GID_http&numOfMessages=16"
	me := &Client{Endpoint: "http://" + addr, AccessKeyID: testAK, AccessKeySecret: testSK}
	status, body, err := me.Do(context.Background(), http.MethodGet, pop, nil, nil)
	if err != nil || status != http.StatusServiceUnavailable || !strings.Contains(string(body), "Throttling") {
		t.Fatalf("a pop with its tenant's memory taken: %d %s %v", status, body, err)
	}
	other := &Client{Endpoint: "http://" + addr, AccessKeyID: "AK_other", AccessKeySecret: "SK_other"}
	status, body, err = other.Do(context.Background(), http.MethodGet, pop, nil, nil)
	if err != nil || status != http.StatusOK {
		t.Fatalf("the other tenant's pop: %d %s %v", status, body, err)
	}
	// Nothing was taken from the queue for the refused pop: the message is there.
	eventually(t, 10*time.Second, "the held body's deadline", func() bool { return mine.InUse() == 0 })
	status, body, err = me.Do(context.Background(), http.MethodGet, pop, nil, nil)
	if err != nil || status != http.StatusOK || !strings.Contains(string(body), "<MessageBody>m</MessageBody>") {
		t.Fatalf("the pop once the memory came back: %d %s %v", status, body, err)
	}
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
