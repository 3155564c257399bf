package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Transaction check-back timing, from the mq-http SDKs' documentation: the first
// check after the message's immunity time (10 to 300 s on HTTP), then about every
// 10 s, for a day; an unresolved half message is then rolled back.
const (
	DefaultCheckImmunity = 10 * time.Second
	MinCheckImmunity     = time.Second
	MaxCheckImmunity     = 24 * time.Hour
	CheckInterval        = 10 * time.Second
	TransactionTimeout   = 24 * time.Hour
)

// halfState is an unresolved half message. Its mutable fields are guarded by
// txnRegistry.mu.
type halfState struct {
	seq           uint64
	topic         uint32
	queue         int
	tagHash       uint32
	store         int64  // ms
	size          uint32 // bytes of the record
	dueAt         int64  // ms: a timer message is delayed after its commit
	producerGroup string // TCP: the check-back goes to a producer of this group
	checkAt       int64  // ms: next check-back due
	deadline      int64  // ms: rolled back if still unresolved
	checks        int32
	token         uint64 // the current handle's token

	// In memory only.
	resolving   bool   // a commit or rollback is under way
	instance    string // the topic's instance ("" for a topic being reaped)
	checkIdx    int    // index in its check queue, -1 when out of it
	deadlineIdx int    // index in the deadline queue, -1 when out of it
}

// Layout: seq(8) topic(4) queue(4) tagHash(4) store(8) dueAt(8) checkAt(8)
// deadline(8) checks(4) token(8) size(4) producerGroup(rest).
const halfStateFixed = 8 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 8 + 4

func (h *halfState) encode() []byte {
	v := make([]byte, 0, halfStateFixed+len(h.producerGroup))
	v = binary.BigEndian.AppendUint64(v, h.seq)
	v = binary.BigEndian.AppendUint32(v, h.topic)
	v = binary.BigEndian.AppendUint32(v, uint32(h.queue))
	v = binary.BigEndian.AppendUint32(v, h.tagHash)
	v = binary.BigEndian.AppendUint64(v, uint64(h.store))
	v = binary.BigEndian.AppendUint64(v, uint64(h.dueAt))
	v = binary.BigEndian.AppendUint64(v, uint64(h.checkAt))
	v = binary.BigEndian.AppendUint64(v, uint64(h.deadline))
	v = binary.BigEndian.AppendUint32(v, uint32(h.checks))
	v = binary.BigEndian.AppendUint64(v, h.token)
	v = binary.BigEndian.AppendUint32(v, h.size)
	return append(v, h.producerGroup...)
}

func decodeHalfState(v []byte) (*halfState, bool) {
	if len(v) < halfStateFixed {
		return nil, false
	}
	return &halfState{
		seq:           binary.BigEndian.Uint64(v),
		topic:         binary.BigEndian.Uint32(v[8:]),
		queue:         int(binary.BigEndian.Uint32(v[12:])),
		tagHash:       binary.BigEndian.Uint32(v[16:]),
		store:         int64(binary.BigEndian.Uint64(v[20:])),
		dueAt:         int64(binary.BigEndian.Uint64(v[28:])),
		checkAt:       int64(binary.BigEndian.Uint64(v[36:])),
		deadline:      int64(binary.BigEndian.Uint64(v[44:])),
		checks:        int32(binary.BigEndian.Uint32(v[52:])),
		token:         binary.BigEndian.Uint64(v[56:]),
		size:          binary.BigEndian.Uint32(v[64:]),
		producerGroup: string(v[halfStateFixed:]),
	}, true
}

func (b *Broker) recoverHalves() error {
	it, err := b.store.iter([]byte{kindHalf}, []byte{kindHalf + 1})
	if err != nil {
		return err
	}
	defer it.close()
	for ok := it.first(); ok; ok = it.next() {
		h, valid := decodeHalfState(it.value())
		if !valid {
			return fmt.Errorf("corrupt half message %x", it.key())
		}
		if t, ok := b.topicsByID[h.topic]; ok {
			h.instance = t.instance
		}
		b.txns.add(h)
	}
	return nil
}

// newHalf describes a transactional message about to be stored.
func (b *Broker) newHalf(m *Message, q *queue, tagHash, size uint32, now time.Time) (*halfState, error) {
	immunity := m.CheckImmunity
	if immunity == 0 {
		immunity = DefaultCheckImmunity
	}
	if immunity < MinCheckImmunity || immunity > MaxCheckImmunity {
		return nil, fmt.Errorf("%w: check immunity %v is outside %v..%v", ErrInvalidArgument, immunity, MinCheckImmunity, MaxCheckImmunity)
	}
	return &halfState{
		topic: q.topic.id, queue: q.id, tagHash: tagHash, size: size, store: now.UnixMilli(), dueAt: millis(m.DeliverAt),
		producerGroup: m.ProducerGroup, checkAt: now.Add(immunity).UnixMilli(),
		deadline: now.Add(TransactionTimeout).UnixMilli(), token: randomToken(), instance: q.topic.instance,
	}, nil
}

// EndTransaction commits or rolls back a half message of the topic by the handle its
// publish or a check-back returned (the HTTP protocol's way). It returns
// ErrHandleExpired for a handle past its period or a message already resolved, and
// ErrInvalidHandle for anything else that is not a current handle of this topic.
func (b *Broker) EndTransaction(instanceID, topicName, txnHandle string, commit bool) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	b.mu.RLock()
	t, err := b.topicLocked(instanceID, topicName)
	b.mu.RUnlock()
	if err != nil {
		return err
	}
	h, ok := parseHandle(txnHandle, transactionHandle)
	if !ok || h.topic != t.id {
		return ErrInvalidHandle
	}
	if b.now().UnixMilli() >= h.expiry {
		return ErrHandleExpired
	}
	b.txns.mu.Lock()
	half := b.txns.halves[h.pos]
	switch {
	case half == nil || half.resolving:
		b.txns.mu.Unlock()
		return ErrHandleExpired
	case half.token != h.token:
		b.txns.mu.Unlock()
		return ErrInvalidHandle
	}
	b.txns.begin(half)
	b.txns.mu.Unlock()
	return b.resolveHalf(half, commit)
}

// ResolveTransaction commits or rolls back the half message at seq for its producer
// group (the TCP protocol's way, by commit-log offset). Resolving a message already
// resolved is not an error: the TCP client sends its decision one way and never
// reads an answer.
func (b *Broker) ResolveTransaction(instanceID string, seq uint64, producerGroup string, commit bool) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.leave()
	b.txns.mu.Lock()
	half := b.txns.halves[seq]
	if half == nil || half.resolving {
		b.txns.mu.Unlock()
		return nil
	}
	b.mu.RLock()
	t, ok := b.topicsByID[half.topic]
	b.mu.RUnlock()
	if !ok || t.instance != instanceID {
		b.txns.mu.Unlock()
		return fmt.Errorf("%w: no half message %d in instance %q", ErrInvalidArgument, seq, instanceID)
	}
	if half.producerGroup != "" && half.producerGroup != producerGroup {
		b.txns.mu.Unlock()
		return fmt.Errorf("%w: half message %d belongs to producer group %q", ErrInvalidArgument, seq, half.producerGroup)
	}
	b.txns.begin(half)
	b.txns.mu.Unlock()
	return b.resolveHalf(half, commit)
}

// resolveHalf commits or rolls back a half message marked resolving. A commit makes
// the stored record enter its queue (or its timer) in the same batch that deletes
// the half entry, so it becomes visible exactly once, even across a crash.
func (b *Broker) resolveHalf(half *halfState, commit bool) error {
	var err error
	q := b.queueByID(half.topic, half.queue)
	if commit && q != nil {
		err = b.submit([]*appendRequest{{topic: q.topic, done: make(chan struct{}), entries: []appendEntry{{
			queue: q, seq: half.seq, tagHash: half.tagHash, store: half.store, size: half.size, dueAt: half.dueAt,
			remove: [][]byte{halfKey(half.seq)},
		}}}})
	} else {
		// A rolled-back message is never delivered: its record goes with its
		// owner, the half message.
		w := b.store.newBatch()
		w.delete(halfKey(half.seq))
		w.delete(refKey(half.seq)) // written for half messages by older versions
		if err = b.messages.deleteRecordNow(w, half.seq); err == nil {
			err = b.store.commit(w)
		} else {
			w.discard()
		}
	}
	b.txns.mu.Lock()
	defer b.txns.mu.Unlock()
	if err != nil {
		b.txns.abort(half)
		return err
	}
	b.txns.finish(half)
	return nil
}

// PopHalf hands out up to max half messages of the topic whose check-back is due,
// for the HTTP transactional producer of group: each comes with a handle to commit
// or roll it back before its next check-back, about 10 s later. Half messages
// published by TCP producers of another group are left to them. It waits up to wait
// for one to come due.
func (b *Broker) PopHalf(ctx context.Context, instanceID, topicName, groupID string, max int, wait time.Duration) ([]Delivery, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	if max < 1 || max > MaxPopMessages {
		return nil, fmt.Errorf("%w: batch of %d messages; 1 to %d", ErrInvalidArgument, max, MaxPopMessages)
	}
	t, _, err := b.consumerTarget(instanceID, topicName, groupID, HTTP)
	if err != nil {
		return nil, err
	}
	if t.typ != Transactional {
		return nil, fmt.Errorf("%w: %q is not a transactional topic", ErrMessageType, topicName)
	}
	keys := []checkKey{{t.id, ""}}
	if groupID != "" {
		keys = append(keys, checkKey{t.id, groupID})
	}
	var out []Delivery
	err = b.longPoll(ctx, t, b.clock.Now().Add(wait), func() (bool, bool, time.Time, error) {
		var next int64
		err := readWithin(ctx, func() (int, int, error) {
			var used int
			var err error
			out, next, used, err = b.takeChecks(func() []checkKey { return keys }, max)
			return len(out), used, err
		})
		return len(out) > 0, false, fromMillis(next), err
	})
	return out, err
}

// TakeTransactionChecks returns up to max half messages of the instance whose
// check-back is due and whose producer group is group, and schedules their next
// check-back: the TCP server sends each to a connected producer of the group.
func (b *Broker) TakeTransactionChecks(instanceID, producerGroup string, max int) ([]Delivery, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	if instanceID == "" {
		return nil, nil // the instance of a topic being reaped: nobody's
	}
	out, _, _, err := b.takeChecks(func() []checkKey {
		var keys []checkKey
		for topic := range b.txns.topics[groupRef{instanceID, producerGroup}] {
			keys = append(keys, checkKey{topic, producerGroup})
		}
		return keys
	}, max)
	return out, err
}

// rollBackExpired rolls back half messages taken past their deadline; after a
// failure, the ones not yet rolled back are put back for a later round.
func (b *Broker) rollBackExpired(expired []*halfState) error {
	for i, h := range expired {
		if err := b.resolveHalf(h, false); err != nil {
			b.txns.mu.Lock()
			for _, rest := range expired[i+1:] {
				b.txns.abort(rest)
			}
			b.txns.mu.Unlock()
			return err
		}
	}
	return nil
}

// takeChecks hands out due check-backs of the half messages in the check queues
// keys names (called with the registry locked), at most MaxReadBytes of records
// (at least one), rolling back the ones past their deadline, and returns the next
// due time (ms) when it found none, and the bytes of the records handed out.
func (b *Broker) takeChecks(keys func() []checkKey, max int) ([]Delivery, int64, int, error) {
	now := b.now().UnixMilli()
	b.txns.mu.Lock()
	due, expired, next, used := b.txns.takeDue(keys(), now, max, MaxReadBytes)
	// Snapshot what the deliveries need while the lock is held.
	type snap struct {
		h       *halfState
		token   uint64
		checkAt int64
		checks  int32
	}
	snaps := make([]snap, len(due))
	w := b.store.newBatch()
	for i, h := range due {
		snaps[i] = snap{h: h, token: h.token, checkAt: h.checkAt, checks: h.checks}
		w.set(halfKey(h.seq), h.encode())
	}
	b.txns.mu.Unlock()

	if err := b.rollBackExpired(expired); err != nil {
		return nil, 0, 0, err
	}
	if len(due) == 0 {
		w.discard()
		return nil, next, 0, nil
	}
	// The new check time need not survive a crash: the worst is an early check-back.
	if err := b.store.commitNoSync(w); err != nil {
		return nil, 0, 0, err
	}
	out := make([]Delivery, 0, len(due))
	for _, s := range snaps {
		q := b.queueByID(s.h.topic, s.h.queue)
		if q == nil {
			continue
		}
		m, err := b.messages.record(s.h.seq)
		if errors.Is(err, ErrMessageNotFound) {
			// Resolved since the lock was let go: the half message and its
			// record went together.
			b.txns.mu.Lock()
			_, pending := b.txns.halves[s.h.seq]
			b.txns.mu.Unlock()
			if !pending {
				continue
			}
			return nil, 0, 0, fmt.Errorf("%w: half message %d has no record", errCorruptRecord, s.h.seq)
		}
		if err != nil {
			return nil, 0, 0, err
		}
		out = append(out, Delivery{
			StoredMessage:    m,
			Handle:           handle{kind: transactionHandle, topic: s.h.topic, pos: s.h.seq, token: s.token, expiry: s.checkAt}.String(),
			ConsumedTimes:    int(s.checks),
			FirstConsumeTime: fromMillis(s.h.store),
			NextConsumeTime:  fromMillis(s.checkAt),
		})
	}
	return out, 0, used, nil
}
