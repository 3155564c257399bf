package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limits are one tenant's quotas: what one instance, careless or hostile, can take
// of a broker every tenant shares. Zero fields take the defaults.
type Limits struct {
	// Topics and Groups bound how many the instance declares (its groups' retry and
	// dead-letter topics not counted).
	Topics, Groups int
	// Connections bounds the protocol connections authenticated for the instance
	// at once; the protocol servers ask through AcquireConnection.
	Connections int
	// PublishRate bounds messages published per second, PublishBytesRate their
	// bodies' bytes per second; each allows a burst of one second's worth.
	PublishRate, PublishBytesRate int
	// MaxMessageSize bounds one body, at most MaxBodySize.
	MaxMessageSize int
}

// Default limits, generous for one application team and far from what would let
// one tenant crowd out the others on one broker.
const (
	DefaultMaxTopics        = 256
	DefaultMaxGroups        = 256
	DefaultMaxConnections   = 1024
	DefaultPublishRate      = 20000
	DefaultPublishBytesRate = 128 << 20
)

// withDefaults fills zero fields and checks the rest.
func (l Limits) withDefaults() (Limits, error) {
	for _, f := range []struct {
		v   *int
		def int
	}{{&l.Topics, DefaultMaxTopics}, {&l.Groups, DefaultMaxGroups}, {&l.Connections, DefaultMaxConnections},
		{&l.PublishRate, DefaultPublishRate}, {&l.PublishBytesRate, DefaultPublishBytesRate}, {&l.MaxMessageSize, MaxBodySize}} {
		switch {
		case *f.v == 0:
			*f.v = f.def
		case *f.v < 0:
			return l, fmt.Errorf("%w: a negative limit", ErrInvalidArgument)
		}
	}
	if l.MaxMessageSize > MaxBodySize {
		return l, fmt.Errorf("%w: a maximum message size of %d bytes; at most %d", ErrInvalidArgument, l.MaxMessageSize, MaxBodySize)
	}
	return l, nil
}

// quota enforces an instance's limits. Its fields are safe for concurrent use.
type quota struct {
	mu       sync.Mutex
	limits   Limits
	messages *rate.Limiter
	bytes    *rate.Limiter
	conns    atomic.Int64
	// published counts messages for the rate shown in status.
	published atomic.Int64
	window    struct {
		sync.Mutex
		start time.Time
		count int64
		rate  float64
	}
}

func newQuota(l Limits) *quota {
	q := &quota{}
	q.set(l)
	return q
}

// set applies new limits, keeping the buckets' state where the rate is unchanged.
func (q *quota) set(l Limits) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.messages == nil || q.limits.PublishRate != l.PublishRate {
		q.messages = rate.NewLimiter(rate.Limit(l.PublishRate), max(l.PublishRate, 1))
	}
	if q.bytes == nil || q.limits.PublishBytesRate != l.PublishBytesRate {
		// The burst holds at least one largest message, or it could never pass.
		q.bytes = rate.NewLimiter(rate.Limit(l.PublishBytesRate), max(l.PublishBytesRate, l.MaxMessageSize, 1))
	}
	q.limits = l
}

func (q *quota) get() Limits {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.limits
}

// admitPublish takes n messages of size bytes from the buckets, or refuses them
// all: the producer backs off and retries.
func (q *quota) admitPublish(now time.Time, n, size int) error {
	q.mu.Lock()
	messages, bytes, l := q.messages, q.bytes, q.limits
	q.mu.Unlock()
	m := messages.ReserveN(now, n)
	if !m.OK() || m.DelayFrom(now) > 0 {
		m.CancelAt(now)
		return fmt.Errorf("%w: the instance publishes over its limit of %d messages a second", ErrThrottled, l.PublishRate)
	}
	bt := bytes.ReserveN(now, size)
	if !bt.OK() || bt.DelayFrom(now) > 0 {
		// Neither is taken: the messages were not published.
		bt.CancelAt(now)
		m.CancelAt(now)
		return fmt.Errorf("%w: the instance publishes over its limit of %d bytes a second", ErrThrottled, l.PublishBytesRate)
	}
	q.published.Add(int64(n))
	return nil
}

// publishRate is the messages per second published over the last full window of
// about ten seconds.
func (q *quota) publishRate(now time.Time) float64 {
	w := &q.window
	w.Lock()
	defer w.Unlock()
	total := q.published.Load()
	if w.start.IsZero() {
		w.start, w.count = now, total
		return 0
	}
	if d := now.Sub(w.start); d >= 10*time.Second {
		w.rate = float64(total-w.count) / d.Seconds()
		w.start, w.count = now, total
	}
	return w.rate
}

// Usage is what an instance holds now, against its limits.
type Usage struct {
	Limits      Limits
	Topics      int
	Groups      int
	Connections int
	// PublishRate is messages per second over the last ten seconds or so.
	PublishRate float64
}

// Usage reports an instance's usage of its quotas.
func (b *Broker) Usage(instanceID string) (Usage, error) {
	b.mu.RLock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		b.mu.RUnlock()
		return Usage{}, err
	}
	u := Usage{Limits: inst.quota.get(), Topics: inst.userTopics(), Groups: len(inst.groups),
		Connections: int(inst.quota.conns.Load())}
	q := inst.quota
	b.mu.RUnlock()
	u.PublishRate = q.publishRate(b.clock.Now())
	return u, nil
}

// AcquireConnection counts one protocol connection authenticated for the instance
// against its limit, and returns the function that gives it back (call it once,
// when the connection closes). Past the limit it fails with ErrThrottled.
func (b *Broker) AcquireConnection(instanceID string) (release func(), err error) {
	b.mu.RLock()
	inst, err := b.instanceLocked(instanceID)
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	q := inst.quota
	limit := int64(q.get().Connections)
	if n := q.conns.Add(1); n > limit {
		q.conns.Add(-1)
		inst.stats.throttled.Add(1)
		return nil, fmt.Errorf("%w: instance %q holds its limit of %d connections", ErrThrottled, instanceID, limit)
	}
	var once sync.Once
	return func() { once.Do(func() { q.conns.Add(-1) }) }, nil
}

// userTopics counts the instance's own topics, not its groups' system topics.
// b.mu should be held.
func (inst *instance) userTopics() int {
	n := 0
	for _, t := range inst.topics {
		if !t.system {
			n++
		}
	}
	return n
}
