package broker

import (
	"context"
	"fmt"
	"time"
)

// MaxReadBytes bounds the records one pull or pop returns (and so what one answer
// holds in memory): it stops before the message that would pass it, but always
// returns at least one. RocketMQ's broker stops at 256 KiB (from memory) or 64 KiB
// (from disk); a larger bound keeps small messages to full batches of 16 or 32.
const MaxReadBytes = 1 << 20

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
	v, err := b.messages.openView(q)
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
