package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Pop-style consumption defaults, from the mq-http SDKs' documentation.
const (
	// DefaultInvisibility is how long a popped message stays hidden before it is
	// delivered again.
	DefaultInvisibility = 300 * time.Second
	// DefaultOrderedInvisibility is the same for ordered topics, which retry sooner.
	DefaultOrderedInvisibility = 60 * time.Second
	// MaxPopMessages is the largest batch one pop returns.
	MaxPopMessages = 16
	// MaxPopWait is the longest a pop may wait for messages.
	MaxPopWait = 30 * time.Second
	// MaxPendingPerQueue bounds what a group's pop state on one queue holds:
	// messages in flight, and offsets done behind one still in flight (a tag filter
	// that matches nothing marks every offset it passes). Past it a pop takes no
	// new messages from the queue until some are acknowledged or expire, and a pop
	// that finds nothing else is answered ErrThrottled.
	MaxPendingPerQueue = 16384
)

// Per-handle ack errors.
var (
	// ErrHandleExpired means the handle's invisibility has passed (the message may
	// have been delivered again), or its message is already acknowledged.
	ErrHandleExpired = errors.New("receipt handle expired")
	// ErrInvalidHandle means the handle is malformed or unknown.
	ErrInvalidHandle = errors.New("invalid receipt handle")
)

// PopRequest asks for messages of one topic for one group.
type PopRequest struct {
	Group string
	// Max is 1..MaxPopMessages.
	Max int
	// Wait is how long to wait for a message when none is ready, up to MaxPopWait.
	Wait time.Duration
	// Filter selects by tag.
	Filter Filter
	// Orderly asks for ordered consumption: at most one batch of a queue in flight,
	// and the next only once it is fully acknowledged. It needs an ordered topic.
	Orderly bool
	// Invisibility overrides the default invisibility window.
	Invisibility time.Duration
	// Progress, when set, is the calling worker's report (see WorkerProgress),
	// noted before the pop waits.
	Progress *WorkerProgress
}

// Delivery is one message handed to a consumer. It is its receiver's: its maps
// and slices are decoded from the store for it alone, never shared.
type Delivery struct {
	StoredMessage
	// Handle acknowledges this delivery, and only this one.
	Handle string
	// ConsumedTimes counts deliveries of the message to the group, this one included.
	ConsumedTimes int
	// FirstConsumeTime is when the group first received it; NextConsumeTime is when
	// it is delivered again unless acknowledged.
	FirstConsumeTime, NextConsumeTime time.Time
}

// Pop hands out up to req.Max messages of the topic to an HTTP group, each invisible
// to the group until its next-consume time. It waits up to req.Wait for a message;
// a message published meanwhile is handed over at once. It returns no messages and
// no error when none arrived in time.
func (b *Broker) Pop(ctx context.Context, instanceID, topicName string, req PopRequest) ([]Delivery, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	if req.Max < 1 || req.Max > MaxPopMessages {
		return nil, fmt.Errorf("%w: batch of %d messages; 1 to %d", ErrInvalidArgument, req.Max, MaxPopMessages)
	}
	if req.Wait < 0 || req.Wait > MaxPopWait {
		return nil, fmt.Errorf("%w: wait of %v; 0 to %v", ErrInvalidArgument, req.Wait, MaxPopWait)
	}
	if req.Progress != nil {
		if err := req.Progress.validate(); err != nil {
			return nil, err
		}
	}
	t, g, err := b.consumerTarget(instanceID, topicName, req.Group, HTTP)
	if err != nil {
		return nil, err
	}
	if req.Orderly && t.typ != Ordered {
		return nil, fmt.Errorf("%w: ordered consumption needs an ordered topic; %q is %s", ErrMessageType, topicName, t.typ)
	}
	if req.Invisibility <= 0 {
		req.Invisibility = DefaultInvisibility
		if t.typ == Ordered {
			req.Invisibility = DefaultOrderedInvisibility
		}
	}
	b.touchGroup(g)
	if req.Progress != nil {
		g.workers.note(*req.Progress)
	}
	var out []Delivery
	err = b.longPoll(ctx, t, b.clock.Now().Add(req.Wait), func() (bool, bool, time.Time, error) {
		// more: a scan stopped at its bound on entries the filter rules out, so
		// go on at once rather than wait for a message that may never come.
		var wake time.Time
		var more bool
		err := readWithin(ctx, func() (int, int, error) {
			var used int
			var err error
			out, wake, more, used, err = b.popOnce(ctx, g, t, req)
			return len(out), used, err
		})
		return len(out) > 0, more, wake, err
	})
	return out, err
}

// popOnce collects what is ready now across the topic's queues, and when nothing is,
// the earliest time an in-flight message becomes visible again (zero if none); more
// says a queue has entries left that its bounded scan did not reach. used is the
// bytes of the records it returns.
func (b *Broker) popOnce(ctx context.Context, g *group, t *topic, req PopRequest) (_ []Delivery, _ time.Time, more bool, used int, _ error) {
	b.mu.RLock()
	queues, maxDeliveries := t.queues, 1+g.maxRedeliveries
	b.mu.RUnlock()
	now := b.now().UnixMilli()
	var out []Delivery
	var wake int64
	throttled := false
	budget := MaxReadBytes
	counts := g.countsOn(t.name)
	// Start at a different queue each time so busy queues do not starve the rest.
	start := int(t.rr.Add(1))
	for i := 0; i < len(queues) && len(out) < req.Max && budget > 0; i++ {
		q := queues[(start+i)%len(queues)]
		pq, err := b.popState(g, q)
		if err != nil {
			return nil, time.Time{}, false, 0, err
		}
		// The view is opened only once something must be read: most pops of a busy
		// ordered topic find most queues with a batch out, and read nothing there.
		v := &lazyView{b: b, q: q}
		r, err := pq.take(v, q, req, now, req.Max-len(out), maxDeliveries, &budget)
		v.close()
		if err == nil && len(r.dead) > 0 {
			err = b.buryAll(ctx, g, pq, q, r.dead)
		}
		if err != nil {
			return nil, time.Time{}, false, 0, err
		}
		for _, d := range r.out {
			if d.ConsumedTimes > 1 {
				counts.redelivered.Add(1)
			} else {
				counts.delivered.Add(1)
			}
		}
		if out == nil {
			out = r.out // most pops take from one queue: no second copy
		} else {
			out = append(out, r.out...)
		}
		more = more || r.more
		throttled = throttled || r.throttled
		if r.wake != 0 && (wake == 0 || r.wake < wake) {
			wake = r.wake
		}
	}
	if len(out) > 0 {
		wake = 0
	} else if throttled && !more {
		t.stats.throttled.Add(1)
		return nil, time.Time{}, false, 0, fmt.Errorf("%w: group %q holds %d or more unacknowledged messages on a queue of %q; acknowledge some first",
			ErrThrottled, g.name, MaxPendingPerQueue, t.name)
	}
	return out, fromMillis(wake), more, MaxReadBytes - budget, nil
}

// buryAll moves dead deliveries of q to g's dead letters and marks them done.
func (b *Broker) buryAll(ctx context.Context, g *group, pq *popQueue, q *queue, dead []*delivery) error {
	v, err := b.messages.openView(q)
	if err != nil {
		return err
	}
	defer v.close()
	for _, d := range dead {
		m, ok, err := v.at(d.offset)
		if err == nil && ok {
			if err = b.deadLetter(ctx, g, m, d.times); err != nil {
				err = fmt.Errorf("failed to move message %s to the dead letters: %w", m.ID, err)
			}
		}
		pq.settleBuried(d, err == nil)
		if err != nil {
			return err
		}
		g.countsOn(q.topic.name).deadLettered.Add(1)
	}
	return b.storeProgress(g, map[*popQueue]*queue{pq: q})
}

// Ack acknowledges deliveries of the topic to an HTTP group. It returns one error per
// handle, nil where the acknowledgement took: ErrHandleExpired for a handle past its
// next-consume time (or already acknowledged), ErrInvalidHandle for one that is not
// a handle of this topic. The error it returns itself concerns the whole request.
func (b *Broker) Ack(instanceID, topicName, groupID string, handles []string) ([]error, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	t, g, err := b.consumerTarget(instanceID, topicName, groupID, HTTP)
	if err != nil {
		return nil, err
	}
	b.mu.RLock()
	queues := t.queues
	b.mu.RUnlock()
	now := b.now().UnixMilli()
	errs := make([]error, len(handles))
	touched := map[*popQueue]*queue{}
	for i, h := range handles {
		hd, ok := parseHandle(h, receiptHandle)
		if !ok || hd.topic != t.id || hd.queue >= len(queues) {
			errs[i] = ErrInvalidHandle
			continue
		}
		if now >= hd.expiry {
			errs[i] = ErrHandleExpired
			continue
		}
		q := queues[hd.queue]
		pq, err := b.popState(g, q)
		if err != nil {
			return nil, err
		}
		if err := pq.ack(hd); err != nil {
			errs[i] = err
		} else {
			touched[pq] = q
			g.countsOn(t.name).acked.Add(1)
		}
	}
	b.touchGroup(g)
	if t.typ == Ordered && len(touched) > 0 {
		// An ordered queue's next messages may be free now: a long poll waiting
		// for them takes them at once rather than at its deadline.
		t.signal()
	}
	return errs, b.storeProgress(g, touched)
}

// storeProgress writes the committed offsets of the touched queues that moved. It
// does not wait for the disk: losing it in a machine crash means redelivery only.
func (b *Broker) storeProgress(g *group, touched map[*popQueue]*queue) error {
	w := b.store.newBatch()
	for pq, q := range touched {
		if committed, moved := pq.unstoredProgress(); moved {
			w.set(offsetKey(g.id, q.topic.id, q.id), encodeOffset(committed))
		}
	}
	if w.empty() {
		w.discard()
		return nil
	}
	return b.store.commitNoSync(w)
}

// popState returns g's pop state on q, loading its committed offset on first use. A
// group that never consumed the queue starts at its oldest message, as RocketMQ's
// broker answers a new group.
func (b *Broker) popState(g *group, q *queue) (*popQueue, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pq, ok := g.pop[q]; ok {
		return pq, nil
	}
	start := q.min.Load()
	stored, found, err := b.storedOffset(g, q)
	if err != nil {
		return nil, err
	}
	if found {
		start = max64(start, stored)
	}
	pq := &popQueue{committed: start, cursor: start, stored: start, inflight: map[uint64]*delivery{}, done: map[uint64]struct{}{}}
	g.pop[q] = pq
	return pq, nil
}

func randomToken() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func (b *Broker) isClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// lazyView opens a queue's view on first use.
type lazyView struct {
	b *Broker
	q *queue
	v *queueView
}

func (l *lazyView) get() (*queueView, error) {
	if l.v == nil {
		v, err := l.b.messages.openView(l.q)
		if err != nil {
			return nil, err
		}
		l.v = v
	}
	return l.v, nil
}

func (l *lazyView) close() {
	if l.v != nil {
		l.v.close()
	}
}
