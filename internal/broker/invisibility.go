package broker

import (
	"context"
	"fmt"
	"time"
)

// MaxInvisibility is the longest a consumer may keep a popped message hidden with
// ChangeInvisibility, as RocketMQ 5.x's proxy bounds it: 12 hours.
const MaxInvisibility = 12 * time.Hour

// ChangeInvisibility moves the end of a delivery's invisibility to invisibility
// from now, for a consumer that needs longer (or, with zero, hands the message
// back at once: it is delivered again, counted as another delivery, and goes to
// the dead letters past the group's limit as any redelivery does). The delivery
// stays the same one: the returned handle acknowledges it, or changes it again,
// and the old handle no longer does. Errors are those of Ack for a handle.
func (b *Broker) ChangeInvisibility(instanceID, topicName, groupID, receipt string, invisibility time.Duration) (string, error) {
	if err := b.enter(); err != nil {
		return "", err
	}
	defer b.leave()
	if invisibility < 0 || invisibility > MaxInvisibility {
		return "", fmt.Errorf("%w: invisibility of %v; 0 to %v", ErrInvalidArgument, invisibility, MaxInvisibility)
	}
	t, g, q, hd, err := b.receiptTarget(instanceID, topicName, groupID, receipt)
	if err != nil {
		return "", err
	}
	pq, err := b.popState(g, q)
	if err != nil {
		return "", err
	}
	now := b.now().UnixMilli()
	visibleAt := now + invisibility.Milliseconds()
	offset, token, sooner, err := pq.changeInvisibility(hd, visibleAt)
	if err != nil {
		return "", err
	}
	out := handle{kind: receiptHandle, topic: t.id, queue: q.id, pos: offset, token: token, expiry: visibleAt}.String()
	b.touchGroup(g)
	if sooner {
		t.signal() // a long poll waiting for the old time takes it now
	}
	return out, nil
}

// DeadLetterDelivery moves a delivered message to the group's dead letters at
// once, for a consumer that gave up on it (RocketMQ 5.x's
// ForwardMessageToDeadLetterQueue): it is not delivered again. Errors are those of
// Ack for a handle.
func (b *Broker) DeadLetterDelivery(ctx context.Context, instanceID, topicName, groupID, receipt string) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	t, g, q, hd, err := b.receiptTarget(instanceID, topicName, groupID, receipt)
	if err != nil {
		return err
	}
	pq, err := b.popState(g, q)
	if err != nil {
		return err
	}
	d, err := pq.buryCurrent(hd)
	if err != nil {
		return err
	}
	b.touchGroup(g)
	if err := b.buryAll(ctx, g, pq, q, []*delivery{d}); err != nil {
		return err
	}
	if t.typ == Ordered {
		t.signal() // the queue's next messages may be free now, as after an ack
	}
	return nil
}

// receiptTarget resolves what a receipt handle names for an HTTP group: the
// topic, the group and the queue, checking that the handle is one of the topic's
// and not past its invisibility.
func (b *Broker) receiptTarget(instanceID, topicName, groupID, receipt string) (*topic, *group, *queue, handle, error) {
	t, g, err := b.consumerTarget(instanceID, topicName, groupID, HTTP)
	if err != nil {
		return nil, nil, nil, handle{}, err
	}
	b.mu.RLock()
	queues := t.queues
	b.mu.RUnlock()
	hd, ok := parseHandle(receipt, receiptHandle)
	if !ok || hd.topic != t.id || hd.queue >= len(queues) {
		return nil, nil, nil, handle{}, ErrInvalidHandle
	}
	if b.now().UnixMilli() >= hd.expiry {
		return nil, nil, nil, handle{}, ErrHandleExpired
	}
	return t, g, queues[hd.queue], hd, nil
}
