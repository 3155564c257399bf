package broker

import (
	"context"
	"math/bits"
	"sync/atomic"
	"time"
)

// What the broker measures of itself, for metrics: latency histograms, the wire
// each publish came in on, and the requests it refused per instance. The broker
// keeps plain counters; internal/brokermetrics turns them into Prometheus series
// at each scrape, so the broker has no metrics library in it.

// Wire is the protocol a request arrived on. Publishes count per wire; the zero
// value is the broker's own writes (retries, dead letters, re-drives).
type Wire uint8

const (
	WireInternal Wire = iota
	WireHTTP
	WireTCP
	WireGRPC
	wireCount
)

var wireNames = [wireCount]string{"internal", "http", "tcp", "grpc"}

// String names the wire as metrics label it.
func (w Wire) String() string {
	if w < wireCount {
		return wireNames[w]
	}
	return "internal"
}

type wireKey struct{}

// WithWire marks ctx as a request that arrived on w: a protocol server sets it
// once per request or connection, and the broker counts publishes by it.
func WithWire(ctx context.Context, w Wire) context.Context {
	return context.WithValue(ctx, wireKey{}, w)
}

func wireOf(ctx context.Context) Wire {
	w, _ := ctx.Value(wireKey{}).(Wire)
	return w
}

// wireCounts count a topic's publishes per wire since the broker opened.
type wireCounts [wireCount]struct{ messages, bytes atomic.Uint64 }

// WireCount is what one wire published to a topic.
type WireCount struct {
	Wire            Wire
	Messages, Bytes uint64
}

func (c *wireCounts) read() []WireCount {
	var out []WireCount
	for w := range c {
		if m := c[w].messages.Load(); m > 0 {
			out = append(out, WireCount{Wire: Wire(w), Messages: m, Bytes: c[w].bytes.Load()})
		}
	}
	return out
}

// Latency buckets: 2^k × 100 µs for k = 0..latencyBuckets-1 (100 µs to 3.3 s),
// then one bucket for the rest. Doubling buckets keep an observation to a few
// instructions (a leading-zero count) and resolve the figures that matter, an
// fsync near a millisecond and a stall of tens to hundreds.
const (
	latencyBase    = 100 * time.Microsecond
	latencyBuckets = 16
)

// latency is a histogram of durations, safe for concurrent use without locks.
type latency struct {
	counts [latencyBuckets + 1]atomic.Uint64
	sum    atomic.Int64 // nanoseconds
}

func (h *latency) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	// The bucket whose bound 2^k × base is the first at or above d.
	k := 0
	if d > latencyBase {
		k = bits.Len64(uint64((d - 1) / latencyBase))
	}
	h.counts[min(k, latencyBuckets)].Add(1)
	h.sum.Add(int64(d))
}

// Histogram is a latency histogram as read: Counts[i] observations were at most
// Bounds[i] (cumulative, as Prometheus buckets are), Count in all.
type Histogram struct {
	Bounds []time.Duration
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

// LatencyBounds are the upper bounds of the broker's latency buckets.
func LatencyBounds() []time.Duration {
	out := make([]time.Duration, latencyBuckets)
	for k := range out {
		out[k] = latencyBase << k
	}
	return out
}

func (h *latency) read() Histogram {
	out := Histogram{Bounds: LatencyBounds(), Counts: make([]uint64, latencyBuckets)}
	// Reading the sum first and the buckets after keeps a concurrent observation
	// from showing in the sum and not in the count; the reverse skew (counted,
	// not yet summed) is one observation at most per writer.
	out.Sum = time.Duration(h.sum.Load())
	var total uint64
	for k := range latencyBuckets {
		total += h.counts[k].Load()
		out.Counts[k] = total
	}
	out.Count = total + h.counts[latencyBuckets].Load()
	return out
}

// instanceStats are an instance's figures since the broker opened.
type instanceStats struct {
	// publish: from a publish call to its acknowledgement, the fsync included.
	publish latency
	// consume: from a message being deliverable (stored, or due) to its first
	// delivery to a group.
	consume latency
	// authFailures: requests whose signature named one of the instance's
	// AccessKeys and did not match; throttled: requests refused for the
	// instance's quotas or for memory.
	authFailures, throttled atomic.Uint64
}

// InstanceStats are what the broker measured of one instance since it opened.
type InstanceStats struct {
	PublishLatency, ConsumeLatency Histogram
	AuthFailures, Throttled        uint64
}

// InstanceStats reports an instance's latencies and refusals.
func (b *Broker) InstanceStats(instanceID string) (InstanceStats, error) {
	b.mu.RLock()
	inst, ok := b.instances[instanceID]
	b.mu.RUnlock()
	if !ok {
		return InstanceStats{}, ErrInstanceNotFound
	}
	s := inst.stats
	return InstanceStats{PublishLatency: s.publish.read(), ConsumeLatency: s.consume.read(),
		AuthFailures: s.authFailures.Load(), Throttled: s.throttled.Load()}, nil
}

// BrokerStats are the broker's figures that belong to no instance.
type BrokerStats struct {
	// Sync: how long each group commit waited for the disk.
	Sync Histogram
	// UnknownKeyRefusals: requests signed with an AccessKey no instance holds,
	// or not signed at all, which the protocol servers reported.
	UnknownKeyRefusals uint64
}

// Stats reports the broker's figures that belong to no instance.
func (b *Broker) Stats() BrokerStats {
	return BrokerStats{Sync: b.commits.latency.read(), UnknownKeyRefusals: b.unknownKeyRefusals.Load()}
}

// NoteAuthFailure counts a request refused for its credentials: a protocol
// server calls it with the instance the AccessKey belongs to, or "" when no
// instance holds it (or the request named none). Unknown keys are counted in one
// figure, never by the key, which is the caller's to choose.
func (b *Broker) NoteAuthFailure(instanceID string) {
	if s := b.statsOf(instanceID); s != nil {
		s.authFailures.Add(1)
		return
	}
	b.unknownKeyRefusals.Add(1)
}

// NoteThrottled counts a request of the instance that a protocol server refused
// for memory (its share of the request budgets); the broker counts its own
// refusals (ErrThrottled) itself.
func (b *Broker) NoteThrottled(instanceID string) {
	if s := b.statsOf(instanceID); s != nil {
		s.throttled.Add(1)
	}
}

func (b *Broker) statsOf(instanceID string) *instanceStats {
	if instanceID == "" {
		return nil
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if inst, ok := b.instances[instanceID]; ok {
		return inst.stats
	}
	return nil
}
