package remoting

import (
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/connlimit"
)

// Limits bound what connections, and what a client sends on them, may make the
// server hold (docs/remoting.md, "Limits"). Zero fields take the defaults.
type Limits struct {
	// IdleTimeout closes a connection that sends no frame for this long (default
	// 120 s: the clients heartbeat every 30 s).
	IdleTimeout time.Duration
	// FrameTimeout bounds reading one frame once its first byte has arrived, memory
	// waited for included (default 30 s: 16 MiB needs 550 KiB/s).
	FrameTimeout time.Duration
	// WriteTimeout bounds writing what is queued for a connection; a client that
	// reads nothing for this long loses its connection (default 30 s).
	WriteTimeout time.Duration
	// MaxConns and MaxConnsPerHost cap concurrent connections in total and per
	// client address (defaults: connlimit's).
	MaxConns, MaxConnsPerHost int
	// Memory bounds the bytes of request frames larger than 4 KiB that all
	// connections together hold, being read or being served, compressed bodies
	// inflated included (default 128 MiB);
	// ConnMemory bounds one connection's (default 32 MiB, two of the largest frames).
	// A frame's buffer grows as its bytes arrive, so a length prefix costs nothing
	// until the bytes it announces come; a frame that cannot get memory within its
	// FrameTimeout closes its connection.
	Memory, ConnMemory int
	// InstanceMemory bounds what one instance's frames hold of Memory (default
	// 32 MiB, two of the largest frames). A frame whose body needs more than 4 KiB is admitted only once its
	// header names a known AccessKey, and its body is that instance's: a client
	// without a key holds at most a header, and a tenant's large frames wait on its
	// own share.
	InstanceMemory int
	// OutboundBytes bounds the frames queued for one connection's writer (default
	// 8 MiB; a larger frame is queued alone). Past it an answer waits for the writer,
	// and a request the server sends (a check-back, a rebalance notice) is dropped.
	OutboundBytes int
}

// Defaults of Limits.
const (
	DefaultIdleTimeout    = 120 * time.Second
	DefaultFrameTimeout   = 30 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
	DefaultMemory         = 128 << 20
	DefaultConnMemory     = 2 * maxFrame
	DefaultInstanceMemory = 2 * maxFrame
	DefaultOutboundBytes  = 8 << 20
)

func (l Limits) withDefaults() Limits {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&l.IdleTimeout, DefaultIdleTimeout}, {&l.FrameTimeout, DefaultFrameTimeout}, {&l.WriteTimeout, DefaultWriteTimeout}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	for _, d := range []struct {
		v   *int
		def int
	}{
		{&l.Memory, DefaultMemory}, {&l.ConnMemory, DefaultConnMemory}, {&l.InstanceMemory, DefaultInstanceMemory},
		{&l.OutboundBytes, DefaultOutboundBytes},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	return l
}

// Bounds on what one client registers, so that neither the registry nor the
// housekeeping that walks it grows with what a client makes up.
const (
	// maxHeartbeatBody bounds a heartbeat's JSON, checked before it is parsed.
	maxHeartbeatBody = 4 << 20
	// maxProducerGroupsPerHeartbeat, maxProducerGroupsPerConn and
	// maxProducerGroupsPerInstance bound the producer groups registered for
	// check-backs: each costs the housekeeping a walk over the half messages.
	maxProducerGroupsPerHeartbeat = 64
	maxProducerGroupsPerConn      = 64
	maxProducerGroupsPerInstance  = 256
	// maxConsumerGroupsPerHeartbeat and maxSubscriptionsPerGroup bound what a
	// heartbeat registers as consumers: each subscription is kept, compiled (a
	// SQL92 expression as its syntax tree), for as long as the connection lives,
	// and a client consumes a handful of topics in a few groups.
	maxConsumerGroupsPerHeartbeat = 64
	maxSubscriptionsPerGroup      = 256
	// maxClientIDsPerConn bounds the client ids one connection's heartbeats may
	// register as consumers; a client has one per connection.
	maxClientIDsPerConn = 8
	// maxWireProperties bounds a message's properties string before it is parsed:
	// the broker's MaxPropertiesSize, plus the names the protocol adds (TAGS, KEYS,
	// SHARDING_KEY, DELAY), which the broker does not count.
	maxWireProperties = 16<<10 + 1<<10
)

// refusalLog logs connections turned away past the connection caps: remoting has no
// message a server sends before a request, so closing is the refusal, and the log
// is where an operator sees it. It logs an address at most once a refusalLogEvery,
// with the count of refusals since, so that a client retrying in a loop does not
// flood the log.
type refusalLog struct {
	log logr.Logger
	now func() time.Time

	mu     sync.Mutex
	byHost map[string]*refusals
}

type refusals struct {
	logged time.Time
	count  int
}

const (
	refusalLogEvery = time.Minute
	// maxRefusalHosts bounds the addresses remembered; past it the ones not logged
	// within refusalLogEvery are forgotten.
	maxRefusalHosts = 4096
)

func newRefusalLog(log logr.Logger) *refusalLog {
	return &refusalLog{log: log, now: time.Now, byHost: map[string]*refusals{}}
}

// refuse is connlimit's refusal: it writes nothing, and logs.
func (l *refusalLog) refuse(c net.Conn, reason string) {
	host := connlimit.HostOf(c.RemoteAddr())
	now := l.now()
	l.mu.Lock()
	r := l.byHost[host]
	if r == nil {
		if len(l.byHost) >= maxRefusalHosts {
			for h, old := range l.byHost {
				if now.Sub(old.logged) >= refusalLogEvery {
					delete(l.byHost, h)
				}
			}
		}
		if len(l.byHost) >= maxRefusalHosts {
			host = "(other addresses)" // counted together
		}
		if r = l.byHost[host]; r == nil {
			r = &refusals{}
			l.byHost[host] = r
		}
	}
	r.count++
	if !r.logged.IsZero() && now.Sub(r.logged) < refusalLogEvery {
		l.mu.Unlock()
		return
	}
	count := r.count
	r.logged, r.count = now, 0
	l.mu.Unlock()
	l.log.Info("Refusing connections past the connection caps", "address", host, "reason", reason, "refused", count)
}
