package broker

import "encoding/binary"

// Key layout. Every key starts with a one-byte kind; integers are big-endian so byte
// order is numeric order, and one queue's entries, one group's offsets, or all timers
// due before a time are each one contiguous range.
//
//	'l' seq(8)                                 -> message record (the log)
//	'q' topic(4) queue(4) offset(8)            -> indexEntry: seq, store time, tag hash
//	'k' topic(4) len(2) key seq(8)             -> store time (ms, 8; empty in older stores): lookup by key
//	'o' group(4) topic(4) queue(4)             -> committed consume offset(8)
//	't' due(8) seq(8)                          -> pendingEntry: a timer not yet due
//	'h' seq(8)                                 -> halfState: an unresolved half message
//	'm' topic(4) queue(4)                      -> queueTrim: what retention and re-drives
//	                                              removed from the queue
//	'b' topic(4) queue(4)                      -> bytes of the queue's messages, and its
//	                                              next offset
//	'r' seq(8)                                 -> nothing: the record waits as a timer
//	'M' kind(1) id                             -> metadata of instances, topics, groups;
//	                                              the log's next sequence; topics being
//	                                              reaped
//
// Message records are keyed by a global sequence that only grows, so the tables
// Pebble flushes hardly ever overlap older ones and sink through the levels without
// being rewritten: the log costs a write to the WAL and one to a table, as in
// RocketMQ's commit log. Everything a consumer scans lives in the small 'q' entries.
//
// Ownership. Every record has exactly one owner at a time: the queue entry that
// delivers it, the timer that will, or the half message that may. The owner and the
// record are written in one batch, handed over in one batch (a timer come due, a
// commit), and deleted in one batch, together with the record's 'k' entries. So a
// record is on disk exactly while something can still deliver it: nothing pins
// the log, and one topic's retention keeps no other topic's records.
const (
	kindLog       = 'l'
	kindQueue     = 'q'
	kindKey       = 'k'
	kindOffset    = 'o'
	kindTimer     = 't'
	kindHalf      = 'h'
	kindQueueMin  = 'm'
	kindBytes     = 'b'
	kindRef       = 'r'
	kindMeta      = 'M'
	metaInstance  = 'I'
	metaTopic     = 'T'
	metaGroup     = 'G'
	metaCounter   = 'C'
	metaSeq       = 'S' // the log's next sequence, so none is handed out twice
	metaReaping   = 'X' // a deleted topic whose keys are still being removed
	metaAccessKey = 'K' // an AccessKey id -> the instance it authenticates for
)

func logKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = kindLog
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func queueKey(topic uint32, queue int, offset uint64) []byte {
	k := make([]byte, 17)
	k[0] = kindQueue
	binary.BigEndian.PutUint32(k[1:], topic)
	binary.BigEndian.PutUint32(k[5:], uint32(queue))
	binary.BigEndian.PutUint64(k[9:], offset)
	return k
}

// queueKeyOffset is the offset in a 'q' key.
func queueKeyOffset(k []byte) uint64 { return binary.BigEndian.Uint64(k[9:]) }

func keyIndexKey(topic uint32, key string, seq uint64) []byte {
	k := make([]byte, 0, 1+4+2+len(key)+8)
	k = append(k, kindKey)
	k = binary.BigEndian.AppendUint32(k, topic)
	k = binary.BigEndian.AppendUint16(k, uint16(len(key)))
	k = append(k, key...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// A group's committed offset on a queue: 'o' group(4) topic(4) queue(4) ->
// offset(8), the next offset to consume. TCP groups commit it; HTTP groups' pop
// state stores it as it moves.

func offsetKey(group, topic uint32, queue int) []byte {
	return binary.BigEndian.AppendUint32(offsetTopicPrefix(group, topic), uint32(queue))
}

// offsetPrefix covers a group's offsets, offsetTopicPrefix its offsets on a topic.
func offsetPrefix(group uint32) []byte {
	k := make([]byte, 1, 13)
	k[0] = kindOffset
	return binary.BigEndian.AppendUint32(k, group)
}

func offsetTopicPrefix(group, topic uint32) []byte {
	return binary.BigEndian.AppendUint32(offsetPrefix(group), topic)
}

// offsetKeyQueue returns the topic and queue of an offset key.
func offsetKeyQueue(k []byte) (topic uint32, queue int, ok bool) {
	if len(k) != 13 || k[0] != kindOffset {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(k[5:]), int(binary.BigEndian.Uint32(k[9:])), true
}

func encodeOffset(offset uint64) []byte { return binary.BigEndian.AppendUint64(nil, offset) }

func decodeOffset(v []byte) (uint64, bool) {
	if len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

func metaKey(kind byte, id string) []byte {
	return append([]byte{kindMeta, kind}, id...)
}

// prefixEnd returns the least key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// indexEntry is the value of a 'q' key: enough to filter by tag and search by time
// without reading the record.
type indexEntry struct {
	seq       uint64
	storeTime int64 // ms since the epoch
	tagHash   uint32
	size      uint32 // bytes of the record, for statistics and retention
	// late marks a record delivered after it was stored (a timer, a commit).
	late bool
	// keys marks a record with 'k' entries, which go with it.
	keys bool
}

const (
	entryLate = 1 << 0
	entryKeys = 1 << 1
)

func (e indexEntry) encode() []byte {
	v := make([]byte, 25)
	binary.BigEndian.PutUint64(v, e.seq)
	binary.BigEndian.PutUint64(v[8:], uint64(e.storeTime))
	binary.BigEndian.PutUint32(v[16:], e.tagHash)
	binary.BigEndian.PutUint32(v[20:], e.size)
	if e.late {
		v[24] |= entryLate
	}
	if e.keys {
		v[24] |= entryKeys
	}
	return v
}

func decodeIndexEntry(v []byte) (indexEntry, bool) {
	if len(v) != 25 {
		return indexEntry{}, false
	}
	return indexEntry{
		seq:       binary.BigEndian.Uint64(v),
		storeTime: int64(binary.BigEndian.Uint64(v[8:])),
		tagHash:   binary.BigEndian.Uint32(v[16:]),
		size:      binary.BigEndian.Uint32(v[20:]),
		late:      v[24]&entryLate != 0,
		keys:      v[24]&entryKeys != 0,
	}, true
}

func timerKey(due int64, seq uint64) []byte {
	k := make([]byte, 17)
	k[0] = kindTimer
	binary.BigEndian.PutUint64(k[1:], uint64(due))
	binary.BigEndian.PutUint64(k[9:], seq)
	return k
}

func refKey(seq uint64) []byte {
	k := logKey(seq)
	k[0] = kindRef
	return k
}

func halfKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = kindHalf
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

// topicPrefix is the prefix of every key of kind that belongs to topic.
func topicPrefix(kind byte, topic uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{kind}, topic)
}

func queueBytesKey(topic uint32, queue int) []byte {
	k := queueMinKey(topic, queue)
	k[0] = kindBytes
	return k
}

func queueMinKey(topic uint32, queue int) []byte {
	k := make([]byte, 9)
	k[0] = kindQueueMin
	binary.BigEndian.PutUint32(k[1:], topic)
	binary.BigEndian.PutUint32(k[5:], uint32(queue))
	return k
}

// queueTrim is the value of an 'm' key: what has left a queue other than by
// consumption. Offsets below min are gone; holes counts offsets at or above min
// whose entry was removed (dead letters re-driven); reclaimed counts the bytes
// removed.
type queueTrim struct {
	min, reclaimed, holes uint64
}

func (t queueTrim) encode() []byte {
	v := binary.BigEndian.AppendUint64(nil, t.min)
	v = binary.BigEndian.AppendUint64(v, t.reclaimed)
	return binary.BigEndian.AppendUint64(v, t.holes)
}

func decodeQueueTrim(v []byte) (queueTrim, bool) {
	switch len(v) {
	case 16, 24: // 16: written before holes were counted
	default:
		return queueTrim{}, false
	}
	t := queueTrim{min: binary.BigEndian.Uint64(v), reclaimed: binary.BigEndian.Uint64(v[8:])}
	if len(v) == 24 {
		t.holes = binary.BigEndian.Uint64(v[16:])
	}
	return t, true
}

// pendingEntry is what a record waiting for delivery (a timer) needs to enter its
// queue without reading the record.
type pendingEntry struct {
	topic   uint32
	queue   int
	tagHash uint32
	store   int64
	size    uint32
}

func (p pendingEntry) encode() []byte {
	v := make([]byte, 24)
	binary.BigEndian.PutUint32(v, p.topic)
	binary.BigEndian.PutUint32(v[4:], uint32(p.queue))
	binary.BigEndian.PutUint32(v[8:], p.tagHash)
	binary.BigEndian.PutUint64(v[12:], uint64(p.store))
	binary.BigEndian.PutUint32(v[20:], p.size)
	return v
}

func decodePendingEntry(v []byte) (pendingEntry, bool) {
	if len(v) != 24 {
		return pendingEntry{}, false
	}
	return pendingEntry{
		topic:   binary.BigEndian.Uint32(v),
		queue:   int(binary.BigEndian.Uint32(v[4:])),
		tagHash: binary.BigEndian.Uint32(v[8:]),
		store:   int64(binary.BigEndian.Uint64(v[12:])),
		size:    binary.BigEndian.Uint32(v[20:]),
	}, true
}

func minNonZero(a, b int64) int64 {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}
