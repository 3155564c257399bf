package mqgrpc_test

import (
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// A call whose request does not arrive whole in time is answered and let go,
// whatever it announced: a client that opens sends and trickles them, or stops
// half-way through a large message, cannot make the server hold what it sent.
// Calls that deliver their requests are untouched, however long they then run.
func TestACallWhoseRequestIsLateIsCut(t *testing.T) {
	e := newEnvWith(t, func(s *mqgrpc.Server) {
		s.TLS = nil // plain text, to speak HTTP/2 frames by hand
		s.Limits.RequestTimeout = time.Second
	})
	c := dialRaw(t, e.endpoint)
	// A signed send whose message is announced as 4 MiB, of which 32 KiB are sent.
	c.open(1, pb.MessagingService_SendMessage_FullMethodName, signedMD(), 4<<20, 32<<10)
	opened := time.Now()
	if status := c.wait(t, 1, 10*time.Second); status == "0" || status == "" {
		t.Fatalf("the stalled call ended with status %q", status)
	}
	if held := time.Since(opened); held < 900*time.Millisecond || held > 5*time.Second {
		t.Fatalf("the stalled call was cut after %v, want about the 1 s request timeout", held)
	}

	// A long poll that delivered its request outlives the request timeout.
	tls := newEnvWith(t, func(s *mqgrpc.Server) { s.Limits.RequestTimeout = time.Second })
	tls.topic("normal", broker.Normal, 1)
	tls.group("GID_poll", broker.HTTP, 0)
	consumer := tls.consumer("GID_poll", 3*time.Second, "normal")
	start := time.Now()
	if _, err := consumer.Receive(t.Context(), 1, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("an empty long poll: %v", err)
	}
	if waited := time.Since(start); waited < 2*time.Second {
		t.Fatalf("the long poll returned after %v: cut by the request timeout?", waited)
	}
}
