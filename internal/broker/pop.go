package broker

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
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
	Filter TagFilter
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

// popQueue is a group's pop-style state on one queue. Its fields are guarded by mu.
// Reads of the store happen under mu: it serializes only pops of one group on one
// queue, which must agree on the cursor anyway.
type popQueue struct {
	mu        sync.Mutex
	committed uint64 // every offset below is done for the group
	cursor    uint64 // the next offset never handed out
	inflight  map[uint64]*delivery
	done      map[uint64]struct{} // acknowledged or filtered offsets in [committed, cursor)
	expiring  deliveryHeap
	parked    int    // deliveries in inflight that are parked
	stored    uint64 // committed as last written to the store
}

// delivery is one message in flight.
type delivery struct {
	offset       uint64
	seq          uint64
	token        uint64 // random per delivery: a handle is valid only with it
	visibleAt    int64  // ms: delivered again from then on
	firstConsume int64  // ms
	times        int
	heapIdx      int // position in expiring, -1 when not there
	// parked: part of an expired ordered batch that did not fit the response that
	// took the batch's head; handed out once the head is acknowledged or due.
	// It has no valid handle meanwhile.
	parked bool
	// burying: on its way to the dead letters, out of every handle's reach.
	burying bool
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
		r, err := b.popQueue(pq, q, req, now, req.Max-len(out), maxDeliveries, &budget)
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
		out = append(out, r.out...)
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

// popped is what one pop took from one queue.
type popped struct {
	out []Delivery
	// dead are deliveries past the group's limit, for the caller to move to the
	// dead letters: no handle acknowledges them meanwhile.
	dead []*delivery
	// wake is when an in-flight message there becomes visible again (ms, zero if
	// none or if something was taken).
	wake int64
	// more: the scan for new messages stopped at its bound, not at the end.
	more bool
	// throttled: the group's state on the queue is at MaxPendingPerQueue, so no
	// new message was taken.
	throttled bool
}

// popQueue takes up to max deliveries from one queue. Messages already delivered
// maxDeliveries times are not delivered again but returned as dead.
func (b *Broker) popQueue(pq *popQueue, q *queue, req PopRequest, now int64, max, maxDeliveries int, budget *int) (r popped, err error) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	pq.catchUp(q.min.Load())
	// The view is opened only once something must be read: most pops of a busy
	// ordered topic find most queues with a batch out, and read nothing there.
	v := &lazyView{b: b, q: q}
	defer v.close()
	visibleAt := now + req.Invisibility.Milliseconds()

	if req.Orderly {
		if len(pq.inflight) > 0 {
			return b.redeliverOrdered(pq, v, now, visibleAt, max, maxDeliveries, budget)
		}
	} else {
		pq.unparkAll(now)
		// Messages whose invisibility passed come back first.
		for len(r.out) < max && *budget > 0 && len(pq.expiring) > 0 && pq.expiring[0].visibleAt <= now {
			d := pq.expiring[0]
			if d.times >= maxDeliveries {
				r.dead = append(r.dead, pq.bury(d))
				continue
			}
			dl, ok, err := b.redeliver(pq, v, d, now, visibleAt)
			if err != nil {
				return r, err
			}
			if ok {
				r.out = append(r.out, dl)
				*budget -= len(dl.Body)
			}
		}
	}
	// Then messages never delivered to the group, while its state here is within
	// bounds.
	full := func() bool { return len(pq.inflight)+len(pq.done) >= MaxPendingPerQueue }
	if len(r.out) < max && *budget > 0 && full() {
		r.throttled = true
	} else if len(r.out) < max && *budget > 0 && pq.cursor < q.durable.Load() {
		v, err := v.get()
		if err != nil {
			return r, err
		}
		next, err := v.scan(pq.cursor, req.Filter, budget, pq.markDone, func(ix indexed, m StoredMessage) bool {
			d := &delivery{offset: ix.offset, seq: ix.entry.seq, firstConsume: now, heapIdx: -1}
			q.topic.stats.consume.observe(time.Duration(now-ix.entry.storeTime) * time.Millisecond)
			pq.inflight[ix.offset] = d
			r.out = append(r.out, pq.hand(q, d, m, now, visibleAt))
			return len(r.out) < max && !full()
		})
		pq.cursor = max64(pq.cursor, next)
		if err != nil {
			return r, err
		}
		r.more = len(r.out) < max && *budget > 0 && next < v.end && !full()
	}
	if len(r.out) == 0 && len(pq.expiring) > 0 {
		r.wake = pq.expiring[0].visibleAt
	}
	return r, nil
}

// redeliverOrdered hands an ordered queue's in-flight batch out again, whole and in
// queue order, once none of it is invisible any more: nothing after a batch is
// delivered before the batch is fully acknowledged. A pop asking for fewer messages
// than the batch holds takes its head; the rest is parked behind it, to go out once
// the head is acknowledged or due again, so that one batch of the queue is out at a
// time. pq.mu should be held.
func (b *Broker) redeliverOrdered(pq *popQueue, v *lazyView, now, visibleAt int64, max, maxDeliveries int, budget *int) (r popped, err error) {
	batch := make([]*delivery, 0, len(pq.inflight))
	for _, d := range pq.inflight {
		switch {
		case d.burying:
			return popped{}, nil // the head is on its way to the dead letters
		case !d.parked && d.visibleAt > now:
			if r.wake == 0 || d.visibleAt < r.wake {
				r.wake = d.visibleAt
			}
		}
		batch = append(batch, d)
	}
	if r.wake != 0 {
		return r, nil // the batch is out
	}
	sortDeliveries(batch)
	for i, d := range batch {
		if len(r.out) == max || (len(r.out) > 0 && *budget <= 0) || d.times >= maxDeliveries {
			if len(r.out) < max && d.times >= maxDeliveries {
				// Dead-lettered first; what follows it waits until it is.
				r.dead = append(r.dead, pq.bury(d))
				i++
			}
			for _, rest := range batch[i:] {
				pq.park(rest)
			}
			break
		}
		dl, ok, err := b.redeliver(pq, v, d, now, visibleAt)
		if err != nil {
			return r, err
		}
		if ok {
			r.out = append(r.out, dl)
			*budget -= len(dl.Body)
		}
	}
	return r, nil
}

// buryAll moves dead deliveries of q to g's dead letters and marks them done.
func (b *Broker) buryAll(ctx context.Context, g *group, pq *popQueue, q *queue, dead []*delivery) error {
	v, err := b.openView(q)
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
		pq.mu.Lock()
		if pq.inflight[d.offset] != d {
			// A reset forgot it meanwhile (ResetOffsets): the group's state
			// here is no longer the one it was buried from.
			pq.mu.Unlock()
			if err != nil {
				return err
			}
			g.countsOn(q.topic.name).deadLettered.Add(1)
			continue
		}
		if err != nil {
			// Back into flight, due at once: the next pop tries again.
			d.burying = false
			heap.Push(&pq.expiring, d)
			pq.mu.Unlock()
			return err
		}
		delete(pq.inflight, d.offset)
		pq.markDone(d.offset)
		pq.mu.Unlock()
		g.countsOn(q.topic.name).deadLettered.Add(1)
	}
	return b.storeProgress(g, map[*popQueue]*queue{pq: q})
}

// redeliver hands an in-flight message out again; ok is false if the message is
// gone (reclaimed by retention while in flight). pq.mu should be held.
func (b *Broker) redeliver(pq *popQueue, lv *lazyView, d *delivery, now, visibleAt int64) (_ Delivery, ok bool, _ error) {
	v, err := lv.get()
	if err != nil {
		return Delivery{}, false, err
	}
	m, ok, err := v.at(d.offset)
	if err != nil {
		return Delivery{}, false, err
	}
	if !ok {
		pq.remove(d)
		pq.markDone(d.offset)
		return Delivery{}, false, nil
	}
	return pq.hand(v.q, d, m, now, visibleAt), true, nil
}

// bury takes d out of every handle's reach on its way to the dead letters. pq.mu
// should be held.
func (pq *popQueue) bury(d *delivery) *delivery {
	pq.unpark(d)
	if d.heapIdx >= 0 {
		heap.Remove(&pq.expiring, d.heapIdx)
	}
	d.token = 0
	d.burying = true
	return d
}

// park holds d back, out of the expiry heap and with no valid handle. pq.mu should
// be held.
func (pq *popQueue) park(d *delivery) {
	if d.parked {
		return
	}
	if d.heapIdx >= 0 {
		heap.Remove(&pq.expiring, d.heapIdx)
	}
	d.parked, d.token = true, 0
	pq.parked++
}

func (pq *popQueue) unpark(d *delivery) {
	if d.parked {
		d.parked = false
		pq.parked--
	}
}

// unparkAll makes parked deliveries due now, for a pop that is not ordered: it
// takes in-flight messages as they expire. pq.mu should be held.
func (pq *popQueue) unparkAll(now int64) {
	if pq.parked == 0 {
		return
	}
	for _, d := range pq.inflight {
		if d.parked {
			pq.unpark(d)
			d.visibleAt = now
			heap.Push(&pq.expiring, d)
		}
	}
}

// catchUp moves the group's progress past what retention reclaimed: nothing below
// min can be delivered or acknowledged any more. pq.mu should be held.
func (pq *popQueue) catchUp(min uint64) {
	if pq.committed >= min {
		return
	}
	for off := range pq.done {
		if off < min {
			delete(pq.done, off)
		}
	}
	pq.committed = min
	pq.cursor = max64(pq.cursor, min)
	pq.advance() // and past whatever is done right above it
}

// hand makes d the message's current delivery: a new token, a new invisibility
// window, one more delivery counted. pq.mu should be held.
func (pq *popQueue) hand(q *queue, d *delivery, m StoredMessage, now, visibleAt int64) Delivery {
	pq.unpark(d)
	d.token = randomToken()
	d.times++
	d.visibleAt = visibleAt
	if d.heapIdx >= 0 {
		heap.Fix(&pq.expiring, d.heapIdx)
	} else {
		heap.Push(&pq.expiring, d)
	}
	return Delivery{
		StoredMessage:    m,
		Handle:           handle{kind: receiptHandle, topic: q.topic.id, queue: q.id, pos: d.offset, token: d.token, expiry: visibleAt}.String(),
		ConsumedTimes:    d.times,
		FirstConsumeTime: fromMillis(d.firstConsume),
		NextConsumeTime:  fromMillis(visibleAt),
	}
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
		pq.mu.Lock()
		if d, err := pq.current(hd); err != nil {
			errs[i] = err
		} else {
			pq.remove(d)
			pq.markDone(d.offset)
			touched[pq] = q
			g.countsOn(t.name).acked.Add(1)
		}
		pq.mu.Unlock()
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
		pq.mu.Lock()
		if pq.committed != pq.stored {
			w.set(offsetKey(g.id, q.topic.id, q.id), binary.BigEndian.AppendUint64(nil, pq.committed))
			pq.stored = pq.committed
		}
		pq.mu.Unlock()
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
	raw, err := b.store.get(offsetKey(g.id, q.topic.id, q.id))
	switch {
	case err == nil && len(raw) == 8:
		start = max64(start, binary.BigEndian.Uint64(raw))
	case err != nil && err != errNotFound:
		return nil, err
	}
	pq := &popQueue{committed: start, cursor: start, stored: start, inflight: map[uint64]*delivery{}, done: map[uint64]struct{}{}}
	g.pop[q] = pq
	return pq, nil
}

// markDone records that offset needs nothing more from the group, and moves the
// committed offset past every done offset at its front. pq.mu should be held.
func (pq *popQueue) markDone(offset uint64) {
	if offset < pq.committed {
		return
	}
	pq.done[offset] = struct{}{}
	pq.advance()
}

// advance moves the committed offset past every done offset at its front. pq.mu
// should be held.
func (pq *popQueue) advance() {
	for {
		if _, ok := pq.done[pq.committed]; !ok {
			return
		}
		delete(pq.done, pq.committed)
		pq.committed++
	}
}

func (pq *popQueue) isDone(offset uint64) bool {
	_, ok := pq.done[offset]
	return ok
}

// remove takes d out of flight. pq.mu should be held.
func (pq *popQueue) remove(d *delivery) {
	delete(pq.inflight, d.offset)
	pq.unpark(d)
	if d.heapIdx >= 0 {
		heap.Remove(&pq.expiring, d.heapIdx)
	}
}

// deliveryHeap orders in-flight messages by the time they become visible again,
// then by offset, so an expired ordered batch comes back in queue order.
type deliveryHeap []*delivery

func (h deliveryHeap) Len() int { return len(h) }
func (h deliveryHeap) Less(i, j int) bool {
	if h[i].visibleAt != h[j].visibleAt {
		return h[i].visibleAt < h[j].visibleAt
	}
	return h[i].offset < h[j].offset
}
func (h deliveryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *deliveryHeap) Push(x any) {
	d := x.(*delivery)
	d.heapIdx = len(*h)
	*h = append(*h, d)
}
func (h *deliveryHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	d.heapIdx = -1
	return d
}

func sortDeliveries(ds []*delivery) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && ds[j].offset < ds[j-1].offset; j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
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
		v, err := l.b.openView(l.q)
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
