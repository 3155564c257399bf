package broker

import (
	"bytes"
	"fmt"
)

// messageLog is the log layer under the semantics: the records and each queue's
// index entries in the store, read through views that never skip (queueView),
// and removed with their owners (a queue's retention, a deleted topic's queues,
// a record whose last owner went). Publishing appends to it: applyBatch
// (publish.go) writes a batch's records and entries in one store batch, through
// group commit (groupcommit.go). The semantics over it (pop state, offsets,
// transactions, timers, dead letters) keep their own state beside it in the
// store, and read and remove records only through it.
type messageLog struct {
	store *store
	// host and port go into every message id (messageID), as RocketMQ's
	// offsetMsgId holds its broker's address.
	host [4]byte
	port uint32
}

// id returns the message id of the record at seq.
func (l *messageLog) id(seq uint64) string { return messageID(l.host, l.port, seq) }

// indexed is one index entry with its offset.
type indexed struct {
	offset uint64
	entry  indexEntry
}

// queueView reads one queue's index entries and their records as of one moment.
//
// This is what keeps a consumer from skipping a message. The durable watermark is
// read first and the store view opened after it, so every entry below end is in
// the view; and a record is written, and reclaimed, in the same batch as the index
// entry that owns it, so every entry in the view has its record in the view too. A
// record missing behind an entry is corruption, reported as an error, never taken
// for retention: retention shows itself by the entry being gone.
//
// A view costs two store iterators. Keep it for one pull or pop of one queue: it
// pins what it sees (memtables, tables) until closed.
type queueView struct {
	log *messageLog
	q   *queue
	end uint64 // the durable watermark when the view opened
	idx storeIter
	rec recordLoader
}

// openView opens a view of q. Close it.
func (l *messageLog) openView(q *queue) (*queueView, error) {
	end := q.durable.Load()
	idx, err := l.store.iter(queueKey(q.topic.id, q.id, 0), queueKey(q.topic.id, q.id, end))
	if err != nil {
		return nil, err
	}
	return &queueView{log: l, q: q, end: end, idx: idx}, nil
}

func (v *queueView) close() {
	v.rec.close()
	_ = v.idx.close()
}

// maxScan bounds the index entries one read of a queue walks. A filter that
// matches nothing would otherwise walk the whole backlog under the consumer's
// lock; instead the read returns how far it got and the consumer goes on from
// there, as RocketMQ's broker answers a pull that found nothing matching.
const maxScan = 4096

// maxSQLScan is maxScan for a SQL92 filter, which reads and evaluates every entry's
// record where a tag filter rules most out from the index: a read of a backlog
// that nothing matches costs about what a tag filter's does (a millisecond or two).
const maxSQLScan = 512

// scan walks the view's entries from offset from, at most maxScan of them
// (maxSQLScan for a SQL92 filter), and hands visit each one whose message
// matches filter, with its record. It stops
// once visit returns false (it wants no more), and returns the offset after the
// last entry it handled: the next read starts there. skipped is called for each entry the
// filter rules out, matched or not against the record.
//
// budget bounds the bytes of the records handed to visit: scan stops before the
// entry that would pass it, unless *budget is whole (nothing taken yet), so that a
// message larger than the budget is still delivered alone. It is decreased by what
// visit takes.
func (v *queueView) scan(from uint64, filter Filter, budget *int, skipped func(offset uint64), visit func(indexed, StoredMessage) bool) (next uint64, err error) {
	whole := *budget
	limit := maxScan
	if filter.sql != nil {
		limit = maxSQLScan
	}
	return v.walkUpTo(from, limit, func(ix indexed) (walkStep, error) {
		if !filter.mayMatch(ix.entry.tagHash) {
			skipped(ix.offset)
			return walkOn, nil
		}
		if int(ix.entry.size) > *budget && *budget != whole {
			return walkStopBefore, nil
		}
		m, err := v.load(ix)
		if err != nil {
			return walkStopBefore, err
		}
		if !filter.matches(&m.Message) {
			skipped(ix.offset)
			return walkOn, nil
		}
		*budget -= int(ix.entry.size)
		if !visit(ix, m) || *budget <= 0 {
			return walkStopAfter, nil
		}
		return walkOn, nil
	})
}

// walkStep is what a walk's function wants next.
type walkStep int

const (
	walkOn         walkStep = iota // the entry is handled; go on
	walkStopAfter                  // the entry is handled; stop
	walkStopBefore                 // stop, leaving the entry for the next read
)

// walk hands fn the view's entries from offset from on, at most maxScan of them,
// until fn stops, and returns the offset after the last one handled (the view's
// end if it walked to the end).
func (v *queueView) walk(from uint64, fn func(indexed) (walkStep, error)) (next uint64, err error) {
	return v.walkUpTo(from, maxScan, fn)
}

// walkUpTo is walk over at most limit entries.
func (v *queueView) walkUpTo(from uint64, limit int, fn func(indexed) (walkStep, error)) (next uint64, err error) {
	next = max(from, v.q.min.Load())
	if next >= v.end {
		return next, nil
	}
	n := 0
	for ok := v.idx.seekGE(queueKey(v.q.topic.id, v.q.id, next)); ok; ok = v.idx.next() {
		if n == limit {
			return next, nil
		}
		n++
		e, valid := decodeIndexEntry(v.idx.value())
		if !valid {
			return next, fmt.Errorf("corrupt index entry at %x", v.idx.key())
		}
		ix := indexed{offset: queueKeyOffset(v.idx.key()), entry: e}
		step, err := fn(ix)
		if err != nil || step == walkStopBefore {
			return next, err
		}
		next = ix.offset + 1
		if step == walkStopAfter {
			return next, nil
		}
	}
	if err := v.idx.error(); err != nil {
		return next, err
	}
	return v.end, nil // walked to the end: nothing below end is left
}

// at returns the entry at offset with its record; found is false if the entry is
// gone (retention reclaimed it, or it was re-driven out of the dead letters).
func (v *queueView) at(offset uint64) (StoredMessage, bool, error) {
	key := queueKey(v.q.topic.id, v.q.id, offset)
	if !v.idx.seekGE(key) || !bytes.Equal(v.idx.key(), key) {
		return StoredMessage{}, false, v.idx.error()
	}
	e, valid := decodeIndexEntry(v.idx.value())
	if !valid {
		return StoredMessage{}, false, fmt.Errorf("corrupt index entry at %x", key)
	}
	m, err := v.load(indexed{offset: offset, entry: e})
	return m, err == nil, err
}

// load reads the record of an entry of the view.
func (v *queueView) load(ix indexed) (StoredMessage, error) {
	if !v.rec.ok {
		it, err := v.idx.clone([]byte{kindLog}, []byte{kindLog + 1})
		if err != nil {
			return StoredMessage{}, err
		}
		v.rec.it, v.rec.ok = it, true
	}
	raw, found, err := v.rec.load(logKey(ix.entry.seq))
	if err != nil {
		return StoredMessage{}, err
	}
	if !found {
		return StoredMessage{}, fmt.Errorf("%w: queue %d of topic %q: the entry at offset %d names record %d, which is missing",
			errCorruptRecord, v.q.id, v.q.topic.name, ix.offset, ix.entry.seq)
	}
	return v.log.storedMessage(v.q, ix, raw)
}

// storedMessage decodes the record raw of one index entry of q; it does not keep raw.
func (l *messageLog) storedMessage(q *queue, ix indexed, raw []byte) (StoredMessage, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return StoredMessage{}, fmt.Errorf("message %d: %w", ix.entry.seq, err)
	}
	return StoredMessage{
		Message:   *r.msg,
		ID:        l.id(ix.entry.seq),
		Seq:       ix.entry.seq,
		Topic:     q.topic.name,
		Queue:     q.id,
		Offset:    int64(ix.offset),
		StoreTime: fromMillis(r.storeTime),
		BodyMD5:   upperHex("", r.md5[:]),
		topicID:   r.topic,
	}, nil
}

// recordLoader reads the records of one view through a single iterator. A read
// takes up to 32 records of one queue, which lie in ascending log order a few
// apart: seeking forward from the last one costs a fraction of a fresh Get, which
// builds an iterator over every level each time (a Get per message was half the
// CPU of a pull).
type recordLoader struct {
	it         storeIter
	ok         bool // it is open
	positioned bool // it is at a record
}

// load returns the value at key, which the loader's view may lack.
func (l *recordLoader) load(key []byte) ([]byte, bool, error) {
	if !l.position(key) || !bytes.Equal(l.it.key(), key) {
		return nil, false, l.it.error()
	}
	v, err := l.it.valueErr()
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// maxStepsForward is how far the loader walks with Next before it seeks: a queue's
// records are interleaved with the other queues' of the topic (and other topics'),
// and stepping over a few is cheaper than a seek through every level.
const maxStepsForward = 16

// position moves the iterator to the first record at or after key.
func (l *recordLoader) position(key []byte) bool {
	if l.positioned {
		for range maxStepsForward {
			switch c := bytes.Compare(l.it.key(), key); {
			case c == 0:
				return true
			case c > 0:
				return l.seek(key) // behind us: a late record
			}
			if !l.it.next() {
				return l.seek(key)
			}
		}
	}
	return l.seek(key)
}

func (l *recordLoader) seek(key []byte) bool {
	l.positioned = l.it.seekGE(key)
	return l.positioned
}

func (l *recordLoader) close() {
	if l.ok {
		_ = l.it.close()
		l.ok = false
	}
}

// reclaimQueue removes q's entries stored before cutoff (ms), with their records.
func (l *messageLog) reclaimQueue(q *queue, cutoff int64) error {
	q.trim.Lock()
	defer q.trim.Unlock()
	from, end := q.min.Load(), q.durable.Load()
	if from >= end {
		return nil
	}
	r, err := l.newRemover(queueKey(q.topic.id, q.id, from), queueKey(q.topic.id, q.id, end))
	if err != nil {
		return err
	}
	defer r.close()
	tr := q.trimState()
	chunkStart, newMin := from, from
	removed, freed := uint64(0), uint64(0)
	flush := func() error {
		if newMin == chunkStart {
			return nil
		}
		r.w.deleteRange(queueKey(q.topic.id, q.id, chunkStart), queueKey(q.topic.id, q.id, newMin))
		// Offsets in the chunk with no entry were holes, now below min.
		holes := (newMin - chunkStart) - removed
		tr.min, tr.reclaimed, tr.holes = newMin, tr.reclaimed+freed, tr.holes-min(holes, tr.holes)
		r.w.set(queueMinKey(q.topic.id, q.id), tr.encode())
		// Derived state: if a crash loses it, the next round does the same again.
		if err := r.commit(); err != nil {
			return err
		}
		q.min.Store(tr.min)
		q.reclaimed.Store(tr.reclaimed)
		q.holes.Store(tr.holes)
		chunkStart, removed, freed = newMin, 0, 0
		return nil
	}
	for ok := r.idx.first(); ok; ok = r.idx.next() {
		e, valid := decodeIndexEntry(r.idx.value())
		if !valid {
			return fmt.Errorf("corrupt index entry at %x", r.idx.key())
		}
		if e.storeTime >= cutoff {
			break
		}
		if err := r.record(e.seq, e.keys); err != nil {
			return err
		}
		newMin = queueKeyOffset(r.idx.key()) + 1
		removed++
		freed += uint64(e.size)
		if removed == reclaimChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := r.idx.error(); err != nil {
		return err
	}
	return flush()
}

// remover deletes records, with their 'k' entries, found through an index range,
// in batches. Its two iterators are one view of the store.
type remover struct {
	log *messageLog
	idx storeIter
	rec recordLoader
	w   writeBatch
}

func (l *messageLog) newRemover(lower, upper []byte) (*remover, error) {
	idx, err := l.store.iter(lower, upper)
	if err != nil {
		return nil, err
	}
	return &remover{log: l, idx: idx, w: l.store.newBatch()}, nil
}

// record adds the deletion of the record at seq to the batch, and of its 'k'
// entries if it has any (keys false says it has none, without reading it).
func (r *remover) record(seq uint64, keys bool) error {
	r.w.delete(logKey(seq))
	if !keys {
		return nil
	}
	if !r.rec.ok {
		it, err := r.idx.clone([]byte{kindLog}, []byte{kindLog + 1})
		if err != nil {
			return err
		}
		r.rec.it, r.rec.ok = it, true
	}
	raw, found, err := r.rec.load(logKey(seq))
	if err != nil || !found {
		return err // already gone: a removal that crashed half way, redone
	}
	return deleteKeyEntries(r.w, seq, raw)
}

// commit applies the batch without waiting for the disk and starts the next one:
// a removal lost in a crash is done again.
func (r *remover) commit() error {
	w := r.w
	r.w = r.log.store.newBatch()
	return r.log.store.commitNoSync(w)
}

func (r *remover) close() {
	r.rec.close()
	_ = r.idx.close()
	r.w.discard()
}

// deleteKeyEntries adds the deletion of the 'k' entries of the record raw at seq
// to w.
func deleteKeyEntries(w writeBatch, seq uint64, raw []byte) error {
	topic, keys, err := decodeRecordKeys(raw)
	if err != nil {
		return fmt.Errorf("message %d: %w", seq, err)
	}
	for _, k := range keys {
		if k != "" {
			w.delete(keyIndexKey(topic, k, seq))
		}
	}
	return nil
}

// deleteRecordNow adds the deletion of the record at seq and its 'k' entries to w,
// reading the record for its keys.
func (l *messageLog) deleteRecordNow(w writeBatch, seq uint64) error {
	raw, err := l.store.get(logKey(seq))
	if err == errNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	w.delete(logKey(seq))
	return deleteKeyEntries(w, seq, raw)
}

// record loads the record at seq, whichever instance it belongs to.
func (l *messageLog) record(seq uint64) (StoredMessage, error) {
	raw, err := l.store.get(logKey(seq))
	if err == errNotFound {
		return StoredMessage{}, fmt.Errorf("%w: no message %d", ErrMessageNotFound, seq)
	}
	if err != nil {
		return StoredMessage{}, err
	}
	r, err := decodeRecord(raw)
	if err != nil {
		return StoredMessage{}, fmt.Errorf("message %d: %w", seq, err)
	}
	return StoredMessage{
		Message: *r.msg, ID: l.id(seq), Seq: seq,
		Queue: r.queue, Offset: -1, StoreTime: fromMillis(r.storeTime), BodyMD5: upperHex("", r.md5[:]), topicID: r.topic,
	}, nil
}

// reapQueue removes the entries of one queue of a deleted topic with their records.
func (l *messageLog) reapQueue(topicID uint32, queueID int) error {
	r, err := l.newRemover(queueKey(topicID, queueID, 0), queueKey(topicID, queueID+1, 0))
	if err != nil {
		return err
	}
	defer r.close()
	n := 0
	var first uint64
	for ok := r.idx.first(); ok; ok = r.idx.next() {
		e, valid := decodeIndexEntry(r.idx.value())
		if !valid {
			return fmt.Errorf("corrupt index entry at %x", r.idx.key())
		}
		off := queueKeyOffset(r.idx.key())
		if n == 0 {
			first = off
		}
		if err := r.record(e.seq, e.keys); err != nil {
			return err
		}
		if n++; n == reclaimChunk {
			r.w.deleteRange(queueKey(topicID, queueID, first), queueKey(topicID, queueID, off+1))
			if err := r.commit(); err != nil {
				return err
			}
			n = 0
		}
	}
	if err := r.idx.error(); err != nil {
		return err
	}
	r.w.deleteRange(queueKey(topicID, queueID, 0), queueKey(topicID, queueID+1, 0))
	return r.commit()
}
