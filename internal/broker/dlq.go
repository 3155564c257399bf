package broker

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"
)

// Retry and dead-letter topics, named as RocketMQ names them. Each group has one of
// each, created and deleted with it.
const (
	RetryTopicPrefix = "%RETRY%"
	DLQTopicPrefix   = "%DLQ%"
	// PropertyRetryTopic holds the topic a retried or dead-lettered message was first
	// published to; PropertyOriginMessageID the id it had there.
	PropertyRetryTopic      = "RETRY_TOPIC"
	PropertyOriginMessageID = "ORIGIN_MESSAGE_ID"
)

// RetryTopic and DLQTopic name a group's retry and dead-letter topics.
func RetryTopic(group string) string { return RetryTopicPrefix + group }
func DLQTopic(group string) string   { return DLQTopicPrefix + group }

// ensureSystemTopicsLocked creates g's retry and dead-letter topics if missing.
// b.mu should be held.
func (b *Broker) ensureSystemTopicsLocked(inst *instance, g *group) error {
	for _, name := range []string{RetryTopic(g.name), DLQTopic(g.name)} {
		if _, ok := inst.topics[name]; ok {
			continue
		}
		cfg := TopicConfig{Name: name, Type: Normal, Queues: 1, Retention: DefaultRetention, Owner: systemOwner}
		if _, err := b.ensureTopicLocked(inst, cfg, true); err != nil {
			return err
		}
	}
	return nil
}

// systemOwner owns system topics.
const systemOwner = "orderly:system"

// dropSystemTopicsLocked deletes g's retry and dead-letter topics into w. b.mu should
// be held.
func (b *Broker) dropSystemTopicsLocked(w writeBatch, inst *instance, g *group) {
	for _, name := range []string{RetryTopic(g.name), DLQTopic(g.name)} {
		if t, ok := inst.topics[name]; ok && t.system {
			b.dropTopicLocked(w, t)
		}
	}
}

// retryCopy is m as it is republished for another attempt or dead-lettered: the
// same body, tag, keys and properties, the origin recorded, one more consumption
// counted.
func retryCopy(m StoredMessage, reconsumeTimes int32) Message {
	c := m.Message
	c.Properties = maps.Clone(m.Properties)
	if c.Properties == nil {
		c.Properties = map[string]string{}
	}
	if _, ok := c.Properties[PropertyRetryTopic]; !ok {
		c.Properties[PropertyRetryTopic] = m.Topic
	}
	if _, ok := c.Properties[PropertyOriginMessageID]; !ok {
		c.Properties[PropertyOriginMessageID] = m.ID
	}
	c.ReconsumeTimes = reconsumeTimes
	c.Queue = AnyQueue
	c.ShardingKey = ""
	c.DeliverAt = time.Time{}
	c.DelayLevel = 0
	c.Transactional = false
	return c
}

// publishSystem stores msg on a group's system topic.
func (b *Broker) publishSystem(ctx context.Context, instanceID, topicName string, msg Message) error {
	req, err := b.prepareAppend(instanceID, topicName, []Message{msg}, len(msg.Body), true)
	if err != nil {
		return err
	}
	_, err = b.append(ctx, req)
	return err
}

// deadLetter moves a delivered message of an HTTP group to its dead letters. The
// copy is durable before the caller marks the original done, so a crash in between
// can only leave a duplicate dead letter, never lose the message.
func (b *Broker) deadLetter(ctx context.Context, g *group, m StoredMessage, times int) error {
	return b.publishSystem(ctx, g.instance, DLQTopic(g.name), retryCopy(m, int32(times)))
}

// SendBack hands a message a TCP consumer of the group failed to consume back to the
// broker, by its commit-log offset: it comes back on the group's retry topic after
// the delay of delayLevel (0: RocketMQ's 3 + the times it was consumed again), or
// goes to the dead letters once it was consumed again maxReconsumeTimes times (0:
// the group's max redeliveries) or when delayLevel is negative.
func (b *Broker) SendBack(ctx context.Context, instanceID, groupID string, seq uint64, delayLevel, maxReconsumeTimes int) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	b.mu.RLock()
	g, err := b.groupLocked(instanceID, groupID)
	if err == nil && maxReconsumeTimes <= 0 {
		maxReconsumeTimes = g.maxRedeliveries
	}
	b.mu.RUnlock()
	if err != nil {
		return err
	}
	m, err := b.messageBySeq(instanceID, seq)
	if err != nil {
		return err
	}
	if err := b.deliveredTo(g, m); err != nil {
		return err
	}
	c := retryCopy(m, m.ReconsumeTimes+1)
	if int(m.ReconsumeTimes) >= maxReconsumeTimes || delayLevel < 0 {
		err := b.publishSystem(ctx, instanceID, DLQTopic(groupID), c)
		if err == nil {
			g.countsOn(c.Properties[PropertyRetryTopic]).deadLettered.Add(1)
		}
		return err
	}
	if delayLevel == 0 {
		delayLevel = 3 + int(m.ReconsumeTimes)
	}
	c.DelayLevel = delayLevel
	err = b.publishSystem(ctx, instanceID, RetryTopic(groupID), c)
	if err == nil {
		g.countsOn(c.Properties[PropertyRetryTopic]).redelivered.Add(1)
	}
	return err
}

// deliveredTo checks that m can have been delivered to g: it is in a queue (not a
// timer still pending nor an unresolved half message), of a topic the group may
// consume (the instance's own topics and the group's retry topic). A send-back
// names a message by its commit-log offset alone; without this it could make a
// pending message visible early, or copy another group's retries.
func (b *Broker) deliveredTo(g *group, m StoredMessage) error {
	b.mu.RLock()
	t, ok := b.topicsByID[m.topicID]
	b.mu.RUnlock()
	switch {
	case !ok:
		return fmt.Errorf("%w: no message %d", ErrMessageNotFound, m.Seq)
	case t.system && t.name != RetryTopic(g.name):
		return fmt.Errorf("%w: message %s is on %q, which group %q does not consume", ErrInvalidArgument, m.ID, t.name, g.name)
	}
	b.txns.mu.Lock()
	_, half := b.txns.halves[m.Seq]
	b.txns.mu.Unlock()
	if half {
		return fmt.Errorf("%w: message %s is an unresolved half message, never delivered", ErrInvalidArgument, m.ID)
	}
	if _, err := b.store.get(refKey(m.Seq)); err == nil {
		return fmt.Errorf("%w: message %s is a timer not yet due, never delivered", ErrInvalidArgument, m.ID)
	} else if err != errNotFound {
		return err
	}
	return nil
}

// DeadLetters lists up to max of the group's dead letters from offset on, and the
// offset to continue from.
func (b *Broker) DeadLetters(instanceID, groupID string, offset int64, max int) ([]StoredMessage, int64, error) {
	if err := b.enter(); err != nil {
		return nil, 0, err
	}
	defer b.leave()
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, DLQTopic(groupID))
	b.mu.RUnlock()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %q", ErrGroupNotFound, groupID)
	}
	res, _, err := b.pullOnce(t.queues[0], offset, max, Filter{})
	return res.Messages, res.NextOffset, err
}

// Redrive publishes the group's dead letters with the given ids to the topics they
// came from, as new messages consumed zero times, and removes them from the dead
// letters. It returns how many it re-drove; ids not among the dead letters are
// skipped.
func (b *Broker) Redrive(ctx context.Context, instanceID, groupID string, ids []string) (int, error) {
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.leave()
	b.mu.RLock()
	dlq, err := b.topicLocked(instanceID, DLQTopic(groupID))
	b.mu.RUnlock()
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrGroupNotFound, groupID)
	}
	want := map[uint64]bool{}
	for _, id := range ids {
		if seq, ok := parseMessageID(id); ok {
			want[seq] = true
		}
	}
	n := 0
	q := dlq.queues[0]
	for from := uint64(0); len(want) > 0; {
		v, err := b.messages.openView(q)
		if err != nil {
			return n, err
		}
		var found []StoredMessage
		next, err := v.walk(from, func(ix indexed) (walkStep, error) {
			if want[ix.entry.seq] {
				m, err := v.load(ix)
				if err != nil {
					return walkStopBefore, err
				}
				found = append(found, m)
			}
			return walkOn, nil
		})
		end := v.end
		v.close()
		if err != nil {
			return n, err
		}
		for _, m := range found {
			origin := m.Properties[PropertyRetryTopic]
			c := retryCopy(m, 0)
			delete(c.Properties, PropertyRetryTopic)
			delete(c.Properties, PropertyOriginMessageID)
			if strings.HasPrefix(origin, RetryTopicPrefix) || origin == "" {
				return n, fmt.Errorf("%w: dead letter %s has no origin topic", ErrInvalidArgument, m.ID)
			}
			// Published before it leaves the dead letters: a crash in between
			// leaves a duplicate, never a loss.
			if _, err := b.Publish(ctx, instanceID, origin, c); err != nil {
				return n, fmt.Errorf("failed to re-drive %s to %q: %w", m.ID, origin, err)
			}
			if err := b.removeEntry(q, uint64(m.Offset), m.Seq); err != nil {
				return n, err
			}
			delete(want, m.Seq)
			n++
		}
		if next >= end {
			break
		}
		from = next
	}
	return n, nil
}

// removeEntry removes the entry at offset of q, which names the record at seq,
// with the record, leaving a hole in the queue.
func (b *Broker) removeEntry(q *queue, offset, seq uint64) error {
	q.trim.Lock()
	defer q.trim.Unlock()
	key := queueKey(q.topic.id, q.id, offset)
	if _, err := b.store.get(key); err == errNotFound {
		return nil // retention took it meanwhile
	} else if err != nil {
		return err
	}
	w := b.store.newBatch()
	w.delete(key)
	if err := b.messages.deleteRecordNow(w, seq); err != nil {
		w.discard()
		return err
	}
	tr := q.trimState()
	tr.holes++
	w.set(queueMinKey(q.topic.id, q.id), tr.encode())
	if err := b.store.commit(w); err != nil {
		return err
	}
	q.holes.Store(tr.holes)
	return nil
}

// messageBySeq loads the message stored at seq, which must belong to the instance.
func (b *Broker) messageBySeq(instanceID string, seq uint64) (StoredMessage, error) {
	m, err := b.messages.record(seq)
	if err != nil {
		return StoredMessage{}, err
	}
	b.mu.RLock()
	t, ok := b.topicsByID[m.topicID]
	b.mu.RUnlock()
	if !ok || t.instance != instanceID {
		return StoredMessage{}, fmt.Errorf("%w: no message %d", ErrMessageNotFound, seq)
	}
	m.Topic = t.name
	return m, nil
}
