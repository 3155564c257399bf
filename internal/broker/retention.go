package broker

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// RetentionInterval is how often the broker reclaims what retention allows.
const RetentionInterval = 10 * time.Minute

// reclaimChunk bounds the entries one reclaiming batch removes, so that a large
// backlog past retention goes in batches of bounded size.
const reclaimChunk = 1024

// retentionLoop reclaims expired messages every RetentionInterval, and reaps a
// deleted topic as soon as it is deleted.
func (b *Broker) retentionLoop() {
	for {
		timer := b.clock.NewTimer(RetentionInterval)
		select {
		case <-b.quit:
			timer.Stop()
			return
		case <-b.reapKick:
			timer.Stop()
			if err := b.reapTopics(); err != nil {
				b.log.Error(err, "Failed to remove a deleted topic's messages; retrying at the next round")
			}
			continue
		case <-timer.C():
		}
		if err := b.Reclaim(); err != nil {
			b.log.Error(err, "Failed to reclaim expired messages")
		}
	}
}

// Reclaim does the broker's housekeeping: it removes messages past their topic's
// retention, rolls back half messages unresolved past their deadline, and removes
// what deleted topics left. Each record goes with its owner (see the key layout),
// so one topic's retention keeps nothing of another's. The loop calls it
// periodically; tests call it directly.
func (b *Broker) Reclaim() error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	now := b.now()
	type reclaim struct {
		q      *queue
		cutoff int64
	}
	var todo []reclaim
	b.mu.RLock()
	for _, t := range b.topicsByID {
		for _, q := range t.queues {
			todo = append(todo, reclaim{q, now.Add(-t.retention).UnixMilli()})
		}
	}
	b.mu.RUnlock()

	for _, r := range todo {
		if err := b.messages.reclaimQueue(r.q, r.cutoff); err != nil {
			return err
		}
	}
	if err := b.expireHalves(now.UnixMilli()); err != nil {
		return err
	}
	return b.reapTopics()
}

// expireHalves rolls back every half message unresolved past its deadline, whether
// or not a producer polls for its check-backs.
func (b *Broker) expireHalves(now int64) error {
	b.txns.mu.Lock()
	expired := b.txns.takeExpired(now)
	b.txns.mu.Unlock()
	return b.rollBackExpired(expired)
}

// reapingMeta marks a deleted topic whose keys are still being removed.
type reapingMeta struct {
	Queues int `json:"queues"`
}

// kickReaper wakes the retention loop to reap deleted topics.
func (b *Broker) kickReaper() {
	select {
	case b.reapKick <- struct{}{}:
	default:
	}
}

// reapTopics removes everything deleted topics held: their entries and records, key
// entries, queue state, pending timers and half messages. Deleting a topic only
// marks it, under b.mu; the removal runs here, in bounded batches, and resumes
// after a restart.
func (b *Broker) reapTopics() error {
	b.reapMu.Lock()
	defer b.reapMu.Unlock()
	type reap struct {
		id     uint32
		queues int
	}
	var todo []reap
	if err := b.scanMeta(metaReaping, func(id string, raw []byte) error {
		var m reapingMeta
		if err := json.Unmarshal(raw, &m); err != nil || len(id) != 4 {
			return fmt.Errorf("bad reaping marker: %v", err)
		}
		todo = append(todo, reap{id: binary.BigEndian.Uint32([]byte(id)), queues: m.Queues})
		return nil
	}); err != nil {
		return err
	}
	for _, t := range todo {
		if err := b.reapTopic(t.id, t.queues); err != nil {
			return fmt.Errorf("failed to remove deleted topic %d: %w", t.id, err)
		}
	}
	return nil
}

func (b *Broker) reapTopic(id uint32, queues int) error {
	for qi := range queues {
		if err := b.messages.reapQueue(id, qi); err != nil {
			return err
		}
	}
	w := b.store.newBatch()
	// Timers of the topic: the timer range is keyed by due time, so walk it all;
	// deleting a topic is rare, and its timers can be 40 days out.
	it, err := b.store.iter([]byte{kindTimer}, []byte{kindTimer + 1})
	if err != nil {
		return err
	}
	for ok := it.first(); ok; ok = it.next() {
		p, valid := decodePendingEntry(it.value())
		if !valid || p.topic != id {
			continue
		}
		seq := binary.BigEndian.Uint64(it.key()[9:])
		w.delete(it.key())
		w.delete(refKey(seq))
		if err := b.messages.deleteRecordNow(w, seq); err != nil {
			_ = it.close()
			return err
		}
	}
	if err := it.close(); err != nil {
		return err
	}
	// Half messages of the topic.
	var halves []*halfState
	b.txns.mu.Lock()
	for k, q := range b.txns.checks {
		if k.topic == id {
			halves = append(halves, q.items...)
		}
	}
	for _, h := range halves {
		b.txns.begin(h)
	}
	b.txns.mu.Unlock()
	// A failure puts them back, for the next round to find again.
	abort := func(err error) error {
		b.txns.mu.Lock()
		defer b.txns.mu.Unlock()
		for _, h := range halves {
			b.txns.abort(h)
		}
		return err
	}
	for _, h := range halves {
		w.delete(halfKey(h.seq))
		if err := b.messages.deleteRecordNow(w, h.seq); err != nil {
			return abort(err)
		}
	}
	for _, kind := range []byte{kindKey, kindQueueMin, kindBytes, kindQueue} {
		p := topicPrefix(kind, id)
		w.deleteRange(p, prefixEnd(p))
	}
	w.delete(metaKey(metaReaping, topicIDString(id)))
	if err := b.store.commitNoSync(w); err != nil {
		return abort(err)
	}
	b.txns.mu.Lock()
	for _, h := range halves {
		b.txns.finish(h)
	}
	b.txns.mu.Unlock()
	return nil
}
