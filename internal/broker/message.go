package broker

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"
)

// Limits on what a message may carry.
const (
	// MaxBodySize is the largest body the broker stores, as on the cloud service.
	MaxBodySize = 4 << 20
	// MaxPropertiesSize bounds what a message carries besides its body: properties,
	// keys, tag and sharding key, everything that travels as a property on some
	// wire. RocketMQ's record holds properties behind a signed 16-bit length
	// (32767 bytes); half of that leaves room for what the protocols add (the
	// names of the properties, separators, the retry properties of a message sent
	// back), so an accepted message is deliverable on every wire.
	MaxPropertiesSize = 16 << 10
	// MaxTagLength bounds a tag.
	MaxTagLength = 128
	// MaxBatchMessages and MaxBatchBytes bound one batch publish: RocketMQ holds a
	// batch's bodies to the size of one message.
	MaxBatchMessages = 1024
	MaxBatchBytes    = MaxBodySize
	// MaxDeliveryDelay is how far ahead a timer message may be due, as on the
	// cloud services: 40 days.
	MaxDeliveryDelay = 40 * 24 * time.Hour
	// MaxWireNameLength is the longest topic or group name RocketMQ's clients and
	// record format carry (one byte of length, 127 as their limit), which the
	// remoting protocol's names reach with the instance's prefix.
	MaxWireNameLength = 127
)

// AnyQueue lets the broker choose a message's queue: by sharding key when the message
// has one, round robin otherwise.
const AnyQueue = -1

// Message is what a producer publishes.
type Message struct {
	// Body is only read, and none of it is kept past the publish: the stored
	// record is a copy. Callers may hand in memory they reuse afterwards.
	Body []byte
	// Tag is the one tag a consumer can filter on; empty for none.
	Tag string
	// Keys index the message for lookup by key.
	Keys []string
	// Properties are the user's, plus whatever protocol-level properties a protocol
	// server wants to find again on delivery.
	Properties map[string]string
	// ShardingKey picks the queue of an ordered message: one key, one queue.
	ShardingKey string
	// Queue is the queue to write to, or AnyQueue. TCP producers choose their queue.
	Queue int
	// DeliverAt delays delivery until this time (timer messages); zero delivers now.
	DeliverAt time.Time
	// DelayLevel delays delivery by RocketMQ's delay level (1..18; higher clamps to
	// the last); 0 for none. It sets DeliverAt when the message is stored.
	DelayLevel int
	// Transactional stores the message as a half message that no consumer sees until
	// it is committed.
	Transactional bool
	// CheckImmunity is how long after publishing a half message its first check-back
	// is due.
	CheckImmunity time.Duration
	// ProducerGroup is the transactional producer's group, which check-backs go to.
	ProducerGroup string

	// BornAt, BornHost, Flag and SysFlag are carried for the remoting protocol, whose
	// records hand them back to consumers.
	BornAt   time.Time
	BornHost string
	Flag     int32
	SysFlag  int32
	// ReconsumeTimes counts earlier deliveries of a message sent back for retry.
	ReconsumeTimes int32
}

// StoredMessage is a message as the broker holds it.
type StoredMessage struct {
	Message
	// ID is the broker-assigned id (32 uppercase hex characters). It encodes Seq.
	ID string
	// Seq identifies the message among everything the broker ever stored; the
	// remoting protocol calls it the commit-log offset.
	Seq uint64
	// Topic is the topic's name and Queue the queue it is (or will be) delivered on.
	Topic string
	Queue int
	// Offset is the message's position in its queue, or -1 while it is not deliverable
	// yet (a pending timer or an unresolved half message).
	Offset int64
	// StoreTime is when the broker stored it (the publish time).
	StoreTime time.Time
	// BodyMD5 is the uppercase hex MD5 of the body.
	BodyMD5 string
	// topicID is the topic's internal id, from the record.
	topicID uint32
}

// PublishResult is what a producer learns about a stored message.
type PublishResult struct {
	// TxnHandle commits or rolls back a transactional message until its first
	// check-back is due; empty for other messages.
	TxnHandle string
	ID        string
	Seq       uint64
	Queue     int
	Offset    int64 // -1 if not deliverable yet
	BodyMD5   string
	// StoreTime is the publish time.
	StoreTime time.Time
}

// bodyMD5 returns the uppercase hex MD5 the mq-http protocol reports for a body.
func bodyMD5(body []byte) string {
	sum := md5.Sum(body)
	return upperHex("", sum[:])
}

// tagHash is the hash stored in index entries, so a tag filter can skip messages
// without reading their records. Zero means "no tag".
func tagHash(tag string) uint32 {
	if tag == "" {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(tag))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// shardingQueue maps a sharding key onto one of n queues; the same key always lands
// on the same queue while n is unchanged.
func shardingQueue(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// validate checks what does not depend on the topic.
func (m *Message) validate() error {
	if len(m.Body) > MaxBodySize {
		return fmt.Errorf("%w: body of %d bytes exceeds the %d-byte limit", ErrInvalidArgument, len(m.Body), MaxBodySize)
	}
	if len(m.Tag) > MaxTagLength {
		return fmt.Errorf("%w: tag longer than %d characters", ErrInvalidArgument, MaxTagLength)
	}
	// Everything that travels as a property on some wire counts: the
	// properties, keys, tag and sharding key.
	size := len(m.Tag) + len(m.ShardingKey)
	for k, v := range m.Properties {
		if k == "" {
			return fmt.Errorf("%w: property with an empty name", ErrInvalidArgument)
		}
		if hasSeparator(k) || hasSeparator(v) {
			return fmt.Errorf("%w: property %q holds a control character (0x01 or 0x02) that separates properties on the wire", ErrInvalidArgument, k)
		}
		size += len(k) + len(v) + 2
	}
	for _, k := range m.Keys {
		size += len(k) + 1
	}
	if hasSeparator(m.Tag) || hasSeparator(m.ShardingKey) || slices.ContainsFunc(m.Keys, hasSeparator) {
		return fmt.Errorf("%w: a tag, key or sharding key holds a control character (0x01 or 0x02) that separates properties on the wire", ErrInvalidArgument)
	}
	if size > MaxPropertiesSize {
		return fmt.Errorf("%w: properties, keys, tag and sharding key take %d bytes, over the %d-byte limit", ErrInvalidArgument, size, MaxPropertiesSize)
	}
	return nil
}

func hasSeparator(s string) bool { return strings.ContainsAny(s, "\x01\x02") }

// The record is the stored form of a message. Layout (version 1), integers
// big-endian, strings as uvarint length then bytes:
//
//	version(1) topic(4) queue(4) storeTime(8) bornAt(8) deliverAt(8) checkImmunity(8)
//	flag(4) sysFlag(4) reconsumeTimes(4) txn(1) md5(16)
//	tag shardingKey bornHost producerGroup
//	nkeys(uvarint) key...  nprops(uvarint) (name value)...  body(uvarint len)
const recordVersion = 1

var errCorruptRecord = errors.New("corrupt message record")

type record struct {
	topic     uint32
	queue     int
	storeTime int64
	md5       [16]byte
	msg       *Message
}

func encodeRecord(r record) []byte {
	m := r.msg
	n := 1 + 4 + 4 + 8*4 + 4*3 + 1 + 16 + 4*binary.MaxVarintLen32 + len(m.Tag) + len(m.ShardingKey) +
		len(m.BornHost) + len(m.ProducerGroup) + 2*binary.MaxVarintLen32 + binary.MaxVarintLen32 + len(m.Body)
	for _, k := range m.Keys {
		n += binary.MaxVarintLen32 + len(k)
	}
	for k, v := range m.Properties {
		n += 2*binary.MaxVarintLen32 + len(k) + len(v)
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, r.topic)
	b = binary.BigEndian.AppendUint32(b, uint32(r.queue))
	b = binary.BigEndian.AppendUint64(b, uint64(r.storeTime))
	b = binary.BigEndian.AppendUint64(b, uint64(millis(m.BornAt)))
	b = binary.BigEndian.AppendUint64(b, uint64(millis(m.DeliverAt)))
	b = binary.BigEndian.AppendUint64(b, uint64(m.CheckImmunity))
	b = binary.BigEndian.AppendUint32(b, uint32(m.Flag))
	b = binary.BigEndian.AppendUint32(b, uint32(m.SysFlag))
	b = binary.BigEndian.AppendUint32(b, uint32(m.ReconsumeTimes))
	if m.Transactional {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = append(b, r.md5[:]...)
	for _, s := range []string{m.Tag, m.ShardingKey, m.BornHost, m.ProducerGroup} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Keys)))
	for _, k := range m.Keys {
		b = appendString(b, k)
	}
	// Properties in name order, so equal messages encode equally.
	names := make([]string, 0, len(m.Properties))
	for k := range m.Properties {
		names = append(names, k)
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, k := range names {
		b = appendString(b, k)
		b = appendString(b, m.Properties[k])
	}
	b = binary.AppendUvarint(b, uint64(len(m.Body)))
	return append(b, m.Body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeRecordHeader parses only a record's fixed header: its topic, queue and
// store time.
func decodeRecordHeader(b []byte) (record, error) {
	d := decoder{b: b}
	if v := d.byte(); v != recordVersion {
		return record{}, fmt.Errorf("%w: version %d", errCorruptRecord, v)
	}
	r := record{topic: d.u32(), queue: int(d.u32()), storeTime: int64(d.u64())}
	return r, d.err
}

// decodeRecordKeys parses a record as far as its topic and keys.
func decodeRecordKeys(b []byte) (topic uint32, keys []string, err error) {
	d := decoder{b: b}
	if v := d.byte(); v != recordVersion {
		return 0, nil, fmt.Errorf("%w: version %d", errCorruptRecord, v)
	}
	topic = d.u32()
	d.bytes(4 + 8*4 + 4*3 + 1 + 16)
	for range 4 { // tag, sharding key, born host, producer group
		d.bytes(d.count())
	}
	if n := d.count(); n > 0 {
		keys = make([]string, n)
		for i := range keys {
			keys[i] = d.string()
		}
	}
	return topic, keys, d.err
}

// decodeRecord parses a record. The returned message does not alias b.
func decodeRecord(b []byte) (record, error) {
	d := decoder{b: b}
	if v := d.byte(); v != recordVersion {
		return record{}, fmt.Errorf("%w: version %d", errCorruptRecord, v)
	}
	r := record{msg: &Message{}}
	m := r.msg
	r.topic = d.u32()
	r.queue = int(d.u32())
	r.storeTime = int64(d.u64())
	m.BornAt = fromMillis(int64(d.u64()))
	m.DeliverAt = fromMillis(int64(d.u64()))
	m.CheckImmunity = time.Duration(d.u64())
	m.Flag = int32(d.u32())
	m.SysFlag = int32(d.u32())
	m.ReconsumeTimes = int32(d.u32())
	m.Transactional = d.byte() == 1
	copy(r.md5[:], d.bytes(16))
	m.Tag = d.string()
	m.ShardingKey = d.string()
	m.BornHost = d.string()
	m.ProducerGroup = d.string()
	if n := d.count(); n > 0 {
		m.Keys = make([]string, n)
		for i := range m.Keys {
			m.Keys[i] = d.string()
		}
	}
	if n := d.count(); n > 0 {
		m.Properties = make(map[string]string, n)
		for range n {
			k := d.string()
			m.Properties[k] = d.string()
		}
	}
	body := d.bytes(d.count())
	m.Body = slices.Clone(body)
	if d.err != nil {
		return record{}, d.err
	}
	return r, nil
}

// decoder reads a record, remembering the first error so callers check once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated", errCorruptRecord)
	}
	d.b = nil
}

func (d *decoder) bytes(n int) []byte {
	if n < 0 || len(d.b) < n {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	v := d.bytes(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) u32() uint32 {
	v := d.bytes(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (d *decoder) u64() uint64 {
	v := d.bytes(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (d *decoder) count() int {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > uint64(len(d.b)) {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return int(v)
}

func (d *decoder) string() string { return string(d.bytes(d.count())) }

func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// messageID formats the id of the message at seq: RocketMQ's offset message id, the
// store host's IPv4 address and port followed by the commit-log offset, in uppercase
// hex. TCP clients parse the offset back out of it; HTTP clients treat it as opaque.
// upperHex returns prefix followed by b in uppercase hex, the form RocketMQ ids,
// handles and body digests take, in one allocation.
func upperHex(prefix string, b []byte) string {
	const digits = "0123456789ABCDEF"
	out := make([]byte, len(prefix), len(prefix)+2*len(b))
	copy(out, prefix)
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&0xF])
	}
	return string(out)
}

func messageID(host [4]byte, port uint32, seq uint64) string {
	var b [16]byte
	copy(b[:4], host[:])
	binary.BigEndian.PutUint32(b[4:], port)
	binary.BigEndian.PutUint64(b[8:], seq)
	return upperHex("", b[:])
}

// parseMessageID returns the seq a message id encodes.
func parseMessageID(id string) (uint64, bool) {
	if len(id) != 32 {
		return 0, false
	}
	b, err := hex.DecodeString(id)
	if err != nil {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[8:]), true
}
