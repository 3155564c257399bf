package mqgrpc_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// Calls that announce large requests and stop half-way hold no more than their
// instance's share of memory, taken before their requests are read: past it they
// wait unread, and are refused with RESOURCE_EXHAUSTED if nothing frees in time.
// Another instance's calls are served meanwhile. Everything is given back when
// they end.
func TestStalledRequestsStayWithinTheirInstancesMemory(t *testing.T) {
	const share = 12 << 20 // two of the largest requests (5 MiB each), not three
	e := newEnvWith(t, func(s *mqgrpc.Server) {
		s.PlainText = func(net.Addr) bool { return true } // frames by hand, beside TLS
		s.Limits.InstanceMemory = share
		s.Limits.RequestTimeout = 3 * time.Second
	})
	const otherInstance, otherAK, otherSK = "MQ_INST_other", "ORDLotheraccesskey00000", "othersecret0000000000000000"
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: otherInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: otherAK, AccessKeySecret: otherSK}}}); err != nil {
		t.Fatal(err)
	}

	// What the instance's calls hold, sampled all along.
	var most atomic.Int64
	sampled := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if held := int64(e.server.MemoryInUse(testInstance)); held > most.Load() {
				most.Store(held)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	c := dialRaw(t, e.endpoint)
	const stalled = 6
	for i := range stalled {
		c.open(uint32(2*i+1), pb.MessagingService_SendMessage_FullMethodName, signedMD(), 4<<20, 32<<10)
	}
	// Two of them are being read, each holding the largest request.
	deadline := time.Now().Add(2 * time.Second)
	for e.server.MemoryInUse(testInstance) < 2*(4<<20) {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled calls hold %d bytes", e.server.MemoryInUse(testInstance))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Another instance is served while they wait, from a budget of its own.
	ctx, cancel := context.WithTimeout(signed(context.Background(), otherAK, otherSK, otherInstance), time.Second)
	defer cancel()
	res, err := rawClient(t, e).QueryRoute(ctx, &pb.QueryRouteRequest{Topic: &pb.Resource{ResourceNamespace: otherInstance, Name: "none"}})
	if err != nil || res.Status.Code != pb.Code_TOPIC_NOT_FOUND {
		t.Fatalf("another instance's call while the first's memory is held: %v %v", res, err)
	}
	for i := range stalled {
		if status := c.wait(t, uint32(2*i+1), 10*time.Second); status == "0" || status == "" {
			t.Fatalf("stalled call %d ended with status %q", i, status)
		}
	}
	close(stop)
	<-sampled
	if most.Load() > share {
		t.Fatalf("the instance's calls held up to %d bytes, past its share of %d", most.Load(), share)
	}
	deadline = time.Now().Add(5 * time.Second)
	for e.server.MemoryInUse("") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still held after every call ended", e.server.MemoryInUse(""))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A call that is not signed right is answered before its request is read: its
// announced request costs nothing.
func TestAnUnsignedCallIsAnsweredUnread(t *testing.T) {
	e := newEnvWith(t, func(s *mqgrpc.Server) { s.TLS = nil })
	c := dialRaw(t, e.endpoint)
	md := signedMD()
	md.Set("authorization", "MQv2-HMAC-SHA1 Credential=nobody, SignedHeaders=x-mq-date-time, Signature=00")
	c.open(1, pb.MessagingService_SendMessage_FullMethodName, md, 4<<20, 32<<10)
	if status := c.wait(t, 1, 5*time.Second); status != "0" {
		t.Fatalf("the unsigned call ended with grpc-status %q, want 0 and UNAUTHORIZED in its answer", status)
	}
	if held := e.server.MemoryInUse(""); held != 0 {
		t.Fatalf("an unsigned call holds %d bytes", held)
	}
}
