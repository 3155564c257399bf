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

// queueView reads one queue's index entries and their records as of one moment.
//
// This is what keeps a consumer from skipping a message. The durable watermark is
// read first and the store view opened after it, so every entry below end is in
// the view; and a record is written, and reclaimed, in the same batch as the index
// entry that owns it, so every entry in the view has its record in the view too. A
// record missing behind an entry is corruption, reported as an error, never taken
// for retention: retention shows itself by the entry being gone.
//
// A view costs two store iterators. Keep it for one pull or pop of one queue: it
// pins what it sees (memtables, tables) until closed.
type queueView struct {
	b   *Broker
	q   *queue
	end uint64 // the durable watermark when the view opened
	idx storeIter
	rec recordLoader
}

// openView opens a view of q. Close it.
func (b *Broker) openView(q *queue) (*queueView, error) {
	end := q.durable.Load()
	idx, err := b.store.iter(queueKey(q.topic.id, q.id, 0), queueKey(q.topic.id, q.id, end))
	if err != nil {
		return nil, err
	}
	return &queueView{b: b, q: q, end: end, idx: idx}, nil
}

func (v *queueView) close() {
	v.rec.close()
	_ = v.idx.close()
}

// maxScan bounds the index entries one read of a queue walks. A filter that
// matches nothing would otherwise walk the whole backlog under the consumer's
// lock; instead the read returns how far it got and the consumer goes on from
// there, as RocketMQ's broker answers a pull that found nothing matching.
const maxScan = 4096

// maxSQLScan is maxScan for a SQL92 filter, which reads and evaluates every entry's
// record where a tag filter rules most out from the index: a read of a backlog
// that nothing matches costs about what a tag filter's does (a millisecond or two).
const maxSQLScan = 512

// MaxReadBytes bounds the records one pull or pop returns (and so what one answer
// holds in memory): it stops before the message that would pass it, but always
// returns at least one. RocketMQ's broker stops at 256 KiB (from memory) or 64 KiB
// (from disk); a larger bound keeps small messages to full batches of 16 or 32.
const MaxReadBytes = 1 << 20

// scan walks the view's entries from offset from, at most maxScan of them
// (maxSQLScan for a SQL92 filter), and hands visit each one whose message
// matches filter, with its record. It stops
// once visit returns false (it wants no more), and returns the offset after the
// last entry it handled: the next read starts there. skipped is called for each entry the
// filter rules out, matched or not against the record.
//
// budget bounds the bytes of the records handed to visit: scan stops before the
// entry that would pass it, unless *budget is whole (nothing taken yet), so that a
// message larger than the budget is still delivered alone. It is decreased by what
// visit takes.
func (v *queueView) scan(from uint64, filter Filter, budget *int, skipped func(offset uint64), visit func(indexed, StoredMessage) bool) (next uint64, err error) {
	whole := *budget
	limit := maxScan
	if filter.sql != nil {
		limit = maxSQLScan
	}
	return v.walkUpTo(from, limit, func(ix indexed) (walkStep, error) {
		if !filter.mayMatch(ix.entry.tagHash) {
			skipped(ix.offset)
			return walkOn, nil
		}
		if int(ix.entry.size) > *budget && *budget != whole {
			return walkStopBefore, nil
		}
		m, err := v.load(ix)
		if err != nil {
			return walkStopBefore, err
		}
		if !filter.matches(&m.Message) {
			skipped(ix.offset)
			return walkOn, nil
		}
		*budget -= int(ix.entry.size)
		if !visit(ix, m) || *budget <= 0 {
			return walkStopAfter, nil
		}
		return walkOn, nil
	})
}

// walkStep is what a walk's function wants next.
type walkStep int

const (
	walkOn         walkStep = iota // the entry is handled; go on
	walkStopAfter                  // the entry is handled; stop
	walkStopBefore                 // stop, leaving the entry for the next read
)

// walk hands fn the view's entries from offset from on, at most maxScan of them,
// until fn stops, and returns the offset after the last one handled (the view's
// end if it walked to the end).
func (v *queueView) walk(from uint64, fn func(indexed) (walkStep, error)) (next uint64, err error) {
	return v.walkUpTo(from, maxScan, fn)
}

// walkUpTo is walk over at most limit entries.
func (v *queueView) walkUpTo(from uint64, limit int, fn func(indexed) (walkStep, error)) (next uint64, err error) {
	next = max(from, v.q.min.Load())
	if next >= v.end {
		return next, nil
	}
	n := 0
	for ok := v.idx.seekGE(queueKey(v.q.topic.id, v.q.id, next)); ok; ok = v.idx.next() {
		if n == limit {
			return next, nil
		}
		n++
		e, valid := decodeIndexEntry(v.idx.value())
		if !valid {
			return next, fmt.Errorf("corrupt index entry at %x", v.idx.key())
		}
		ix := indexed{offset: queueKeyOffset(v.idx.key()), entry: e}
		step, err := fn(ix)
		if err != nil || step == walkStopBefore {
			return next, err
		}
		next = ix.offset + 1
		if step == walkStopAfter {
			return next, nil
		}
	}
	if err := v.idx.error(); err != nil {
		return next, err
	}
	return v.end, nil // walked to the end: nothing below end is left
}

// at returns the entry at offset with its record; found is false if the entry is
// gone (retention reclaimed it, or it was re-driven out of the dead letters).
func (v *queueView) at(offset uint64) (StoredMessage, bool, error) {
	key := queueKey(v.q.topic.id, v.q.id, offset)
	if !v.idx.seekGE(key) || !bytes.Equal(v.idx.key(), key) {
		return StoredMessage{}, false, v.idx.error()
	}
	e, valid := decodeIndexEntry(v.idx.value())
	if !valid {
		return StoredMessage{}, false, fmt.Errorf("corrupt index entry at %x", key)
	}
	m, err := v.load(indexed{offset: offset, entry: e})
	return m, err == nil, err
}

// load reads the record of an entry of the view.
func (v *queueView) load(ix indexed) (StoredMessage, error) {
	if !v.rec.ok {
		it, err := v.idx.clone([]byte{kindLog}, []byte{kindLog + 1})
		if err != nil {
			return StoredMessage{}, err
		}
		v.rec.it, v.rec.ok = it, true
	}
	raw, found, err := v.rec.load(logKey(ix.entry.seq))
	if err != nil {
		return StoredMessage{}, err
	}
	if !found {
		return StoredMessage{}, fmt.Errorf("%w: queue %d of topic %q: the entry at offset %d names record %d, which is missing",
			errCorruptRecord, v.q.id, v.q.topic.name, ix.offset, ix.entry.seq)
	}
	return v.b.storedMessage(v.q, ix, raw)
}

// storedMessage decodes the record raw of one index entry of q; it does not keep raw.
func (b *Broker) storedMessage(q *queue, ix indexed, raw []byte) (StoredMessage, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return StoredMessage{}, fmt.Errorf("message %d: %w", ix.entry.seq, err)
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
	}, nil
}

// recordLoader reads the records of one view through a single iterator. A read
// takes up to 32 records of one queue, which lie in ascending log order a few
// apart: seeking forward from the last one costs a fraction of a fresh Get, which
// builds an iterator over every level each time (a Get per message was half the
// CPU of a pull).
type recordLoader struct {
	it         storeIter
	ok         bool // it is open
	positioned bool // it is at a record
}

// load returns the value at key, which the loader's view may lack.
func (l *recordLoader) load(key []byte) ([]byte, bool, error) {
	if !l.position(key) || !bytes.Equal(l.it.key(), key) {
		return nil, false, l.it.error()
	}
	v, err := l.it.valueErr()
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
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
func (b *Broker) Pull(ctx context.Context, instanceID, groupID, topicName string, queueID int, offset int64, max int, filter Filter, wait time.Duration) (PullResult, error) {
	if err := b.enter(); err != nil {
		return PullResult{}, err
	}
	defer b.leave()
	q, g, err := b.consumerQueue(instanceID, groupID, topicName, queueID, TCP)
	if err != nil {
		return PullResult{}, err
	}
	if max <= 0 || max > 1024 {
		return PullResult{}, fmt.Errorf("%w: pull of %d messages; 1 to 1024", ErrInvalidArgument, max)
	}
	if to, moved := b.takeReset(g, q, offset); moved {
		return PullResult{NextOffset: to, MinOffset: int64(q.min.Load()), MaxOffset: int64(q.durable.Load())}, nil
	}
	var res PullResult
	err = b.longPoll(ctx, q.topic, b.clock.Now().Add(wait), func() (bool, bool, time.Time, error) {
		err := readWithin(ctx, func() (int, int, error) {
			var used int
			var err error
			res, used, err = b.pullOnce(q, offset, max, filter)
			return len(res.Messages), used, err
		})
		return len(res.Messages) > 0 || res.NextOffset != offset, false, time.Time{}, err
	})
	g.countsOn(q.topic.name).delivered.Add(uint64(len(res.Messages)))
	return res, err
}

// ReadBudget is memory a server holds the answers of reads in, until they are
// written: a read takes what it may return (MaxReadBytes) before it reads, and
// gives back what its records did not use. What the answer holds stays taken,
// and the server gives it back once the answer is written. A client that reads
// its answers slowly, or not at all, then makes its own reads wait, not the
// process run out of memory. A server passes one to Pull, Pop and PopHalf with
// WithReadBudget.
type ReadBudget interface {
	// Take takes n bytes, waiting for them until ctx ends.
	Take(ctx context.Context, n int) error
	// Charge takes n bytes at once, past the budget if need be: a read always
	// returns one message, even one larger than MaxReadBytes.
	Charge(n int)
	// Give gives n bytes back.
	Give(n int)
}

type readBudgetKey struct{}

// WithReadBudget makes the reads of calls with the returned context take what
// their answers hold from rb. The context carries it because the budget belongs
// to the request (to its connection, or its tenant), not to the broker.
func WithReadBudget(ctx context.Context, rb ReadBudget) context.Context {
	return context.WithValue(ctx, readBudgetKey{}, rb)
}

// readWithin runs read, which returns how many messages it found and the bytes
// of their records, under ctx's read budget if it has one.
func readWithin(ctx context.Context, read func() (found, used int, err error)) error {
	rb, _ := ctx.Value(readBudgetKey{}).(ReadBudget)
	if rb == nil {
		_, _, err := read()
		return err
	}
	if err := rb.Take(ctx, MaxReadBytes); err != nil {
		return err
	}
	n, used, err := read()
	switch {
	case err != nil || n == 0:
		rb.Give(MaxReadBytes)
	case used < MaxReadBytes:
		rb.Give(MaxReadBytes - used)
	case used > MaxReadBytes:
		rb.Charge(used - MaxReadBytes)
	}
	return err
}

// pullOnce reads up to max messages from offset, and returns with them the
// bytes of their records.
func (b *Broker) pullOnce(q *queue, offset int64, max int, filter Filter) (PullResult, int, error) {
	res := PullResult{MinOffset: int64(q.min.Load()), MaxOffset: int64(q.durable.Load())}
	switch {
	case offset < res.MinOffset:
		res.NextOffset = res.MinOffset
		return res, 0, nil
	case offset > res.MaxOffset:
		res.NextOffset = res.MaxOffset
		return res, 0, nil
	}
	v, err := b.openView(q)
	if err != nil {
		return res, 0, err
	}
	defer v.close()
	budget := MaxReadBytes
	now := b.now().UnixMilli()
	next, err := v.scan(uint64(offset), filter, &budget, func(uint64) {}, func(ix indexed, m StoredMessage) bool {
		q.topic.stats.consume.observe(time.Duration(now-ix.entry.storeTime) * time.Millisecond)
		res.Messages = append(res.Messages, m)
		return len(res.Messages) < max
	})
	res.NextOffset = int64(next)
	return res, MaxReadBytes - budget, err
}

// longPoll runs try until it finds something or time is up. Between tries it
// sleeps until a message becomes deliverable on t, until the time try names (an
// invisibility running out, a check-back coming due), or until the deadline;
// again asks for another try at once. The wake-up channel is taken before each
// try, so a message that becomes deliverable while try looks ends the sleep after
// it at once. It fails with ctx's error, ErrClosed or ErrTopicNotFound when those
// end the wait. It is the one long-poll loop of pull, pop and half-message pop.
func (b *Broker) longPoll(ctx context.Context, t *topic, deadline time.Time, try func() (found, again bool, wake time.Time, err error)) error {
	for {
		ch := t.waitCh()
		found, again, wake, err := try()
		switch {
		case err != nil || found:
			return err
		case again:
			if err := ctx.Err(); err != nil {
				return err
			}
			continue
		}
		now := b.clock.Now()
		if !now.Before(deadline) {
			return nil // time is up
		}
		// A wake time already past would only spin: it is left to the deadline.
		until := deadline
		if wake.After(now) && wake.Before(until) {
			until = wake
		}
		timer := b.clock.NewTimer(until.Sub(now))
		select {
		case <-ch:
		case <-timer.C():
		case <-ctx.Done():
		}
		timer.Stop()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case b.isClosed():
			return ErrClosed
		case t.deleted.Load():
			return fmt.Errorf("%w: %q was deleted", ErrTopicNotFound, t.name)
		}
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
