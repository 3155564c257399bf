package broker

import (
	"encoding/binary"
	"math"
	"time"
)

// RetentionInterval is how often the broker reclaims what retention allows.
const RetentionInterval = 10 * time.Minute

// retentionLoop reclaims expired messages every RetentionInterval.
func (b *Broker) retentionLoop() {
	for {
		timer := b.clock.NewTimer(RetentionInterval)
		select {
		case <-b.quit:
			timer.Stop()
			return
		case <-timer.C():
		}
		if err := b.Reclaim(); err != nil {
			b.log.Error(err, "Failed to reclaim expired messages")
		}
	}
}

// Reclaim removes messages past their topic's retention: a queue's entries stop
// being deliverable at once, and the log's records go once the longest retention on
// the broker has passed and no pending timer or half message needs them. The loop
// calls it periodically; tests call it directly.
func (b *Broker) Reclaim() error {
	now := b.now()
	b.mu.RLock()
	var queues []*queue
	longest := DefaultRetention
	for _, t := range b.topicsByID {
		queues = append(queues, t.queues...)
		longest = max(longest, t.retention)
	}
	b.mu.RUnlock()

	for _, q := range queues {
		if err := b.reclaimQueue(q, now.Add(-q.topic.retention).UnixMilli()); err != nil {
			return err
		}
	}
	return b.reclaimLog(now.Add(-longest).UnixMilli())
}

// reclaimQueue drops q's index entries stored before cutoff (ms).
func (b *Broker) reclaimQueue(q *queue, cutoff int64) error {
	from, end := q.min.Load(), q.durable.Load()
	it, err := b.store.iter(queueKey(q.topic.id, q.id, from), queueKey(q.topic.id, q.id, end))
	if err != nil {
		return err
	}
	newMin, freed := from, uint64(0)
	w := b.store.newBatch()
	for ok := it.first(); ok; ok = it.next() {
		e, valid := decodeIndexEntry(it.value())
		if !valid || e.storeTime >= cutoff {
			break
		}
		newMin = queueKeyOffset(it.key()) + 1
		freed += uint64(e.size)
		if e.late {
			w.delete(refKey(e.seq)) // the log may reclaim its record now
		}
	}
	if err := it.close(); err != nil {
		return err
	}
	if newMin == from {
		w.b.Close()
		return nil
	}
	reclaimed := q.reclaimed.Load() + freed
	w.deleteRange(queueKey(q.topic.id, q.id, from), queueKey(q.topic.id, q.id, newMin))
	v := binary.BigEndian.AppendUint64(nil, newMin)
	w.set(queueMinKey(q.topic.id, q.id), binary.BigEndian.AppendUint64(v, reclaimed))
	// Derived state: if a crash loses it, the next round does the same again.
	if err := b.store.commitNoSync(w); err != nil {
		return err
	}
	q.min.Store(newMin)
	q.reclaimed.Store(reclaimed)
	return nil
}

// reclaimLog deletes log records stored before cutoff (ms), stopping below the
// oldest record still referred to by a pending timer, an unresolved half message or
// a queue entry delivered late: those are the records older than the longest
// retention that a queue can still need.
func (b *Broker) reclaimLog(cutoff int64) error {
	limit := uint64(math.MaxUint64)
	if first, err := b.store.firstKey([]byte{kindRef}, []byte{kindRef + 1}); err != nil {
		return err
	} else if first != nil {
		limit = seqOfLogKey(first)
	}
	it, err := b.store.iter(logKey(0), logKey(limit))
	if err != nil {
		return err
	}
	end, found := uint64(0), false
	for ok := it.first(); ok; ok = it.next() {
		r, err := decodeRecordHeader(it.value())
		if err != nil || r.storeTime >= cutoff {
			break
		}
		end, found = seqOfLogKey(it.key())+1, true
	}
	if err := it.close(); err != nil {
		return err
	}
	if !found {
		return nil
	}
	w := b.store.newBatch()
	w.deleteRange(logKey(0), logKey(end))
	return b.store.commitNoSync(w)
}
