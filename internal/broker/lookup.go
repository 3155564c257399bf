package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"
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
// message id ends with (RocketMQ's offsetMsgId), as MessageByID does. It reads
// within ctx's read budget, as a pull does.
func (b *Broker) MessageAt(ctx context.Context, instanceID string, seq uint64) (StoredMessage, error) {
	if err := b.enter(); err != nil {
		return StoredMessage{}, err
	}
	defer b.leave()
	var m StoredMessage
	err := readWithin(ctx, func() (int, int, error) {
		var err error
		if m, err = b.messageBySeq(instanceID, seq); err != nil {
			return 0, 0, err
		}
		return 1, len(m.Body), nil
	})
	return m, err
}

// KeyQuery selects a topic's messages by key.
type KeyQuery struct {
	Key string
	// From and To bound the messages' store times, both included; a zero To is no
	// bound.
	From, To time.Time
	// Max bounds how many are returned.
	Max int
	// NewestFirst returns the newest Max of the range, newest first, as
	// RocketMQ's index walks a key's entries back from the latest. Otherwise the
	// oldest Max are returned, oldest first.
	NewestFirst bool
}

// MessagesByKey returns up to q.Max of the topic's messages published with q.Key
// and stored in q's time range, oldest first or newest first, for diagnosis. It stops before the
// message whose record would take what it returns past MaxReadBytes (always
// returning one), within ctx's read budget, as a pull does.
//
// The key's index entries are in sequence order, which is store-time order (to
// within the moment between a publisher reading the clock and the writer ordering
// it), and each entry holds its store time: a binary search over the sequences
// finds the first entry of the range in at most 64 seeks, and the records read are
// the ones returned. However many messages share a key, a query costs the same.
func (b *Broker) MessagesByKey(ctx context.Context, instanceID, topicName string, q KeyQuery) ([]StoredMessage, error) {
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
	if q.Key == "" || len(q.Key) > 0xffff {
		return nil, fmt.Errorf("%w: key %q", ErrInvalidArgument, q.Key)
	}
	if q.Max <= 0 {
		return nil, fmt.Errorf("%w: %d messages", ErrInvalidArgument, q.Max)
	}
	from, to := q.From.UnixMilli(), int64(math.MaxInt64)
	if !q.To.IsZero() {
		to = q.To.UnixMilli()
	}
	if to < from {
		return nil, nil
	}
	prefix := keyIndexKey(t.id, q.Key, 0)
	prefix = prefix[:len(prefix)-8]
	it, err := b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		return nil, err
	}
	defer it.close()
	k := keyScan{b: b, it: it, prefix: prefix}
	var out []StoredMessage
	err = readWithin(ctx, func() (int, int, error) {
		budget := MaxReadBytes
		skipped := 0
		// visit takes the entry the iterator is on, and says whether to go on.
		visit := func() (bool, error) {
			seq, at, err := k.entry()
			if err != nil {
				return false, err
			}
			if at < from || at > to {
				if past := at > to; past != q.NewestFirst {
					return false, nil // the far edge of the range
				}
				// Out of order by a clock's moment: skipped, within the scan's bound.
				skipped++
				return skipped <= maxScan, nil
			}
			m, err := b.messageBySeq(instanceID, seq)
			if err != nil {
				return true, nil // reclaimed since it was indexed
			}
			if len(out) > 0 && len(m.Body) > budget {
				return false, nil
			}
			budget -= len(m.Body)
			out = append(out, m)
			return len(out) < q.Max, nil
		}
		var ok bool
		step := it.next
		switch {
		case !q.NewestFirst:
			seq, err := k.firstAtOrAfter(from)
			if err != nil {
				return 0, 0, err
			}
			ok = it.seekGE(k.at(seq))
		case to == math.MaxInt64:
			ok, step = it.last(), it.prev
		default:
			seq, err := k.firstAtOrAfter(to + 1)
			if err != nil {
				return 0, 0, err
			}
			ok, step = it.seekLT(k.at(seq)), it.prev
		}
		for ; ok; ok = step() {
			more, err := visit()
			if err != nil {
				return 0, 0, err
			}
			if !more {
				break
			}
		}
		return len(out), MaxReadBytes - budget, it.error()
	})
	return out, err
}

// keyScan walks one key's index entries.
type keyScan struct {
	b      *Broker
	it     storeIter
	prefix []byte
}

// at is the index key of the key's entry at seq.
func (k *keyScan) at(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(nil), k.prefix...), seq)
}

// entry returns the sequence and store time of the entry the iterator is on. An
// entry written before the index held store times has an empty value: its record
// is read for the time.
func (k *keyScan) entry() (seq uint64, storeTime int64, err error) {
	key := k.it.key()
	if len(key) != len(k.prefix)+8 || !bytes.HasPrefix(key, k.prefix) {
		return 0, 0, fmt.Errorf("corrupt key index entry %x", key)
	}
	seq = binary.BigEndian.Uint64(key[len(k.prefix):])
	if v := k.it.value(); len(v) == 8 {
		return seq, int64(binary.BigEndian.Uint64(v)), nil
	}
	m, err := k.b.messages.record(seq)
	if err != nil {
		return seq, 0, nil // reclaimed: its time no longer matters
	}
	return seq, m.StoreTime.UnixMilli(), nil
}

// firstAtOrAfter returns the least sequence from which the key's entries are
// stored at or after from (ms), by a binary search over sequences.
func (k *keyScan) firstAtOrAfter(from int64) (uint64, error) {
	lo, hi := uint64(0), uint64(math.MaxUint64)
	seek := make([]byte, len(k.prefix), len(k.prefix)+8)
	copy(seek, k.prefix)
	for lo < hi {
		mid := lo + (hi-lo)/2
		if !k.it.seekGE(binary.BigEndian.AppendUint64(seek, mid)) {
			if err := k.it.error(); err != nil {
				return 0, err
			}
			hi = mid
			continue
		}
		seq, at, err := k.entry()
		if err != nil {
			return 0, err
		}
		if at >= from || seq == math.MaxUint64 {
			hi = mid
		} else {
			lo = seq + 1
		}
	}
	return lo, nil
}
