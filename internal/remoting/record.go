package remoting

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/compression"
)

// Message properties the protocol gives meaning to (3.1.1).
const (
	propTags        = "TAGS"
	propKeys        = "KEYS"
	propDelay       = "DELAY"
	propShardingKey = "SHARDING_KEY"
	propTranMsg     = "TRAN_MSG"
	propProducer    = "PGROUP"
	propUniqKey     = "UNIQ_KEY"
	propCheckImmune = "CHECK_IMMUNITY_TIME_IN_SECONDS"
	propRetryTopic  = "RETRY_TOPIC"
	propRealTopic   = "REAL_TOPIC"
	propRealQueue   = "REAL_QID"
	// Timed delivery, which the 4.x protocol leaves to properties (docs/remoting.md,
	// "Timed delivery"): the ONS clients' absolute time, and RocketMQ 5's absolute
	// time and relative delays.
	propStartDeliverTime = "__STARTDELIVERTIME"
	propTimerDeliverMs   = "TIMER_DELIVER_MS"
	propTimerDelaySec    = "TIMER_DELAY_SEC"
	propTimerDelayMs     = "TIMER_DELAY_MS"
	nameValueSep         = '\x01'
	propertySep          = '\x02'
	recordMagic          = 0xDAA320A7
	sysFlagCompress      = 0x1
	sysFlagCompressType  = 0x700 // RocketMQ 5's compression type, beside sysFlagCompress
	sysFlagTxnMask       = 0xC
	sysFlagPrepared      = 0x4
	maxTopicOnWire       = 127
	maxPropsOnWire       = 32767
	recordFixedBytes     = 91 // a record's size without body, topic and properties (3.3)
)

// compressionOf returns the format of a body sent with sysFlagCompress: the type
// RocketMQ 5's remoting clients write in sysFlag's bits 8 to 10, where the 4.x
// clients, which compress with zlib only, leave 0 (docs/compression.md).
func compressionOf(sysFlag int64) (compression.Format, error) {
	switch (sysFlag & sysFlagCompressType) >> 8 {
	case 0, 3:
		return compression.Zlib, nil
	case 1:
		return compression.LZ4, nil
	case 2:
		return compression.Zstd, nil
	}
	return 0, fmt.Errorf("unknown compression type %d in sysFlag %d", (sysFlag&sysFlagCompressType)>>8, sysFlag)
}

// parseProperties reads "k\x01v\x02..." keeping items with exactly one separator,
// as the Go client does, and a non-empty key, as Java does.
func parseProperties(s string) map[string]string {
	props := map[string]string{}
	for item := range strings.SplitSeq(s, string(propertySep)) {
		k, v, ok := strings.Cut(item, string(nameValueSep))
		if !ok || k == "" || strings.ContainsRune(v, nameValueSep) {
			continue
		}
		props[k] = v
	}
	return props
}

// appendProperties writes props in name order with the trailing separator the Go
// client writes.
func appendProperties(b []byte, props map[string]string) []byte {
	names := make([]string, 0, len(props))
	for k := range props {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		b = append(b, k...)
		b = append(b, nameValueSep)
		b = append(b, props[k]...)
		b = append(b, propertySep)
	}
	return b
}

// messageFromWire turns a sent message's properties into the broker's fields; the
// properties only the protocol reads stay in Properties, so that consumers get them
// back.
func messageFromWire(body []byte, properties string) broker.Message {
	props := parseProperties(properties)
	m := broker.Message{Body: body, Properties: props, Queue: broker.AnyQueue}
	if tag, ok := props[propTags]; ok {
		m.Tag = tag
		delete(props, propTags)
	}
	if keys, ok := props[propKeys]; ok {
		m.Keys = strings.Fields(keys)
		delete(props, propKeys)
	}
	if level, err := strconv.Atoi(props[propDelay]); err == nil && level > 0 {
		m.DelayLevel = level
		delete(props, propDelay)
	}
	if key, ok := props[propShardingKey]; ok {
		m.ShardingKey = key
		delete(props, propShardingKey)
	}
	return m
}

// applyDeliveryTime sets m's delivery time from the timer property it carries, the
// first of them in the order below that holds a number: absolute times in
// milliseconds since the epoch, delays from now. A time that has passed, a delay of
// zero or less, or a value that is not a number delivers at once, as the delay
// level does when it is not a level. A delivery time wins over a delay level sent
// beside it. The properties stay as sent, so that consumers read them back as the
// producer set them; the broker refuses a time beyond its maximum delay.
func applyDeliveryTime(m *broker.Message, now time.Time) {
	var at time.Time
	switch {
	case setMillis(m.Properties[propStartDeliverTime], &at):
	case setMillis(m.Properties[propTimerDeliverMs], &at):
	case setDelay(m.Properties[propTimerDelaySec], time.Second, &at, now):
	case setDelay(m.Properties[propTimerDelayMs], time.Millisecond, &at, now):
	default:
		return
	}
	m.DelayLevel = 0
	if at.After(now) {
		m.DeliverAt = at
	}
}

// setMillis sets at to the time v names in milliseconds since the epoch, and says
// whether v is a number.
func setMillis(v string, at *time.Time) bool {
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return false
	}
	*at = time.UnixMilli(ms)
	return true
}

// setDelay sets at to now plus v units, and says whether v is a number. A negative
// delay is none; one longer than any time.Duration is kept at the longest, which
// the broker refuses.
func setDelay(v string, unit time.Duration, at *time.Time, now time.Time) bool {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return false
	}
	n = min(max(n, 0), int64(math.MaxInt64/unit))
	*at = now.Add(time.Duration(n) * unit)
	return true
}

// wireProperties rebuilds a stored message's properties string.
func wireProperties(m *broker.StoredMessage, names namer) map[string]string {
	props := make(map[string]string, len(m.Properties)+3)
	for k, v := range m.Properties {
		props[k] = v
	}
	if m.Tag != "" {
		props[propTags] = m.Tag
	}
	if len(m.Keys) > 0 {
		props[propKeys] = strings.Join(m.Keys, " ")
	}
	if m.ShardingKey != "" {
		props[propShardingKey] = m.ShardingKey
	}
	if t, ok := props[propRetryTopic]; ok {
		props[propRetryTopic] = names.topic(t)
	}
	return props
}

// decodeBatch splits a SEND_BATCH_MESSAGE body into its messages (3.1.2). The
// broker's bounds on a batch (broker.MaxBatchMessages, broker.MaxBatchBytes of
// bodies) and on properties are checked item by item as the body is walked, before
// anything is copied or parsed, so a frame of tiny items costs no more than its size.
//
//	item: total int32 | magic int32 | crc int32 | flag int32 | bodyLen int32 | body |
//	      propsLen int16 | properties
func decodeBatch(body []byte) ([]broker.Message, error) {
	type span struct{ item, body, props []byte }
	var spans []span
	bodies := 0
	for len(body) > 0 {
		if len(body) < 20 {
			return nil, fmt.Errorf("truncated batch item of %d bytes", len(body))
		}
		total := int(binary.BigEndian.Uint32(body))
		if total < 22 || total > len(body) {
			return nil, fmt.Errorf("batch item size %d with %d bytes left", total, len(body))
		}
		item := body[:total]
		body = body[total:]
		bodyLen := int(binary.BigEndian.Uint32(item[16:]))
		if bodyLen < 0 || 20+bodyLen+2 > total {
			return nil, fmt.Errorf("batch item body length %d in an item of %d", bodyLen, total)
		}
		propsLen := int(binary.BigEndian.Uint16(item[20+bodyLen:]))
		if 22+bodyLen+propsLen != total {
			return nil, fmt.Errorf("batch item properties length %d in an item of %d", propsLen, total)
		}
		if propsLen > maxWireProperties {
			return nil, fmt.Errorf("batch item %d has properties of %d bytes; at most %d", len(spans), propsLen, maxWireProperties)
		}
		if len(spans) == broker.MaxBatchMessages {
			return nil, fmt.Errorf("a batch of more than %d messages", broker.MaxBatchMessages)
		}
		if bodies += bodyLen; bodies > broker.MaxBatchBytes {
			return nil, fmt.Errorf("a batch of more than %d bytes of bodies", broker.MaxBatchBytes)
		}
		spans = append(spans, span{item: item, body: item[20 : 20+bodyLen], props: item[22+bodyLen : total]})
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("empty batch")
	}
	msgs := make([]broker.Message, len(spans))
	for i, sp := range spans {
		msgs[i] = messageFromWire(slices.Clone(sp.body), string(sp.props))
		msgs[i].Flag = int32(binary.BigEndian.Uint32(sp.item[12:]))
	}
	return msgs, nil
}

// hostPort is an IPv4 address and port as records carry them.
type hostPort struct {
	ip   [4]byte
	port uint32
}

func parseHostPort(s string) hostPort {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Unmap().Is4() {
		// Records only carry IPv4 hosts (3.3); loopback stands in for others.
		return hostPort{ip: [4]byte{127, 0, 0, 1}}
	}
	return hostPort{ip: ap.Addr().Unmap().As4(), port: uint32(ap.Port())}
}

// appendRecord appends m as a stored-message record (3.3) under the wire topic name.
func appendRecord(b []byte, m *broker.StoredMessage, topic string, queue int, props map[string]string, store hostPort) ([]byte, error) {
	if len(topic) > maxTopicOnWire {
		return b, fmt.Errorf("topic name %q is longer than a record holds", topic)
	}
	p := appendProperties(nil, props)
	if len(p) > maxPropsOnWire {
		return b, fmt.Errorf("properties of %d bytes are longer than a record holds", len(p))
	}
	born := parseHostPort(m.BornHost)
	offset := m.Offset
	if offset < 0 {
		offset = 0
	}
	size := recordFixedBytes + len(m.Body) + len(topic) + len(p)
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	b = binary.BigEndian.AppendUint32(b, recordMagic)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(m.Body)&0x7FFFFFFF)
	b = binary.BigEndian.AppendUint32(b, uint32(queue))
	b = binary.BigEndian.AppendUint32(b, uint32(m.Flag))
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	// Only the compression bit travels: host bits are IPv4 here, and transaction
	// bits mean nothing to a consumer.
	b = binary.BigEndian.AppendUint32(b, uint32(m.SysFlag&sysFlagCompress))
	bornAt := m.BornAt
	if bornAt.IsZero() {
		bornAt = m.StoreTime
	}
	b = binary.BigEndian.AppendUint64(b, uint64(bornAt.UnixMilli()))
	b = append(b, born.ip[:]...)
	b = binary.BigEndian.AppendUint32(b, born.port)
	b = binary.BigEndian.AppendUint64(b, uint64(m.StoreTime.UnixMilli()))
	b = append(b, store.ip[:]...)
	b = binary.BigEndian.AppendUint32(b, store.port)
	b = binary.BigEndian.AppendUint32(b, uint32(m.ReconsumeTimes))
	b = binary.BigEndian.AppendUint64(b, 0) // prepared transaction offset
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Body)))
	b = append(b, m.Body...)
	b = append(b, byte(len(topic)))
	b = append(b, topic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	return append(b, p...), nil
}
