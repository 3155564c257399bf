package broker

import (
	"container/heap"
	"sync"
	"time"
)

// popQueue is a group's pop-style state on one queue. Its fields are guarded by mu,
// which only its methods take: the Broker resolves names and hands it a view of
// the queue to read. Reads of the store happen under mu: it serializes only pops
// of one group on one queue, which must agree on the cursor anyway.
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

// add appends d to what was taken, the first time making room for all the take
// may take (room): a Delivery is large, and growing the slice by doubling was a
// tenth of what a consume allocated.
func (r *popped) add(d Delivery) {
	if r.out == nil {
		r.out = make([]Delivery, 0, max(r.room, 1))
	}
	r.out = append(r.out, d)
}

// popped is what one pop took from one queue.
type popped struct {
	out  []Delivery
	room int // how many the take may take
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
func (pq *popQueue) take(v *lazyView, q *queue, req PopRequest, now int64, max, maxDeliveries int, budget *int) (r popped, err error) {
	r.room = max
	pq.mu.Lock()
	defer pq.mu.Unlock()
	pq.catchUp(q.min.Load())
	visibleAt := now + req.Invisibility.Milliseconds()

	if req.Orderly {
		if len(pq.inflight) > 0 {
			return pq.redeliverOrdered(v, now, visibleAt, max, maxDeliveries, budget)
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
			if err := pq.redeliver(&r, v, d, now, visibleAt, budget); err != nil {
				return r, err
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
			r.add(pq.hand(q, d, m, now, visibleAt))
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
func (pq *popQueue) redeliverOrdered(v *lazyView, now, visibleAt int64, max, maxDeliveries int, budget *int) (r popped, err error) {
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
		if err := pq.redeliver(&r, v, d, now, visibleAt, budget); err != nil {
			return r, err
		}
	}
	return r, nil
}

// redeliver hands an in-flight message out again, into r and charged to budget;
// a message gone meanwhile (reclaimed by retention while in flight) is done
// instead. pq.mu should be held.
func (pq *popQueue) redeliver(r *popped, lv *lazyView, d *delivery, now, visibleAt int64, budget *int) error {
	v, err := lv.get()
	if err != nil {
		return err
	}
	m, ok, err := v.at(d.offset)
	if err != nil {
		return err
	}
	if !ok {
		pq.remove(d)
		pq.markDone(d.offset)
		return nil
	}
	dl := pq.hand(v.q, d, m, now, visibleAt)
	r.add(dl)
	*budget -= len(dl.Body)
	return nil
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

// current returns the delivery a handle names if the handle is its current one.
// pq.mu should be held.
func (pq *popQueue) current(hd handle) (*delivery, error) {
	d := pq.inflight[hd.pos]
	switch {
	case d != nil && d.token != 0 && d.token == hd.token && d.visibleAt == hd.expiry && d.heapIdx >= 0:
		return d, nil
	case d == nil && (hd.pos < pq.committed || pq.isDone(hd.pos)):
		return nil, ErrHandleExpired // acknowledged already
	default:
		return nil, ErrInvalidHandle
	}
}

// The methods below are the rest of the world's way into a group's state on a
// queue: each takes pq.mu itself and lets it go before it returns.

// ack takes the delivery hd names out of flight, done for the group.
func (pq *popQueue) ack(hd handle) error {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	d, err := pq.current(hd)
	if err != nil {
		return err
	}
	pq.remove(d)
	pq.markDone(d.offset)
	return nil
}

// changeInvisibility moves the next-consume time of the delivery hd names to
// visibleAt and returns its new handle's offset and token; sooner says it is now
// due earlier than before.
func (pq *popQueue) changeInvisibility(hd handle, visibleAt int64) (offset, token uint64, sooner bool, err error) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	d, err := pq.current(hd)
	if err != nil {
		return 0, 0, false, err
	}
	sooner = visibleAt < d.visibleAt
	d.visibleAt = visibleAt
	heap.Fix(&pq.expiring, d.heapIdx)
	return d.offset, d.token, sooner, nil
}

// buryCurrent takes the delivery hd names out of every handle's reach, on its way
// to the dead letters (settleBuried ends the journey).
func (pq *popQueue) buryCurrent(hd handle) (*delivery, error) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	d, err := pq.current(hd)
	if err != nil {
		return nil, err
	}
	return pq.bury(d), nil
}

// settleBuried ends a buried delivery's journey: done once moved to the dead
// letters, or, if moving it failed, back in flight and due at once, so that the
// next pop tries again. If a reset dropped it meanwhile (ResetOffsets), the state
// it was buried from is gone, and nothing changes.
func (pq *popQueue) settleBuried(d *delivery, moved bool) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	switch {
	case pq.inflight[d.offset] != d:
	case !moved:
		d.burying = false
		heap.Push(&pq.expiring, d)
	default:
		delete(pq.inflight, d.offset)
		pq.markDone(d.offset)
	}
}

// unstoredProgress returns the committed offset if it moved since it was last
// given out to be stored, and counts it as stored.
func (pq *popQueue) unstoredProgress() (committed uint64, moved bool) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	if pq.committed == pq.stored {
		return 0, false
	}
	pq.stored = pq.committed
	return pq.committed, true
}

// progress returns the committed offset and the number of deliveries in flight.
func (pq *popQueue) progress() (committed uint64, inflight int) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	return pq.committed, len(pq.inflight)
}

// stateOf tells where the message at off stands with the group, for MessageState:
// its state, and for one in flight its deliveries so far and when it is due again
// (zero while parked or on its way to the dead letters).
func (pq *popQueue) stateOf(off uint64) (state DeliveryState, times int, visibleAt int64) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	switch dl, inflight := pq.inflight[off]; {
	case off < pq.committed || pq.isDone(off):
		return DeliveryDone, 0, 0
	case inflight:
		if !dl.parked && !dl.burying {
			visibleAt = dl.visibleAt
		}
		return DeliveryInFlight, dl.times, visibleAt
	case off >= pq.cursor:
		return DeliveryPending, 0, 0
	default:
		return DeliveryDone, 0, 0 // passed over by a filter
	}
}

// resetTo moves the state to target: nothing in flight, nothing done past it.
func (pq *popQueue) resetTo(target uint64) {
	pq.mu.Lock()
	defer pq.mu.Unlock()
	pq.committed, pq.cursor = target, target
	pq.inflight, pq.done = map[uint64]*delivery{}, map[uint64]struct{}{}
	for _, d := range pq.expiring {
		d.heapIdx = -1
	}
	pq.expiring, pq.parked = nil, 0
}
