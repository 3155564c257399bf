package broker

import (
	"container/heap"
	"sync"
)

// The registry of unresolved half messages is indexed so that every look costs
// what it finds, never what other tenants hold: a producer group's check-backs
// are taken from its own queues, ordered by when each comes due, and the rollback
// of expired ones from one queue ordered by deadline. A tenant with a million half
// messages, or a thousand producer groups, then delays nobody else's check-backs,
// commits or expiries by more than the few heap operations their own take.

// checkKey names the half messages one consumer of check-backs serves: those of a
// topic published under a producer group ("" for HTTP producers, which name none).
type checkKey struct {
	topic uint32
	group string
}

// groupRef is a producer group of an instance: the TCP check-back goes to a
// connected producer of it, for its half messages on any topic of the instance.
type groupRef struct {
	instance string
	group    string
}

// txnRegistry holds the unresolved half messages in memory; each is also stored
// under its 'h' key, from which it is recovered. A half message is in the check
// and deadline queues while it is pending and not being resolved; resolving takes
// it out (begin) and either forgets it (finish) or puts it back (abort).
type txnRegistry struct {
	mu     sync.Mutex
	halves map[uint64]*halfState
	checks map[checkKey]*halfHeap // by nextEvent
	// topics lists, per producer group, the topics that have a check queue for it.
	topics    map[groupRef]map[uint32]struct{}
	deadlines halfHeap // by deadline
}

func newTxnRegistry() txnRegistry {
	return txnRegistry{halves: map[uint64]*halfState{}, checks: map[checkKey]*halfHeap{},
		topics: map[groupRef]map[uint32]struct{}{}, deadlines: newDeadlineQueue()}
}

// register adds half messages that just became durable.
func (r *txnRegistry) register(hs []*halfState) {
	if len(hs) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range hs {
		r.add(h)
	}
}

// add registers h and queues it. r.mu is held.
func (r *txnRegistry) add(h *halfState) {
	r.halves[h.seq] = h
	r.index(h)
}

// index queues h for its check-backs and its deadline. r.mu is held.
func (r *txnRegistry) index(h *halfState) {
	k := checkKey{h.topic, h.producerGroup}
	q := r.checks[k]
	if q == nil {
		q = newCheckQueue()
		r.checks[k] = q
		g := groupRef{h.instance, h.producerGroup}
		if r.topics[g] == nil {
			r.topics[g] = map[uint32]struct{}{}
		}
		r.topics[g][h.topic] = struct{}{}
	}
	heap.Push(q, h)
	heap.Push(&r.deadlines, h)
}

// unindex takes h out of its queues. r.mu is held.
func (r *txnRegistry) unindex(h *halfState) {
	if h.checkIdx < 0 {
		return
	}
	k := checkKey{h.topic, h.producerGroup}
	q := r.checks[k]
	heap.Remove(q, h.checkIdx)
	heap.Remove(&r.deadlines, h.deadlineIdx)
	if q.Len() == 0 {
		delete(r.checks, k)
		g := groupRef{h.instance, h.producerGroup}
		delete(r.topics[g], h.topic)
		if len(r.topics[g]) == 0 {
			delete(r.topics, g)
		}
	}
}

// begin marks h as being resolved, so that nothing else takes it. r.mu is held.
func (r *txnRegistry) begin(h *halfState) {
	h.resolving = true
	r.unindex(h)
}

// abort puts back a half message whose resolution failed. r.mu is held.
func (r *txnRegistry) abort(h *halfState) {
	h.resolving = false
	r.index(h)
}

// finish forgets a resolved half message. r.mu is held.
func (r *txnRegistry) finish(h *halfState) {
	delete(r.halves, h.seq)
}

// rescheduled moves h in its check queue after its checkAt changed. r.mu is held.
func (r *txnRegistry) rescheduled(h *halfState) {
	heap.Fix(r.checks[checkKey{h.topic, h.producerGroup}], h.checkIdx)
}

// takeDue begins the resolution of the half messages in the queues of keys whose
// deadline has passed, and hands out up to max whose check-back is due, with at
// most maxBytes of records (at least one), moving each to its next check. It
// returns the earliest time (ms) something else comes due in those queues, 0
// when nothing does, and the bytes of the records handed out. r.mu is held.
func (r *txnRegistry) takeDue(keys []checkKey, now int64, max, maxBytes int) (due, expired []*halfState, next int64, bytes int) {
	for _, k := range keys {
		q := r.checks[k]
		for q != nil && q.Len() > 0 && len(due) < max {
			h := q.items[0]
			if h.nextEvent() > now {
				break
			}
			if now < h.deadline && len(due) > 0 && bytes+int(h.size) > maxBytes {
				return due, expired, 0, bytes
			}
			if now >= h.deadline {
				r.begin(h)
				expired = append(expired, h)
				q = r.checks[k] // begin drops a queue it empties
				continue
			}
			h.checks++
			h.token = randomToken()
			h.checkAt = now + CheckInterval.Milliseconds()
			r.rescheduled(h)
			due = append(due, h)
			bytes += int(h.size)
		}
		if q != nil && q.Len() > 0 {
			next = minNonZero(next, q.items[0].nextEvent())
		}
	}
	return due, expired, next, bytes
}

// takeExpired begins the resolution of every half message past its deadline.
// r.mu is held.
func (r *txnRegistry) takeExpired(now int64) []*halfState {
	var out []*halfState
	for r.deadlines.Len() > 0 && r.deadlines.items[0].deadline <= now {
		h := r.deadlines.items[0]
		r.begin(h)
		out = append(out, h)
	}
	return out
}

// nextEvent is when a check queue must look at h again: its next check-back, or
// its deadline if that comes first.
func (h *halfState) nextEvent() int64 { return min(h.checkAt, h.deadline) }

// halfHeap is a min-heap of half messages by key (container/heap), which keeps
// each one's index in it in the field pos names, for Fix and Remove.
type halfHeap struct {
	items []*halfState
	key   func(*halfState) int64
	pos   func(*halfState) *int
}

// newCheckQueue orders half messages by when their check queue must look again.
func newCheckQueue() *halfHeap {
	return &halfHeap{key: (*halfState).nextEvent, pos: func(h *halfState) *int { return &h.checkIdx }}
}

// newDeadlineQueue orders half messages by deadline.
func newDeadlineQueue() halfHeap {
	return halfHeap{key: func(h *halfState) int64 { return h.deadline }, pos: func(h *halfState) *int { return &h.deadlineIdx }}
}

func (q *halfHeap) Len() int           { return len(q.items) }
func (q *halfHeap) Less(i, j int) bool { return q.key(q.items[i]) < q.key(q.items[j]) }
func (q *halfHeap) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	*q.pos(q.items[i]), *q.pos(q.items[j]) = i, j
}
func (q *halfHeap) Push(x any) {
	h := x.(*halfState)
	*q.pos(h) = len(q.items)
	q.items = append(q.items, h)
}
func (q *halfHeap) Pop() any {
	n := len(q.items) - 1
	h := q.items[n]
	q.items[n] = nil
	q.items = q.items[:n]
	*q.pos(h) = -1
	return h
}

// PendingHalfMessages returns how many unresolved half messages each topic of the
// instance holds (topics with none are left out; ones being resolved not counted).
// It costs the number of check queues, not of half messages.
func (b *Broker) PendingHalfMessages(instanceID string) map[string]int {
	byID := map[uint32]int{}
	b.txns.mu.Lock()
	for k, q := range b.txns.checks {
		if q.Len() > 0 && q.items[0].instance == instanceID {
			byID[k.topic] += q.Len()
		}
	}
	b.txns.mu.Unlock()
	out := make(map[string]int, len(byID))
	b.mu.RLock()
	defer b.mu.RUnlock()
	for id, n := range byID {
		if t, ok := b.topicsByID[id]; ok {
			out[t.name] = n
		}
	}
	return out
}
