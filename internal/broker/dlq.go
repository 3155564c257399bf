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
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	if err != nil {
		b.mu.RUnlock()
		return err
	}
	_, err = b.publishLocked(ctx, t, []Message{msg})
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
	b.mu.RLock()
	g, err := b.groupLocked(instanceID, groupID)
	b.mu.RUnlock()
	if err != nil {
		return err
	}
	m, err := b.messageBySeq(instanceID, seq)
	if err != nil {
		return err
	}
	if maxReconsumeTimes <= 0 {
		maxReconsumeTimes = g.maxRedeliveries
	}
	c := retryCopy(m, m.ReconsumeTimes+1)
	if int(m.ReconsumeTimes) >= maxReconsumeTimes || delayLevel < 0 {
		return b.publishSystem(ctx, instanceID, DLQTopic(groupID), c)
	}
	if delayLevel == 0 {
		delayLevel = 3 + int(m.ReconsumeTimes)
	}
	c.DelayLevel = delayLevel
	return b.publishSystem(ctx, instanceID, RetryTopic(groupID), c)
}

// DeadLetters lists up to max of the group's dead letters from offset on, and the
// offset to continue from.
func (b *Broker) DeadLetters(instanceID, groupID string, offset int64, max int) ([]StoredMessage, int64, error) {
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, DLQTopic(groupID))
	b.mu.RUnlock()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %q", ErrGroupNotFound, groupID)
	}
	res, err := b.pullOnce(t.queues[0], offset, max, TagFilter{})
	return res.Messages, res.NextOffset, err
}

// Redrive publishes the group's dead letters with the given ids to the topics they
// came from, as new messages consumed zero times, and removes them from the dead
// letters. It returns how many it re-drove; ids not among the dead letters are
// skipped.
func (b *Broker) Redrive(ctx context.Context, instanceID, groupID string, ids []string) (int, error) {
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
	for offset := int64(q.min.Load()); len(want) > 0; {
		ix, next, err := b.readIndex(q, uint64(offset), 256)
		if err != nil || len(ix) == 0 {
			return n, err
		}
		for _, e := range ix {
			if !want[e.entry.seq] {
				continue
			}
			m, ok, err := b.loadMessage(q, e)
			if err != nil {
				return n, err
			}
			if ok {
				origin := m.Properties[PropertyRetryTopic]
				c := retryCopy(m, 0)
				delete(c.Properties, PropertyRetryTopic)
				delete(c.Properties, PropertyOriginMessageID)
				if strings.HasPrefix(origin, RetryTopicPrefix) || origin == "" {
					return n, fmt.Errorf("%w: dead letter %s has no origin topic", ErrInvalidArgument, m.ID)
				}
				if _, err := b.Publish(ctx, instanceID, origin, c); err != nil {
					return n, fmt.Errorf("failed to re-drive %s to %q: %w", m.ID, origin, err)
				}
			}
			w := b.store.newBatch()
			w.delete(queueKey(dlq.id, q.id, e.offset))
			if err := b.store.commit(w); err != nil {
				return n, err
			}
			delete(want, e.entry.seq)
			n++
		}
		offset = int64(next)
	}
	return n, nil
}

// messageBySeq loads the message stored at seq, which must belong to the instance.
func (b *Broker) messageBySeq(instanceID string, seq uint64) (StoredMessage, error) {
	raw, err := b.store.get(logKey(seq))
	if err == errNotFound {
		return StoredMessage{}, fmt.Errorf("%w: no message %d", ErrMessageNotFound, seq)
	}
	if err != nil {
		return StoredMessage{}, err
	}
	r, err := decodeRecord(raw)
	if err != nil {
		return StoredMessage{}, err
	}
	b.mu.RLock()
	t, ok := b.topicsByID[r.topic]
	b.mu.RUnlock()
	if !ok || t.instance != instanceID {
		return StoredMessage{}, fmt.Errorf("%w: no message %d", ErrMessageNotFound, seq)
	}
	return StoredMessage{
		Message: *r.msg, ID: messageID(b.opts.StoreHost, b.opts.StorePort, seq), Seq: seq, Topic: t.name,
		Queue: r.queue, Offset: -1, StoreTime: fromMillis(r.storeTime), BodyMD5: upperHex("", r.md5[:]), topicID: r.topic,
	}, nil
}
