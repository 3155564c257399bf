package broker

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// DefaultDelayLevels returns RocketMQ's delay levels 1..18, used by the TCP
// protocol's delayed messages and by retries: a new slice each time, so that no
// caller changes another's.
func DefaultDelayLevels() []time.Duration {
	return []time.Duration{
		time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 3 * time.Minute, 4 * time.Minute, 5 * time.Minute,
		6 * time.Minute, 7 * time.Minute, 8 * time.Minute, 9 * time.Minute, 10 * time.Minute,
		20 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour,
	}
}

// delay returns the delay of level, clamped to the table as RocketMQ does; level 0
// or less means no delay.
func (b *Broker) delay(level int) time.Duration {
	if level <= 0 {
		return 0
	}
	levels := b.opts.DelayLevels
	return levels[min(level, len(levels))-1]
}

// timerBatch bounds how many due timers one round delivers.
const timerBatch = 1024

// timers remembers the earliest due time the timer loop should wake for. The timers
// themselves live in the store, so a large scheduled backlog costs no memory.
type timers struct {
	mu   sync.Mutex
	next int64 // ms; zero: none known
	kick chan struct{}
}

// wake tells the timer loop about a timer due at due (ms).
func (t *timers) wake(due int64) {
	t.mu.Lock()
	if t.next == 0 || due < t.next {
		t.next = due
	}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// timerLoop delivers timers as they come due: each enters its queue through the
// writer, which hands out its offset and deletes the timer in the same batch.
func (b *Broker) timerLoop() {
	for {
		n, next, err := b.deliverDueTimers()
		if err != nil {
			b.log.Error(err, "Failed to deliver due timers; retrying")
			next = b.now().Add(time.Second).UnixMilli()
		} else if n == timerBatch {
			continue // more are due
		}
		b.timers.mu.Lock()
		b.timers.next = next
		b.timers.mu.Unlock()
		var fire <-chan time.Time
		var timer interface{ Stop() bool }
		if next != 0 {
			tm := b.clock.NewTimer(time.UnixMilli(next).Sub(b.clock.Now()))
			fire, timer = tm.C(), tm
		}
		select {
		case <-b.quit:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-b.timers.kick:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// deliverDueTimers delivers up to timerBatch due timers and returns how many, and
// when the next one is due (ms, zero if none).
func (b *Broker) deliverDueTimers() (int, int64, error) {
	now := b.now().UnixMilli()
	it, err := b.store.iter([]byte{kindTimer}, timerKey(now+1, 0))
	if err != nil {
		return 0, 0, err
	}
	var reqs []*appendRequest
	var orphans [][]byte
	for ok := it.first(); ok && len(reqs)+len(orphans) < timerBatch; ok = it.next() {
		key := append([]byte(nil), it.key()...)
		p, valid := decodePendingEntry(it.value())
		if !valid {
			_ = it.close()
			return 0, 0, fmt.Errorf("corrupt timer entry %x", key)
		}
		q := b.queueByID(p.topic, p.queue)
		if q == nil {
			orphans = append(orphans, key) // its topic was deleted
			continue
		}
		seq := binary.BigEndian.Uint64(key[9:])
		reqs = append(reqs, &appendRequest{topic: q.topic, done: make(chan struct{}), entries: []appendEntry{{
			queue: q, seq: seq, tagHash: p.tagHash, store: p.store, size: p.size, remove: [][]byte{key, refKey(seq)}, timer: true,
		}}})
	}
	if err := it.close(); err != nil {
		return 0, 0, err
	}
	if len(orphans) > 0 {
		w := b.store.newBatch()
		for _, k := range orphans {
			// The reaper removes a deleted topic's timers; one due meanwhile goes
			// here, with its record.
			seq := binary.BigEndian.Uint64(k[9:])
			w.delete(k)
			w.delete(refKey(seq))
			if err := b.messages.deleteRecordNow(w, seq); err != nil {
				w.discard()
				return 0, 0, err
			}
		}
		if err := b.store.commitNoSync(w); err != nil {
			return 0, 0, err
		}
	}
	if err := b.submit(reqs); err != nil {
		return 0, 0, err
	}
	next, err := b.store.firstKey([]byte{kindTimer}, []byte{kindTimer + 1})
	if err != nil || next == nil {
		return len(reqs) + len(orphans), 0, err
	}
	return len(reqs) + len(orphans), int64(binary.BigEndian.Uint64(next[1:])), nil
}

// countTimers counts each topic's pending timers from the store, at recovery.
func (b *Broker) countTimers() error {
	it, err := b.store.iter([]byte{kindTimer}, []byte{kindTimer + 1})
	if err != nil {
		return err
	}
	defer it.close()
	for ok := it.first(); ok; ok = it.next() {
		p, valid := decodePendingEntry(it.value())
		if !valid {
			return fmt.Errorf("corrupt timer entry %x", it.key())
		}
		if t := b.topicsByID[p.topic]; t != nil {
			t.timers.Add(1)
		}
	}
	return nil
}

// submit passes internal requests (deliveries of stored records) through the writer
// and waits for them to be durable.
func (b *Broker) submit(reqs []*appendRequest) error {
	if len(reqs) == 0 {
		return nil
	}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return ErrClosed
	}
	b.publishers.Add(1)
	b.mu.RUnlock()
	for _, r := range reqs {
		b.commits.submit(r)
	}
	b.publishers.Done()
	var first error
	for _, r := range reqs {
		<-r.done
		if r.err != nil && first == nil {
			first = r.err
		}
	}
	return first
}

// queueByID resolves a queue by topic id, or nil if the topic is gone.
func (b *Broker) queueByID(topicID uint32, queueID int) *queue {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, ok := b.topicsByID[topicID]
	if !ok || queueID >= len(t.queues) {
		return nil
	}
	return t.queues[queueID]
}
