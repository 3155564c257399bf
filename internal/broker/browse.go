package broker

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Browsing, for diagnosis (the web console): a topic's messages stored in a time
// range, and where one message stands with each group that consumes its topic.
// Nothing here changes what a consumer sees.

// MaxRangeMessages bounds the messages one MessagesBetween returns.
const MaxRangeMessages = 256

// RangeResult is what MessagesBetween found.
type RangeResult struct {
	// Messages are ordered by store time, then queue and offset.
	Messages []StoredMessage
	// Truncated says the range holds more than was returned: past max, past the
	// read budget (MaxReadBytes of records), or past the entries one read of a
	// queue walks. Narrow the range, or start it after the last one returned.
	Truncated bool
}

// MessagesBetween returns up to max (1..MaxRangeMessages) of the topic's messages
// that entered its queues in [from, to), oldest first. A message delivered late (a
// timer, a committed half message) counts from when it entered its queue, as a
// search by time finds it (OffsetAt).
func (b *Broker) MessagesBetween(instanceID, topicName string, from, to time.Time, max int) (RangeResult, error) {
	if err := b.enter(); err != nil {
		return RangeResult{}, err
	}
	defer b.leave()
	if max < 1 || max > MaxRangeMessages {
		return RangeResult{}, fmt.Errorf("%w: %d messages; 1 to %d", ErrInvalidArgument, max, MaxRangeMessages)
	}
	if !from.Before(to) {
		return RangeResult{}, fmt.Errorf("%w: the range ends (%v) before it starts (%v)", ErrInvalidArgument, to, from)
	}
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	var queues []*queue
	if err == nil {
		queues = t.queues
	}
	b.mu.RUnlock()
	if err != nil {
		return RangeResult{}, err
	}
	fromMs, toMs := from.UnixMilli(), to.UnixMilli()

	// First the index entries alone, at most max of each queue: the records are
	// read only for those that make the cut, so a wide range costs seeks, not
	// bodies.
	type candidate struct {
		q  *queue
		ix indexed
	}
	var cands []candidate
	var res RangeResult
	for _, q := range queues {
		v, err := b.messages.openView(q)
		if err != nil {
			return RangeResult{}, err
		}
		start, err := v.offsetAt(fromMs)
		if err != nil {
			v.close()
			return RangeResult{}, err
		}
		n, stopped := 0, false
		next, err := v.walk(start, func(ix indexed) (walkStep, error) {
			switch {
			case ix.entry.storeTime >= toMs:
				stopped = true
				return walkStopBefore, nil
			case n == max:
				stopped, res.Truncated = true, true
				return walkStopBefore, nil
			case ix.entry.storeTime >= fromMs: // store times grow only to within a moment
				cands = append(cands, candidate{q, ix})
				n++
			}
			return walkOn, nil
		})
		end := v.end
		v.close()
		if err != nil {
			return RangeResult{}, err
		}
		if !stopped && next < end {
			res.Truncated = true // the walk's bound, not the range's end
		}
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.ix.entry.storeTime, b.ix.entry.storeTime), cmp.Compare(a.q.id, b.q.id),
			cmp.Compare(a.ix.offset, b.ix.offset))
	})
	if len(cands) > max {
		cands, res.Truncated = cands[:max], true
	}
	budget := MaxReadBytes
	for i, c := range cands {
		if i > 0 && int(c.ix.entry.size) > budget {
			cands, res.Truncated = cands[:i], true
			break
		}
		budget -= int(c.ix.entry.size)
	}

	// Then their records, one view per queue; an entry reclaimed meanwhile is
	// left out, as it would be had the range been read a moment later.
	byQueue := map[*queue][]int{}
	for i, c := range cands {
		byQueue[c.q] = append(byQueue[c.q], i)
	}
	found := make([]*StoredMessage, len(cands))
	for q, idx := range byQueue {
		v, err := b.messages.openView(q)
		if err != nil {
			return RangeResult{}, err
		}
		for _, i := range idx {
			m, ok, err := v.at(cands[i].ix.offset)
			if err != nil {
				v.close()
				return RangeResult{}, err
			}
			if ok {
				found[i] = &m
			}
		}
		v.close()
	}
	for _, m := range found {
		if m != nil {
			res.Messages = append(res.Messages, *m)
		}
	}
	return res, nil
}

// DeliveryState is where a message stands with one consumer group.
type DeliveryState string

const (
	// DeliveryPending: the group has not been handed it yet.
	DeliveryPending DeliveryState = "Pending"
	// DeliveryInFlight: handed to a consumer of the group (pop style) and not yet
	// acknowledged.
	DeliveryInFlight DeliveryState = "InFlight"
	// DeliveryDone: the group is past it: acknowledged, committed past, moved to the
	// dead letters, or skipped by a tag filter or a reset.
	DeliveryDone DeliveryState = "Done"
	// DeliveryNotDue: no group can have it yet: a timer not yet due, or a half
	// message not yet committed.
	DeliveryNotDue DeliveryState = "NotDue"
	// DeliveryUnknown: the message's place in its queue was not found within one
	// read's bound (a half message committed long after it was published), so
	// its state is not known.
	DeliveryUnknown DeliveryState = "Unknown"
)

// GroupDelivery is a message's state with one group.
type GroupDelivery struct {
	Group    string
	Protocol Protocol
	State    DeliveryState
	// ConsumedTimes counts the deliveries of a message in flight so far;
	// NextVisibleTime is when it is delivered again unless acknowledged (zero while
	// held behind an ordered batch or on its way to the dead letters).
	ConsumedTimes   int
	NextVisibleTime time.Time
}

// MessageState is a message and its state with each group consuming its topic.
type MessageState struct {
	// Message has its Offset once it is in its queue, -1 before (or if it could not
	// be found there within one read's bound: a half message committed long after
	// it was published).
	Message StoredMessage
	// Deliveries are those of the groups that consume the message's topic (that
	// committed an offset on it or popped from it), sorted by group id. A retry
	// topic's messages are its group's only; dead letters are no group's.
	Deliveries []GroupDelivery
}

// MessageState returns the instance's message with id and its state with each
// group that consumes its topic.
func (b *Broker) MessageState(instanceID, id string) (MessageState, error) {
	if err := b.enter(); err != nil {
		return MessageState{}, err
	}
	defer b.leave()
	seq, ok := parseMessageID(id)
	if !ok {
		return MessageState{}, fmt.Errorf("%w: %q is not a message id", ErrInvalidArgument, id)
	}
	m, err := b.messageBySeq(instanceID, seq)
	if err != nil {
		return MessageState{}, err
	}
	b.mu.RLock()
	t, ok := b.topicsByID[m.topicID]
	var q *queue
	var groups []*group
	if inst := b.instances[instanceID]; ok && inst != nil && m.Queue >= 0 && m.Queue < len(t.queues) {
		q = t.queues[m.Queue]
		for _, g := range inst.groups {
			if !t.system || t.name == RetryTopic(g.name) {
				groups = append(groups, g)
			}
		}
	}
	b.mu.RUnlock()
	if q == nil {
		return MessageState{}, fmt.Errorf("%w: no message %d", ErrMessageNotFound, seq)
	}
	if strings.HasPrefix(t.name, DLQTopicPrefix) {
		groups = nil
	}
	slices.SortFunc(groups, func(a, b *group) int { return strings.Compare(a.name, b.name) })

	notDue, err := b.notDue(seq)
	if err != nil {
		return MessageState{}, err
	}
	offset := int64(-1)
	if !notDue {
		hint := max(m.StoreTime.UnixMilli(), millis(m.DeliverAt))
		if off, ok, err := b.locate(q, seq, hint); err != nil {
			return MessageState{}, err
		} else if ok {
			offset = int64(off)
		}
	}
	m.Offset = offset
	out := MessageState{Message: m}
	for _, g := range groups {
		d, consumes, err := b.deliveryOf(g, q, offset, notDue)
		if err != nil {
			return MessageState{}, err
		}
		if consumes {
			out.Deliveries = append(out.Deliveries, d)
		}
	}
	return out, nil
}

// notDue reports whether the record at seq waits to enter its queue: a timer not
// yet due, or an unresolved half message.
func (b *Broker) notDue(seq uint64) (bool, error) {
	b.txns.mu.Lock()
	_, half := b.txns.halves[seq]
	b.txns.mu.Unlock()
	if half {
		return true, nil
	}
	switch _, err := b.store.get(refKey(seq)); err {
	case nil:
		return true, nil
	case errNotFound:
		return false, nil
	default:
		return false, err
	}
}

// locate finds the offset of the record at seq in q. Entries' sequences grow with
// their offsets, except for records delivered late (timers come due, committed half
// messages), which enter the queue when delivered: a binary search by sequence
// finds the others, and a late one is looked for from when it was due (hint, ms)
// for one read's bound of entries.
func (b *Broker) locate(q *queue, seq uint64, hint int64) (uint64, bool, error) {
	v, err := b.messages.openView(q)
	if err != nil {
		return 0, false, err
	}
	defer v.close()
	lo, hi := q.min.Load(), v.end
	for lo < hi {
		mid := lo + (hi-lo)/2
		if !v.idx.seekGE(queueKey(q.topic.id, q.id, mid)) {
			if err := v.idx.error(); err != nil {
				return 0, false, err
			}
			hi = mid
			continue
		}
		e, valid := decodeIndexEntry(v.idx.value())
		if !valid {
			return 0, false, fmt.Errorf("corrupt index entry at %x", v.idx.key())
		}
		off := queueKeyOffset(v.idx.key())
		switch {
		case e.seq == seq:
			return off, true, nil
		case e.seq > seq:
			hi = mid
		default:
			lo = off + 1
		}
	}
	start, err := v.offsetAt(hint)
	if err != nil {
		return 0, false, err
	}
	var found uint64
	ok := false
	_, err = v.walk(start, func(ix indexed) (walkStep, error) {
		if ix.entry.seq == seq {
			found, ok = ix.offset, true
			return walkStopAfter, nil
		}
		return walkOn, nil
	})
	return found, ok, err
}

// deliveryOf is the state of the message at offset of q (-1: not located) with g;
// consumes is false if g never consumed q's topic. It reads the group's stored
// offsets first, then its pop state in memory, which is newer, as GroupStats does.
func (b *Broker) deliveryOf(g *group, q *queue, offset int64, notDue bool) (d GroupDelivery, consumes bool, err error) {
	d = GroupDelivery{Group: g.name, Protocol: g.protocol}
	// The group's stored offsets on the topic: whether it consumes it, and its
	// committed offset on q.
	prefix := offsetTopicPrefix(g.id, q.topic.id)
	it, err := b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		return d, false, err
	}
	committed := q.min.Load() // a queue of a consumed topic the group never touched starts at its oldest
	for ok := it.first(); ok; ok = it.next() {
		consumes = true
		_, queue, kok := offsetKeyQueue(it.key())
		if off, vok := decodeOffset(it.value()); kok && vok && queue == q.id {
			committed = max64(committed, off)
		}
	}
	if err := it.close(); err != nil {
		return d, false, err
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	for other := range g.pop {
		consumes = consumes || other.topic == q.topic
	}
	switch {
	case !consumes:
		return d, false, nil
	case notDue:
		d.State = DeliveryNotDue
		return d, true, nil
	case offset < 0:
		d.State = DeliveryUnknown
		return d, true, nil
	}
	off := uint64(offset)
	pq, ok := g.pop[q]
	if !ok {
		d.State = DeliveryPending
		if off < committed {
			d.State = DeliveryDone
		}
		return d, true, nil
	}
	var visibleAt int64
	d.State, d.ConsumedTimes, visibleAt = pq.stateOf(off)
	if visibleAt != 0 {
		d.NextVisibleTime = fromMillis(visibleAt)
	}
	return d, true, nil
}
