package broker

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// indexed is one index entry with its offset.
type indexed struct {
	offset uint64
	entry  indexEntry
}

// readIndex returns up to max index entries of q from offset from, never past the
// durable watermark, and the offset after the last one it scanned.
func (b *Broker) readIndex(q *queue, from uint64, max int) ([]indexed, uint64, error) {
	end := q.durable.Load()
	if from < q.min.Load() {
		from = q.min.Load()
	}
	if from >= end || max <= 0 {
		return nil, from, nil
	}
	it, err := b.store.iter(queueKey(q.topic.id, q.id, from), queueKey(q.topic.id, q.id, end))
	if err != nil {
		return nil, from, err
	}
	defer it.close()
	out := make([]indexed, 0, min(max, int(end-from)))
	next := from
	for ok := it.first(); ok && len(out) < max; ok = it.next() {
		e, valid := decodeIndexEntry(it.value())
		if !valid {
			return nil, from, fmt.Errorf("corrupt index entry at %x", it.key())
		}
		off := queueKeyOffset(it.key())
		out = append(out, indexed{offset: off, entry: e})
		next = off + 1
	}
	return out, next, nil
}

// loadMessage reads the record of one index entry of q. A record that retention has
// already reclaimed is reported as found=false.
func (b *Broker) loadMessage(q *queue, ix indexed) (StoredMessage, bool, error) {
	raw, err := b.store.get(logKey(ix.entry.seq))
	if err == errNotFound {
		return StoredMessage{}, false, nil
	}
	if err != nil {
		return StoredMessage{}, false, err
	}
	return b.storedMessage(q, ix, raw)
}

// storedMessage decodes the record raw of one index entry of q; it does not keep raw.
func (b *Broker) storedMessage(q *queue, ix indexed, raw []byte) (StoredMessage, bool, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return StoredMessage{}, false, fmt.Errorf("message %d: %w", ix.entry.seq, err)
	}
	return StoredMessage{
		Message:   *r.msg,
		ID:        messageID(b.opts.StoreHost, b.opts.StorePort, ix.entry.seq),
		Seq:       ix.entry.seq,
		Topic:     q.topic.name,
		Queue:     q.id,
		Offset:    int64(ix.offset),
		StoreTime: fromMillis(r.storeTime),
		BodyMD5:   upperHex("", r.md5[:]),
		topicID:   r.topic,
	}, true, nil
}

// recordLoader loads the records of one pull or pop through a single iterator. A
// batch reads up to 32 records of one queue, which lie in ascending log order a few
// apart: seeking forward from the last one costs a fraction of a fresh Get, which
// builds an iterator over every level each time (a Get per message was half the CPU
// of a pull). The zero value is ready; close releases it.
type recordLoader struct {
	b          *Broker
	it         storeIter
	ok         bool // it is open
	positioned bool // it is at a record
}

func (l *recordLoader) load(q *queue, ix indexed) (StoredMessage, bool, error) {
	if !l.ok {
		it, err := l.b.store.iter([]byte{kindLog}, []byte{kindLog + 1})
		if err != nil {
			return StoredMessage{}, false, err
		}
		l.it, l.ok = it, true
	}
	key := logKey(ix.entry.seq)
	if !l.position(key) || !bytes.Equal(l.it.key(), key) {
		return StoredMessage{}, false, l.it.error()
	}
	return l.b.storedMessage(q, ix, l.it.value())
}

// maxStepsForward is how far the loader walks with Next before it seeks: a queue's
// records are interleaved with the other queues' of the topic (and other topics'),
// and stepping over a few is cheaper than a seek through every level.
const maxStepsForward = 16

// position moves the iterator to the first record at or after key.
func (l *recordLoader) position(key []byte) bool {
	if l.positioned {
		for range maxStepsForward {
			switch c := bytes.Compare(l.it.key(), key); {
			case c == 0:
				return true
			case c > 0:
				return l.seek(key) // behind us: a late record
			}
			if !l.it.next() {
				return l.seek(key)
			}
		}
	}
	return l.seek(key)
}

func (l *recordLoader) seek(key []byte) bool {
	l.positioned = l.it.seekGE(key)
	return l.positioned
}

func (l *recordLoader) close() {
	if l.ok {
		_ = l.it.close()
		l.ok = false
	}
}

// PullResult is what a pull returns.
type PullResult struct {
	// Messages match the filter, in queue order.
	Messages []StoredMessage
	// NextOffset is where the next pull starts: after the last entry scanned, matching
	// or not.
	NextOffset int64
	// MinOffset and MaxOffset bound the queue: MaxOffset is the next offset to be
	// written.
	MinOffset, MaxOffset int64
}

// Pull reads up to max messages of one queue from offset, for a TCP group. With no
// message to return it waits up to wait for one to arrive. An offset outside the
// queue is answered with no messages and NextOffset at the nearest valid offset.
func (b *Broker) Pull(ctx context.Context, instanceID, groupID, topicName string, queueID int, offset int64, max int, filter TagFilter, wait time.Duration) (PullResult, error) {
	q, _, err := b.consumerQueue(instanceID, groupID, topicName, queueID, TCP)
	if err != nil {
		return PullResult{}, err
	}
	if max <= 0 || max > 1024 {
		return PullResult{}, fmt.Errorf("%w: pull of %d messages; 1 to 1024", ErrInvalidArgument, max)
	}
	deadline := b.clock.Now().Add(wait)
	for {
		res, err := b.pullOnce(q, offset, max, filter)
		if err != nil || len(res.Messages) > 0 || res.NextOffset != offset {
			return res, err
		}
		if !b.waitForMessages(ctx, q.topic, deadline) {
			return res, nil
		}
	}
}

func (b *Broker) pullOnce(q *queue, offset int64, max int, filter TagFilter) (PullResult, error) {
	res := PullResult{MinOffset: int64(q.min.Load()), MaxOffset: int64(q.durable.Load())}
	switch {
	case offset < res.MinOffset:
		res.NextOffset = res.MinOffset
		return res, nil
	case offset > res.MaxOffset:
		res.NextOffset = res.MaxOffset
		return res, nil
	}
	from := uint64(offset)
	records := recordLoader{b: b}
	defer records.close()
	for len(res.Messages) < max {
		ix, next, err := b.readIndex(q, from, max-len(res.Messages))
		if err != nil {
			return res, err
		}
		for _, e := range ix {
			if !filter.mayMatch(e.entry.tagHash) {
				continue
			}
			m, ok, err := records.load(q, e)
			if err != nil {
				return res, err
			}
			if ok && filter.matches(m.Tag) {
				res.Messages = append(res.Messages, m)
			}
		}
		if len(ix) == 0 || next == from {
			from = next
			break
		}
		from = next
	}
	res.NextOffset = int64(from)
	return res, nil
}

// waitForMessages blocks until t is signalled, the deadline passes, ctx ends or the
// broker closes; it reports whether it is worth looking again.
func (b *Broker) waitForMessages(ctx context.Context, t *topic, deadline time.Time) bool {
	d := deadline.Sub(b.clock.Now())
	if d <= 0 {
		return false
	}
	ch := t.waitCh()
	timer := b.clock.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ch:
		b.mu.RLock()
		closed := b.closed
		b.mu.RUnlock()
		return !closed && !t.deleted.Load()
	case <-timer.C():
		return false
	case <-ctx.Done():
		return false
	}
}

// consumerQueue resolves the queue a group consumes and checks the group's protocol.
func (b *Broker) consumerQueue(instanceID, groupID, topicName string, queueID int, proto Protocol) (*queue, *group, error) {
	t, g, err := b.consumerTarget(instanceID, topicName, groupID, proto)
	if err != nil {
		return nil, nil, err
	}
	q, err := b.queueOf(t, queueID)
	return q, g, err
}

// consumerTarget resolves a topic and a group, which must use proto.
func (b *Broker) consumerTarget(instanceID, topicName, groupID string, proto Protocol) (*topic, *group, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, err := b.topicLocked(instanceID, topicName)
	if err != nil {
		return nil, nil, err
	}
	g, err := b.protocolGroupLocked(instanceID, groupID, proto)
	return t, g, err
}

// protocolGroupLocked resolves a group, which must use proto. b.mu should be held.
func (b *Broker) protocolGroupLocked(instanceID, groupID string, proto Protocol) (*group, error) {
	g, err := b.groupLocked(instanceID, groupID)
	if err != nil {
		return nil, err
	}
	if g.protocol != proto {
		return nil, fmt.Errorf("%w: group %q is a %s group", ErrWrongProtocol, groupID, g.protocol)
	}
	return g, nil
}

// queueOf returns queue queueID of t.
func (b *Broker) queueOf(t *topic, queueID int) (*queue, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if queueID < 0 || queueID >= len(t.queues) {
		return nil, fmt.Errorf("%w: queue %d of topic %q with %d queues", ErrInvalidArgument, queueID, t.name, len(t.queues))
	}
	return t.queues[queueID], nil
}
