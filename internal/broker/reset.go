package broker

import (
	"fmt"
	"time"
)

// ResetOffsets moves the group's consumption of the topic, on every queue, to the
// first message stored at or after ts (as OffsetAt finds it): an earlier time
// delivers messages again, a later one skips them. It returns the new offset of
// each queue, by queue id.
//
// A TCP group's committed offsets move, and its consumers, which pull from the
// offsets they hold, are moved on their next pull of each queue: a pull from any
// other offset is answered at once with no messages and the new offset as the next
// one, which the RocketMQ clients follow (as they follow any nextBeginOffset).
// Until that pull, a consumer's commits on the queue are of its old position, and
// are ignored. The marks live in memory: after a restart consumers start from the
// committed offsets anyway.
//
// An HTTP group's pop state moves: what was in flight is forgotten, its handles no
// longer acknowledge anything, and the next pops deliver from the new offsets.
func (b *Broker) ResetOffsets(instanceID, groupID, topicName string, ts time.Time) ([]int64, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	var g *group
	var queues []*queue
	if err == nil {
		g, err = b.groupLocked(instanceID, groupID)
		queues = t.queues
	}
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if t.system {
		return nil, fmt.Errorf("%w: %q is a system topic; its group's consumption of it follows its origin", ErrInvalidArgument, topicName)
	}
	target := make([]uint64, len(queues))
	for i, q := range queues {
		v, err := b.messages.openView(q)
		if err != nil {
			return nil, err
		}
		target[i], err = v.offsetAt(ts.UnixMilli())
		v.close()
		if err != nil {
			return nil, err
		}
	}
	if g.protocol == TCP {
		err = b.resetPull(g, queues, target)
	} else {
		err = b.resetPop(g, queues, target)
	}
	if err != nil {
		return nil, err
	}
	t.signal() // long polls look again from the new offsets
	out := make([]int64, len(target))
	for i, off := range target {
		out[i] = int64(off)
	}
	return out, nil
}

// resetPull marks the queues reset and writes their committed offsets, in one step
// under g.mu with respect to CommitOffset, so a consumer's commit of its old
// position cannot land after the reset's.
func (b *Broker) resetPull(g *group, queues []*queue, target []uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.resets == nil {
		g.resets = map[*queue]uint64{}
	}
	w := b.store.newBatch()
	for i, q := range queues {
		if _, ok := g.resets[q]; !ok {
			g.resetsPending.Add(1)
		}
		g.resets[q] = target[i]
		w.set(offsetKey(g.id, q.topic.id, q.id), encodeOffset(target[i]))
	}
	return b.store.commitNoSync(w)
}

// takeReset clears a pending reset of q for g, and says whether a pull from offset
// should be answered with the reset's offset instead: it is the consumer's first
// pull since the reset, from another offset.
func (b *Broker) takeReset(g *group, q *queue, offset int64) (int64, bool) {
	if g.resetsPending.Load() == 0 {
		return 0, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	to, ok := g.resets[q]
	if !ok {
		return 0, false
	}
	delete(g.resets, q)
	g.resetsPending.Add(-1)
	return int64(to), int64(to) != offset
}

// resetPop moves the group's pop state on each queue to its target: nothing in
// flight, nothing done past it.
func (b *Broker) resetPop(g *group, queues []*queue, target []uint64) error {
	touched := map[*popQueue]*queue{}
	for i, q := range queues {
		pq, err := b.popState(g, q)
		if err != nil {
			return err
		}
		pq.resetTo(target[i])
		touched[pq] = q
	}
	return b.storeProgress(g, touched)
}
