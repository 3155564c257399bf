package broker

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// appendRequest is one publish call on its way through the write path.
type appendRequest struct {
	topic *topic
	// stats are the publishing instance's, nil for the broker's own writes.
	stats   *instanceStats
	entries []appendEntry
	results []PublishResult
	err     error
	done    chan struct{}
}

// appendEntry is one message of a publish, encoded by the publisher's goroutine so
// that the writer only orders and copies.
type appendEntry struct {
	queue *queue
	// record is the encoded message; nil when delivering a record stored earlier,
	// which seq names.
	record  []byte
	seq     uint64
	tagHash uint32
	keys    []string
	store   int64 // store time, ms
	size    uint32
	md5     string
	// dueAt (ms), when later than the time of writing, holds the message back as a
	// timer: it enters its queue, and gets an offset, only when due.
	dueAt int64
	// half stores the message as an unresolved half message instead.
	half *halfState
	// remove lists keys deleted in the same batch: the timer or half-message entry
	// of a record being delivered, so delivery happens exactly once.
	remove [][]byte
	// timer: the entry delivers a timer come due (one fewer pending).
	timer bool
}

// hasKeys reports whether the entry's record has 'k' entries, which go with it.
func (e *appendEntry) hasKeys() bool {
	if e.record == nil {
		// A record stored earlier (a timer come due, a committed half message):
		// whoever reclaims it reads its keys. Such records are few.
		return true
	}
	for _, k := range e.keys {
		if k != "" {
			return true
		}
	}
	return false
}

// commitItem is an applied batch waiting for the disk.
type commitItem struct {
	wait     func() error
	err      error
	requests []*appendRequest
	// advances are the queues' new durable watermarks once the batch is on disk.
	advances map[*queue]uint64
	// bytes are the queues' byte counts with the batch.
	bytes map[*queue]uint64
	// halves are half messages stored by the batch, registered once durable.
	halves []*halfState
	// earliestTimer is the earliest timer the batch stored (ms), zero if none.
	earliestTimer int64
	// timers are the changes to topics' pending timers: stored less delivered.
	timers map[*topic]int64
	// firstSeq is the log's next sequence before the batch.
	firstSeq uint64
}

// Publish stores msg on the topic and returns once it is durable.
func (b *Broker) Publish(ctx context.Context, instanceID, topicName string, msg Message) (PublishResult, error) {
	res, err := b.PublishBatch(ctx, instanceID, topicName, []Message{msg})
	if err != nil {
		return PublishResult{}, err
	}
	return res[0], nil
}

// PublishBatch stores msgs on the topic atomically, in order, and returns once they
// are durable. Either all are stored or none.
func (b *Broker) PublishBatch(ctx context.Context, instanceID, topicName string, msgs []Message) ([]PublishResult, error) {
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: no messages", ErrInvalidArgument)
	}
	if len(msgs) > MaxBatchMessages {
		return nil, fmt.Errorf("%w: a batch of %d messages; at most %d", ErrInvalidArgument, len(msgs), MaxBatchMessages)
	}
	total := 0
	for i := range msgs {
		if err := msgs[i].validate(); err != nil {
			return nil, err
		}
		total += len(msgs[i].Body)
	}
	if total > MaxBatchBytes {
		return nil, fmt.Errorf("%w: a batch of %d bytes of bodies; at most %d", ErrInvalidArgument, total, MaxBatchBytes)
	}
	start := time.Now()
	req, err := b.prepareAppend(instanceID, topicName, msgs, total, false)
	if err != nil {
		return nil, err
	}
	res, err := b.append(ctx, req)
	if err == nil {
		req.stats.publish.observe(time.Since(start))
		c := &req.topic.published[wireOf(ctx)]
		c.messages.Add(uint64(len(msgs)))
		c.bytes.Add(uint64(total))
	}
	return res, err
}

// append hands req, from prepareAppend, to the writer and waits until it is
// durable.
func (b *Broker) append(ctx context.Context, req *appendRequest) ([]PublishResult, error) {
	if err := b.failed.get(); err != nil {
		b.publishers.Done()
		return nil, fmt.Errorf("broker refuses writes after a storage failure: %w", err)
	}
	b.commits.submit(req)
	b.publishers.Done()
	select {
	case <-req.done:
	case <-ctx.Done():
		// The message may still be stored; the caller sees it as unacknowledged, and
		// a retry makes a duplicate, never a loss.
		return nil, ctx.Err()
	}
	if req.err != nil {
		return nil, req.err
	}
	return req.results, nil
}

// prepareAppend resolves the topic, admits the batch past the instance's quota and
// builds its append request, all under b.mu, so that the topic's queues, the
// quota and the broker's open state are those of one moment. The broker's own
// writes to a group's retry and dead-letter topics (system) pass no quota.
func (b *Broker) prepareAppend(instanceID, topicName string, msgs []Message, total int, system bool) (*appendRequest, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, err := b.topicLocked(instanceID, topicName)
	if err != nil {
		return nil, err
	}
	if !system {
		if err := b.admitLocked(t, instanceID, msgs, total); err != nil {
			return nil, err
		}
	}
	req := &appendRequest{topic: t, entries: make([]appendEntry, len(msgs)), done: make(chan struct{})}
	if !system {
		req.stats = b.instances[instanceID].stats
	}
	now := b.now()
	for i := range msgs {
		q, err := t.pickQueue(&msgs[i])
		if err != nil {
			return nil, err
		}
		m := &msgs[i]
		if m.DelayLevel > 0 {
			m.DeliverAt = now.Add(b.delay(m.DelayLevel))
		}
		if m.DeliverAt.After(now.Add(MaxDeliveryDelay)) {
			return nil, fmt.Errorf("%w: delivery time %s is %s ahead; a timer message may be due at most %d days ahead",
				ErrInvalidArgument, m.DeliverAt.UTC().Format(time.RFC3339), m.DeliverAt.Sub(now).Round(time.Second), MaxDeliveryDelay/(24*time.Hour))
		}
		sum := md5.Sum(m.Body)
		e := appendEntry{
			queue:   q,
			record:  encodeRecord(record{topic: t.id, queue: q.id, storeTime: now.UnixMilli(), md5: sum, msg: m}),
			tagHash: tagHash(m.Tag),
			keys:    m.Keys,
			store:   now.UnixMilli(),
			md5:     upperHex("", sum[:]),
			dueAt:   millis(m.DeliverAt),
		}
		e.size = uint32(len(e.record))
		if m.Transactional {
			var err error
			if e.half, err = b.newHalf(m, q, e.tagHash, e.size, now); err != nil {
				return nil, err
			}
		}
		req.entries[i] = e
	}
	// Registered while b.mu is held, so Close (which takes b.mu) cannot close the
	// channel under a publisher about to send on it; append sends req and then
	// calls b.publishers.Done.
	b.publishers.Add(1)
	return req, nil
}

// admitLocked checks an application's batch against the topic's kind and the
// instance's quota. b.mu is held.
func (b *Broker) admitLocked(t *topic, instanceID string, msgs []Message, total int) error {
	if t.system {
		return fmt.Errorf("%w: %q is a system topic", ErrInvalidArgument, t.name)
	}
	inst := b.instances[instanceID]
	q := inst.quota
	if limit := q.get().MaxMessageSize; limit < MaxBodySize {
		for i := range msgs {
			if len(msgs[i].Body) > limit {
				return fmt.Errorf("%w: body of %d bytes exceeds the instance's %d-byte limit", ErrInvalidArgument, len(msgs[i].Body), limit)
			}
		}
	}
	// Rates are of the machine's resources, so they run on the wall clock.
	err := q.admitPublish(time.Now(), len(msgs), total)
	if err != nil {
		inst.stats.throttled.Add(1)
	}
	return err
}

// pickQueue chooses msg's queue and checks that msg fits t's type. b.mu should be
// held (for t.queues).
func (t *topic) pickQueue(msg *Message) (*queue, error) {
	switch {
	case msg.Transactional && t.typ != Transactional:
		return nil, fmt.Errorf("%w: a transactional message cannot go to %s topic %q", ErrMessageType, strings.ToLower(string(t.typ)), t.name)
	case !msg.Transactional && t.typ == Transactional:
		return nil, fmt.Errorf("%w: transactional topic %q takes only transactional messages", ErrMessageType, t.name)
	case t.typ == Ordered && (!msg.DeliverAt.IsZero() || msg.DelayLevel > 0):
		return nil, fmt.Errorf("%w: ordered topic %q does not take timer messages", ErrMessageType, t.name)
	case t.typ == Ordered && msg.ShardingKey == "" && msg.Queue == AnyQueue && len(t.queues) > 1:
		// A globally ordered topic (one queue) takes any message: the product docs
		// say its key "can be any non-empty string", so an application need not
		// invent one. A partitioned one cannot choose a partition without it.
		return nil, fmt.Errorf("%w: ordered topic %q has %d partitions; give the message a sharding key to choose one (or use a topic with 1 queue for global order)", ErrMessageType, t.name, len(t.queues))
	}
	n := len(t.queues)
	switch {
	case msg.Queue != AnyQueue:
		if msg.Queue < 0 || msg.Queue >= n {
			return nil, fmt.Errorf("%w: queue %d of topic %q with %d queues", ErrInvalidArgument, msg.Queue, t.name, n)
		}
		return t.queues[msg.Queue], nil
	case msg.ShardingKey != "":
		return t.queues[shardingQueue(msg.ShardingKey, n)], nil
	default:
		return t.queues[int(t.rr.Add(1)-1)%n], nil
	}
}

// applyBatch assigns sequence numbers and offsets to reqs and applies them as one
// batch. Only the writer goroutine calls it.
func (b *Broker) applyBatch(reqs []*appendRequest) *commitItem {
	item := &commitItem{requests: reqs, advances: make(map[*queue]uint64), bytes: make(map[*queue]uint64)}
	if err := b.failed.get(); err != nil {
		item.err = err
		return item
	}
	w := b.store.newBatch()
	now := b.now().UnixMilli()
	item.firstSeq = b.nextSeq
	for _, r := range reqs {
		if r.topic.deleted.Load() {
			r.err = fmt.Errorf("%w: %q was deleted", ErrTopicNotFound, r.topic.name)
			continue
		}
		r.results = make([]PublishResult, len(r.entries))
		for i := range r.entries {
			r.results[i] = b.applyEntry(w, item, &r.entries[i], now)
		}
	}
	for q, n := range item.bytes {
		v := binary.BigEndian.AppendUint64(nil, n)
		w.set(queueBytesKey(q.topic.id, q.id), binary.BigEndian.AppendUint64(v, q.next))
	}
	if b.nextSeq != item.firstSeq {
		// The next sequence is stored with the records that used the ones before
		// it, so a restart never hands out a sequence (a message id) again, even
		// after the newest records were rolled back or reclaimed.
		w.set(metaKey(metaSeq, ""), binary.BigEndian.AppendUint64(nil, b.nextSeq))
	}
	if w.empty() {
		w.discard()
		item.wait = func() error { return nil }
		return item
	}
	item.wait, item.err = b.store.applyAsync(w)
	return item
}

// applyEntry adds one entry to w. Only the writer goroutine calls it.
func (b *Broker) applyEntry(w writeBatch, item *commitItem, e *appendEntry, now int64) PublishResult {
	t := e.queue.topic
	seq := e.seq
	if e.record != nil {
		seq = b.nextSeq
		b.nextSeq++
		w.set(logKey(seq), e.record)
		// A key's entry holds the store time, for queries by key and time range
		// (MessagesByKey) that need not read the records they skip.
		var at [8]byte
		binary.BigEndian.PutUint64(at[:], uint64(e.store))
		for _, k := range e.keys {
			if k != "" {
				w.set(keyIndexKey(t.id, k, seq), at[:])
			}
		}
	}
	for _, k := range e.remove {
		w.delete(k)
	}
	res := PublishResult{ID: b.messages.id(seq), Seq: seq, Queue: e.queue.id,
		Offset: -1, BodyMD5: e.md5, StoreTime: fromMillis(e.store)}
	pending := pendingEntry{topic: t.id, queue: e.queue.id, tagHash: e.tagHash, store: e.store, size: e.size}
	switch {
	case e.half != nil:
		e.half.seq = seq
		w.set(halfKey(seq), e.half.encode())
		// The handle is made here, while the half message is the writer's alone:
		// once registered, check-backs change its token under b.txns.mu.
		res.TxnHandle = handle{kind: transactionHandle, topic: t.id, pos: seq, token: e.half.token, expiry: e.half.checkAt}.String()
		item.halves = append(item.halves, e.half)
	case e.dueAt > now:
		if item.timers == nil {
			item.timers = map[*topic]int64{}
		}
		item.timers[t]++
		w.set(timerKey(e.dueAt, seq), pending.encode())
		w.set(refKey(seq), nil) // pending: not deliverable, so not sent back either
		item.earliestTimer = minNonZero(item.earliestTimer, e.dueAt)
	default:
		if e.timer {
			if item.timers == nil {
				item.timers = map[*topic]int64{}
			}
			item.timers[t]--
		}
		offset := e.queue.next
		e.queue.next++
		storeTime := e.store
		if e.record == nil {
			// A record delivered late (a timer come due, a committed half message)
			// enters its queue now, as RocketMQ re-appends it: its retention starts
			// at delivery, and a search by time finds it where it was delivered.
			storeTime = now
		}
		w.set(queueKey(t.id, e.queue.id, offset), indexEntry{seq: seq, storeTime: storeTime, tagHash: e.tagHash, size: e.size,
			late: e.record == nil, keys: e.hasKeys()}.encode())
		item.advances[e.queue] = e.queue.next
		e.queue.bytes += uint64(e.size)
		item.bytes[e.queue] = e.queue.bytes
		res.Offset = int64(offset)
	}
	return res
}

// madeDurable makes a batch the disk now holds visible: its queues' durable
// watermarks advance and their long polls wake, its half messages await their
// check-backs, and its timers count as pending. Only the syncer goroutine calls it,
// in commit order.
func (b *Broker) madeDurable(item *commitItem) {
	signalled := map[*topic]bool{}
	for q, next := range item.advances {
		q.durable.Store(next)
		q.durableBytes.Store(item.bytes[q])
		signalled[q.topic] = true
	}
	for t := range signalled {
		t.signal()
	}
	b.txns.register(item.halves)
	for t, n := range item.timers {
		t.timers.Add(n)
	}
	if item.earliestTimer != 0 {
		b.timers.wake(item.earliestTimer)
	}
}

func seqOfLogKey(k []byte) uint64 { return binary.BigEndian.Uint64(k[1:]) }
