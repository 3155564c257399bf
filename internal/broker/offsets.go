package broker

import (
	"fmt"
	"sync"
	"time"
)

// Offset-style consumption for TCP groups: the consumer pulls from offsets and
// commits its progress; orderly consumers lock their queues.

// ConsumerOffset returns the group's committed offset on a queue; found is false if
// the group never committed one.
func (b *Broker) ConsumerOffset(instanceID, groupID, topicName string, queueID int) (offset int64, found bool, err error) {
	if err := b.enter(); err != nil {
		return 0, false, err
	}
	defer b.leave()
	q, g, err := b.consumerQueue(instanceID, groupID, topicName, queueID, TCP)
	if err != nil {
		return 0, false, err
	}
	off, found, err := b.storedOffset(g, q)
	return int64(off), found, err
}

// storedOffset returns g's committed offset on q as stored; found is false if
// there is none.
func (b *Broker) storedOffset(g *group, q *queue) (offset uint64, found bool, err error) {
	raw, err := b.store.get(offsetKey(g.id, q.topic.id, q.id))
	switch {
	case err == errNotFound:
		return 0, false, nil
	case err != nil:
		return 0, false, err
	}
	if offset, found = decodeOffset(raw); !found {
		return 0, false, fmt.Errorf("corrupt offset of group %q on queue %d of %q", g.name, q.id, q.topic.name)
	}
	return offset, true, nil
}

// CommitOffset records the group's progress on a queue: the next offset to consume.
// It is written without waiting for the disk; losing it in a machine crash only
// means redelivery.
func (b *Broker) CommitOffset(instanceID, groupID, topicName string, queueID int, offset int64) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	q, g, err := b.consumerQueue(instanceID, groupID, topicName, queueID, TCP)
	if err != nil {
		return err
	}
	if offset < 0 || offset > int64(q.durable.Load()) {
		return fmt.Errorf("%w: offset %d outside 0..%d", ErrInvalidArgument, offset, q.durable.Load())
	}
	b.touchGroup(g)
	if g.resetsPending.Load() > 0 {
		// A consumer that has not pulled since a reset commits its old position:
		// ignored, or it would undo the reset. The check and the write are one
		// step under g.mu, so a reset cannot land between them.
		g.mu.Lock()
		defer g.mu.Unlock()
		if _, ok := g.resets[q]; ok {
			return nil
		}
	}
	w := b.store.newBatch()
	w.set(offsetKey(g.id, q.topic.id, q.id), encodeOffset(uint64(offset)))
	return b.store.commitNoSync(w)
}

// QueueOffsets returns the first offset still held and the next offset to be written.
func (b *Broker) QueueOffsets(instanceID, topicName string, queueID int) (min, max int64, err error) {
	q, err := b.queue(instanceID, topicName, queueID)
	if err != nil {
		return 0, 0, err
	}
	return int64(q.min.Load()), int64(q.durable.Load()), nil
}

// OffsetAt returns the first offset of the queue whose message was stored at or
// after ts; the queue's bounds when ts is before its first or after its last.
func (b *Broker) OffsetAt(instanceID, topicName string, queueID int, ts time.Time) (int64, error) {
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.leave()
	q, err := b.queue(instanceID, topicName, queueID)
	if err != nil {
		return 0, err
	}
	v, err := b.messages.openView(q)
	if err != nil {
		return 0, err
	}
	defer v.close()
	off, err := v.offsetAt(ts.UnixMilli())
	return int64(off), err
}

// offsetAt returns the first offset of the view whose entry was stored at or after
// target (ms); the queue's bounds when target is before its first or after its last.
func (v *queueView) offsetAt(target int64) (uint64, error) {
	// Store times grow with offsets (to within the moment between a publisher
	// reading the clock and the writer ordering it), so a binary search over the
	// offsets finds the first at or after target with a seek per step.
	q := v.q
	lo, hi := q.min.Load(), v.end
	for lo < hi {
		mid := lo + (hi-lo)/2
		// The first entry at or after mid (a hole is skipped over).
		if !v.idx.seekGE(queueKey(q.topic.id, q.id, mid)) {
			if err := v.idx.error(); err != nil {
				return 0, err
			}
			hi = mid
			continue
		}
		e, valid := decodeIndexEntry(v.idx.value())
		if !valid {
			return 0, fmt.Errorf("corrupt index entry at %x", v.idx.key())
		}
		if e.storeTime >= target {
			hi = mid
		} else {
			lo = queueKeyOffset(v.idx.key()) + 1
		}
	}
	return lo, nil
}

// queue resolves one queue of a topic.
func (b *Broker) queue(instanceID, topicName string, queueID int) (*queue, error) {
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return b.queueOf(t, queueID)
}

// LockLease is how long a queue lock lasts unless renewed, as in RocketMQ; longer
// than its clients' 20 s renewal.
const LockLease = 60 * time.Second

// QueueRef names one queue of a topic.
type QueueRef struct {
	Topic string
	Queue int
}

// locks are the orderly consumers' queue locks, per instance, group and queue. They
// live in memory: after a restart every consumer locks again within its renewal
// period.
type locks struct {
	mu    sync.Mutex
	owner map[lockKey]lease
}

type lockKey struct {
	instance, group string
	queue           QueueRef
}

type lease struct {
	client  string
	expires time.Time
}

// LockQueues locks queues for a client of a TCP group and returns those it now
// holds: queues free, expired, or already its own (whose lease it renews). Queues
// of topics that do not exist are not locked.
func (b *Broker) LockQueues(instanceID, groupID, clientID string, queues []QueueRef) ([]QueueRef, error) {
	if clientID == "" {
		return nil, fmt.Errorf("%w: empty client id", ErrInvalidArgument)
	}
	// The queues are resolved before the locks are taken: b.mu comes before
	// b.locks.mu (DeleteGroup releases a group's locks holding b.mu).
	b.mu.RLock()
	g, err := b.protocolGroupLocked(instanceID, groupID, TCP)
	var exist []QueueRef
	for _, ref := range queues {
		if t, err := b.topicLocked(instanceID, ref.Topic); err == nil && ref.Queue >= 0 && ref.Queue < len(t.queues) {
			exist = append(exist, ref)
		}
	}
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	b.touchGroup(g)
	now := b.clock.Now()
	b.locks.mu.Lock()
	defer b.locks.mu.Unlock()
	var held []QueueRef
	for _, ref := range exist {
		k := lockKey{instanceID, groupID, ref}
		if l, ok := b.locks.owner[k]; ok && l.client != clientID && now.Before(l.expires) {
			continue
		}
		b.locks.owner[k] = lease{client: clientID, expires: now.Add(b.opts.LockLease)}
		held = append(held, ref)
	}
	return held, nil
}

// LockLeaseDuration is how long a queue lock lasts unless renewed.
func (b *Broker) LockLeaseDuration() time.Duration { return b.opts.LockLease }

// UnlockQueues releases the client's locks on queues; locks held by others stay.
func (b *Broker) UnlockQueues(instanceID, groupID, clientID string, queues []QueueRef) {
	b.locks.mu.Lock()
	defer b.locks.mu.Unlock()
	for _, ref := range queues {
		k := lockKey{instanceID, groupID, ref}
		if l, ok := b.locks.owner[k]; ok && l.client == clientID {
			delete(b.locks.owner, k)
		}
	}
}

// ReleaseClient drops every lock a client holds in the instance, for when its
// connection closes: the queues move to other consumers at once instead of after
// the lease.
func (b *Broker) ReleaseClient(instanceID, clientID string) {
	b.locks.mu.Lock()
	defer b.locks.mu.Unlock()
	for k, l := range b.locks.owner {
		if k.instance == instanceID && l.client == clientID {
			delete(b.locks.owner, k)
		}
	}
}

// releaseGroup drops every lock of a deleted group, or with groupID empty of a
// deleted instance.
func (l *locks) releaseGroup(instanceID, groupID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.owner {
		if k.instance == instanceID && (groupID == "" || k.group == groupID) {
			delete(l.owner, k)
		}
	}
}
