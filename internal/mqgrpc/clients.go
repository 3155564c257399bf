package mqgrpc

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// client is one client object of an application, as its Settings describe it.
// The client id names it: one per client object (2.1).
type client struct {
	instance, id string
	typ          pb.ClientType
	// group is a consumer's group; topics are a producer's publishing topics or
	// a consumer's subscribed ones (broker-side names).
	group  string
	topics []string
	// namespace is the one the client names its resources in ("" for none),
	// which resources sent to it carry back.
	namespace string
	// longPolling is how long a consumer's receives wait when the request says
	// nothing: what the Settings reply told it.
	longPolling time.Duration
	// lastSeen is when the client last called (unix nanoseconds).
	lastSeen atomic.Int64
	// stream is the client's live Telemetry stream, nil if none: where commands
	// to the client go.
	stream atomic.Pointer[telemetryStream]
}

func (c *client) touch(now time.Time) { c.lastSeen.Store(now.UnixNano()) }

type clientKey struct{ instance, id string }

// registry holds the clients that sent Settings, per instance and client id.
type registry struct {
	mu      sync.RWMutex
	clients map[clientKey]*client
}

func newRegistry() *registry { return &registry{clients: map[clientKey]*client{}} }

// get returns the client of the call, nil if it sent no Settings (or expired).
func (r *registry) get(instance, id string) *client {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.clients[clientKey{instance, id}]
}

// put records a client's (new) Settings, keeping its Telemetry stream.
func (r *registry) put(c *client, now time.Time) {
	c.touch(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	k := clientKey{c.instance, c.id}
	if old := r.clients[k]; old != nil {
		c.stream.Store(old.stream.Load())
	}
	r.clients[k] = c
}

// remove forgets a client.
func (r *registry) remove(instance, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.clients, clientKey{instance, id})
}

// expire forgets the clients silent since before.
func (r *registry) expire(before time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, c := range r.clients {
		if c.lastSeen.Load() < before.UnixNano() {
			delete(r.clients, k)
		}
	}
}

// touch records a call of a known client.
func (r *registry) touch(instance, id string, now time.Time) *client {
	c := r.get(instance, id)
	if c != nil {
		c.touch(now)
	}
	return c
}

// producers returns, for each topic of each instance, the live producer that
// declared it and called last: the one its check-backs go to.
func (r *registry) producers() map[clientKey]*client {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := map[clientKey]*client{}
	for _, c := range r.clients {
		if c.typ != pb.ClientType_PRODUCER || c.stream.Load() == nil {
			continue
		}
		for _, t := range c.topics {
			k := clientKey{c.instance, t}
			if o := out[k]; o == nil || o.lastSeen.Load() < c.lastSeen.Load() {
				out[k] = c
			}
		}
	}
	return out
}

// telemetryStream is one Telemetry stream, on which commands to the client go.
type telemetryStream struct {
	mu   sync.Mutex
	send func(*pb.TelemetryCommand) error
	// busy is set while the server pushes commands: one push at a time, and a
	// client that does not read holds up none but its own.
	busy atomic.Bool

	// closed is set once the stream's call returns: nothing is sent on it
	// after. It is not under mu, which a send blocked by a client that does not
	// read holds until the call's end.
	closed atomic.Bool
}

var errStreamClosed = errors.New("the Telemetry stream has ended")

func (t *telemetryStream) write(cmd *pb.TelemetryCommand) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return errStreamClosed
	}
	return t.send(cmd)
}

// close ends what may be sent on the stream; the call returns after it.
func (t *telemetryStream) close() { t.closed.Store(true) }
