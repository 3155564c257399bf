package mqgrpc

import (
	"errors"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/compression"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// propMessageID holds the producer's message id. The 5.x clients make the id
// themselves and expect it back in the send result, on delivery and in acks
// (3.10); RocketMQ keeps it as the UNIQ_KEY property, where its 4.x clients read
// their message ids, so a message sent over gRPC has the same id over remoting.
const propMessageID = "UNIQ_KEY"

// reservedProperties are property names RocketMQ gives a meaning of its own, on
// this or another wire: a user property of that name is refused, as the Apache
// proxy refuses system property names.
var reservedProperties = map[string]bool{
	propMessageID: true, "TAGS": true, "KEYS": true, "DELAY": true, "WAIT": true, "SHARDING_KEY": true,
	"TRAN_MSG": true, "PGROUP": true, "CHECK_IMMUNITY_TIME_IN_SECONDS": true, "MSG_REGION": true, "TRACE_ON": true,
	"REAL_TOPIC": true, "REAL_QID": true, "TIMER_DELIVER_MS": true, "TIMER_DELAY_SEC": true, "TIMER_DELAY_MS": true,
	broker.PropertyRetryTopic: true, broker.PropertyOriginMessageID: true,
	"__STARTDELIVERTIME": true, "__SHARDINGKEY": true, "__TransCheckT": true,
}

// maxMessageGroup bounds a message group, as the Apache proxy does (4.2).
const maxMessageGroup = 64

// fromWire turns a sent message into the broker's, checking what the protocol
// asks of it (3.4, 4, 5), for topic, of type topicType.
// The body inflates within inf.
func fromWire(m *pb.Message, topic string, topicType broker.MessageType, now time.Time, inf *inflation) (broker.Message, *pb.Status) {
	sp := m.GetSystemProperties()
	if sp == nil {
		return broker.Message{}, statusf(pb.Code_MESSAGE_CORRUPTED, "the message has no system properties")
	}
	if sp.MessageId == "" {
		return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_ID, "the message has no message id")
	}
	if !printable(sp.MessageId) || len(sp.MessageId) > 128 {
		return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_ID, "message id %q is not printable ASCII of at most 128 characters", sp.MessageId)
	}
	body, st := decodeBody(m.Body, sp.BodyEncoding, inf)
	if st != nil {
		return broker.Message{}, st
	}
	out := broker.Message{Body: body, Queue: broker.AnyQueue, BornHost: sp.BornHost, Keys: sp.Keys}
	if sp.BornTimestamp != nil {
		out.BornAt = sp.BornTimestamp.AsTime()
	}
	if sp.Tag != nil {
		if t := *sp.Tag; strings.TrimSpace(t) == "" || strings.Contains(t, "|") || hasControl(t) {
			return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_TAG, "tag %q is blank, or holds '|' or a control character", t)
		}
		out.Tag = *sp.Tag
	}
	for _, k := range sp.Keys {
		if strings.TrimSpace(k) == "" || hasControl(k) {
			return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_KEY, "key %q is blank or holds a control character", k)
		}
	}
	out.Properties = make(map[string]string, len(m.UserProperties)+1)
	for k, v := range m.UserProperties {
		if k == "" || hasControl(k) || reservedProperties[k] {
			return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_PROPERTY_KEY, "property %q is empty, reserved or holds a control character", k)
		}
		out.Properties[k] = v
	}
	out.Properties[propMessageID] = sp.MessageId

	typ := sp.MessageType
	if typ == pb.MessageType_MESSAGE_TYPE_UNSPECIFIED {
		// The clients always say; derive it as they would.
		switch {
		case sp.MessageGroup != nil:
			typ = pb.MessageType_FIFO
		case sp.DeliveryTimestamp != nil:
			typ = pb.MessageType_DELAY
		default:
			typ = pb.MessageType_NORMAL
		}
	}
	accepted := false
	for _, a := range acceptedTypes(topicType) {
		accepted = accepted || a == typ
	}
	if !accepted {
		return broker.Message{}, statusf(pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, "a %s message cannot go to a %s topic", typ, strings.ToLower(string(topicType)))
	}
	if (typ == pb.MessageType_FIFO) != (sp.MessageGroup != nil) {
		return broker.Message{}, statusf(pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, "a %s message with%s a message group", typ, map[bool]string{true: "", false: "out"}[sp.MessageGroup != nil])
	}
	if (typ == pb.MessageType_DELAY) != (sp.DeliveryTimestamp != nil) {
		return broker.Message{}, statusf(pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE, "a %s message with%s a delivery time", typ, map[bool]string{true: "", false: "out"}[sp.DeliveryTimestamp != nil])
	}
	switch typ {
	case pb.MessageType_FIFO:
		g := *sp.MessageGroup
		if strings.TrimSpace(g) == "" || len(g) >= maxMessageGroup || hasControl(g) {
			return broker.Message{}, statusf(pb.Code_ILLEGAL_MESSAGE_GROUP, "message group %q is blank, %d bytes or more, or holds a control character", g, maxMessageGroup)
		}
		// The group is the sharding key: one group, one queue, the same one a
		// message of that key gets over mq-http.
		out.ShardingKey = g
	case pb.MessageType_DELAY:
		at := sp.DeliveryTimestamp.AsTime()
		if !sp.DeliveryTimestamp.IsValid() || at.After(now.Add(broker.MaxDeliveryDelay)) {
			return broker.Message{}, statusf(pb.Code_ILLEGAL_DELIVERY_TIME, "delivery time %s is more than %d days ahead",
				at.UTC().Format(time.RFC3339), broker.MaxDeliveryDelay/(24*time.Hour))
		}
		if at.After(now) {
			out.DeliverAt = at
		}
	case pb.MessageType_TRANSACTION:
		out.Transactional = true
		// The producer group of a transaction is its topic, as the Apache proxy
		// keys transactions: check-backs go to producers that publish the topic.
		out.ProducerGroup = topic
		if d := sp.OrphanedTransactionRecoveryDuration; d != nil {
			out.CheckImmunity = d.AsDuration()
		}
	}
	return out, nil
}

// inflation is what the bodies of one send may inflate to: together no more than
// a batch's bodies may hold, and taken from the call's memory as they inflate.
// Without the shared bound, a request of a thousand small gzip bombs would each
// inflate to the largest body.
type inflation struct {
	left   int
	budget compression.Budget
}

// decodeBody returns a body as stored: the clients may send it gzipped (Go
// decodes zlib as well), the broker keeps it plain, so that every wire reads it.
// It counts the body against inf.
func decodeBody(body []byte, enc pb.Encoding, inf *inflation) ([]byte, *pb.Status) {
	if len(body) == 0 {
		return nil, statusf(pb.Code_MESSAGE_BODY_EMPTY, "the message body is empty")
	}
	if enc == pb.Encoding_GZIP {
		format := compression.Zlib
		if len(body) >= 2 && body[0] == 0x1f && body[1] == 0x8b {
			format = compression.Gzip
		}
		plain, err := compression.Decompress(format, body, min(max(inf.left, 0), broker.MaxBodySize), inf.budget)
		switch {
		case errors.Is(err, compression.ErrTooLarge):
			return nil, statusf(pb.Code_MESSAGE_BODY_TOO_LARGE, "the gzipped body inflates past %d bytes, or the request's bodies past %d together", broker.MaxBodySize, broker.MaxBatchBytes)
		case errors.Is(err, compression.ErrCorrupt):
			return nil, statusf(pb.Code_MESSAGE_CORRUPTED, "the gzipped body does not decompress: %v", err)
		case err != nil:
			return nil, brokerStatus(err)
		}
		body = plain
	}
	if len(body) > broker.MaxBodySize {
		return nil, statusf(pb.Code_MESSAGE_BODY_TOO_LARGE, "the body is over %d bytes", broker.MaxBodySize)
	}
	inf.left -= len(body)
	return body, nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl) || !utf8.ValidString(s)
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// wireDelivery is a delivery in the shape the clients read, with every part of it
// in one allocation: a receive of 16 messages would otherwise make about 200
// small objects, which the garbage collector then spends more on than the
// encoding does.
type wireDelivery struct {
	resp    pb.ReceiveMessageResponse
	content pb.ReceiveMessageResponse_Message
	msg     pb.Message
	sp      pb.SystemProperties
	digest  pb.Digest
	store   timestamppb.Timestamp
	born    timestamppb.Timestamp
	deliver timestamppb.Timestamp
	invis   durationpb.Duration
	handle  string
	tag     string
	group   string
	offset  int64
	attempt int32
}

// toWire is a delivery as the clients read it (3.9). Every system property a
// client dereferences is set: a message without them panics the Go client. It
// takes d's properties: a delivery is its caller's, decoded for it alone.
func (s *Server) toWire(topic *pb.Resource, d *broker.Delivery, now time.Time) *wireDelivery {
	m := &d.StoredMessage
	w := &wireDelivery{handle: d.Handle, offset: m.Offset, attempt: int32(max(d.ConsumedTimes, 1)), tag: m.Tag, group: m.ShardingKey}
	id := m.Properties[propMessageID]
	if id == "" {
		id = m.ID // published over mq-http, which names messages by the broker's id
	}
	delete(m.Properties, propMessageID)
	// MD5 in upper-case hex: what Node checks (Go compares lower case and ignores
	// a mismatch).
	w.digest = pb.Digest{Type: pb.DigestType_MD5, Checksum: m.BodyMD5}
	born := m.BornAt
	if born.IsZero() {
		born = m.StoreTime
	}
	setTime(&w.store, m.StoreTime)
	setTime(&w.born, born)
	w.sp = pb.SystemProperties{
		Keys:            m.Keys,
		MessageId:       id,
		BodyDigest:      &w.digest,
		BodyEncoding:    pb.Encoding_IDENTITY,
		MessageType:     messageType(m),
		BornHost:        m.BornHost,
		BornTimestamp:   &w.born,
		StoreTimestamp:  &w.store,
		StoreHost:       s.Advertise,
		ReceiptHandle:   &w.handle,
		QueueId:         int32(m.Queue),
		QueueOffset:     &w.offset,
		DeliveryAttempt: &w.attempt,
	}
	if m.Tag != "" {
		w.sp.Tag = &w.tag
	}
	if !m.DeliverAt.IsZero() {
		setTime(&w.deliver, m.DeliverAt)
		w.sp.DeliveryTimestamp = &w.deliver
	}
	if m.ShardingKey != "" {
		w.sp.MessageGroup = &w.group
	}
	if !d.NextConsumeTime.IsZero() {
		left := max(d.NextConsumeTime.Sub(now), 0)
		w.invis.Seconds, w.invis.Nanos = int64(left/time.Second), int32(left%time.Second)
		w.sp.InvisibleDuration = &w.invis
	}
	w.msg = pb.Message{Topic: topic, UserProperties: m.Properties, SystemProperties: &w.sp, Body: m.Body}
	w.content.Message = &w.msg
	w.resp.Content = &w.content
	return w
}

// setTime sets ts to t, as timestamppb.New would make it.
func setTime(ts *timestamppb.Timestamp, t time.Time) {
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
}

// messageType says what a stored message is, as the Apache proxy derives it
// from the message's properties.
func messageType(m *broker.StoredMessage) pb.MessageType {
	switch {
	case m.Transactional:
		return pb.MessageType_TRANSACTION
	case !m.DeliverAt.IsZero():
		return pb.MessageType_DELAY
	case m.ShardingKey != "":
		return pb.MessageType_FIFO
	default:
		return pb.MessageType_NORMAL
	}
}
