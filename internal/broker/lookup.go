package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// MessageByID returns the instance's message with id, for diagnosis, whether or not
// it was consumed, as long as retention has not reclaimed it.
func (b *Broker) MessageByID(instanceID, id string) (StoredMessage, error) {
	if err := b.enter(); err != nil {
		return StoredMessage{}, err
	}
	defer b.leave()
	seq, ok := parseMessageID(id)
	if !ok {
		return StoredMessage{}, fmt.Errorf("%w: %q is not a message id", ErrInvalidArgument, id)
	}
	return b.messageBySeq(instanceID, seq)
}

// MessageAt returns the instance's message stored at seq, the commit-log offset a
// message id ends with (RocketMQ's offsetMsgId), as MessageByID does.
func (b *Broker) MessageAt(instanceID string, seq uint64) (StoredMessage, error) {
	if err := b.enter(); err != nil {
		return StoredMessage{}, err
	}
	defer b.leave()
	return b.messageBySeq(instanceID, seq)
}

// MessagesByKey returns up to max messages of the topic published with key, oldest
// first, for diagnosis. It stops before the message whose record would take what
// it returns past MaxReadBytes (always returning one), as a pull does, so that a
// lookup holds no more in memory than one read.
func (b *Broker) MessagesByKey(instanceID, topicName, key string, max int) ([]StoredMessage, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	if key == "" || len(key) > 0xffff {
		return nil, fmt.Errorf("%w: key %q", ErrInvalidArgument, key)
	}
	prefix := keyIndexKey(t.id, key, 0)
	prefix = prefix[:len(prefix)-8]
	it, err := b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for ok := it.first(); ok && len(seqs) < max; ok = it.next() {
		if k := it.key(); len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix) {
			seqs = append(seqs, binary.BigEndian.Uint64(k[len(prefix):]))
		}
	}
	if err := it.close(); err != nil {
		return nil, err
	}
	out := make([]StoredMessage, 0, len(seqs))
	budget := MaxReadBytes
	for _, seq := range seqs {
		m, err := b.messageBySeq(instanceID, seq)
		if err != nil {
			continue // reclaimed since it was indexed
		}
		if len(out) > 0 && len(m.Body) > budget {
			break
		}
		budget -= len(m.Body)
		out = append(out, m)
	}
	return out, nil
}
