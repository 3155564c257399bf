package mqgrpc

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

func sent(mt pb.MessageType, edit func(*pb.SystemProperties)) *pb.Message {
	sp := &pb.SystemProperties{MessageId: "01E26B6569E0DD40A20B2202A500000000", MessageType: mt, BodyEncoding: pb.Encoding_IDENTITY}
	if edit != nil {
		edit(sp)
	}
	return &pb.Message{Topic: &pb.Resource{Name: "t"}, SystemProperties: sp, Body: []byte("b")}
}

func TestSentMessagesAreCheckedAgainstTheirTopic(t *testing.T) {
	now := time.Now()
	group := func(sp *pb.SystemProperties) { sp.MessageGroup = proto.String("g") }
	delay := func(sp *pb.SystemProperties) { sp.DeliveryTimestamp = timestamppb.New(now.Add(time.Minute)) }
	for _, c := range []struct {
		name  string
		m     *pb.Message
		topic broker.MessageType
		want  pb.Code
	}{
		{"normal", sent(pb.MessageType_NORMAL, nil), broker.Normal, pb.Code_OK},
		{"delay", sent(pb.MessageType_DELAY, delay), broker.Normal, pb.Code_OK},
		{"fifo", sent(pb.MessageType_FIFO, group), broker.Ordered, pb.Code_OK},
		{"transaction", sent(pb.MessageType_TRANSACTION, nil), broker.Transactional, pb.Code_OK},
		{"fifo to normal", sent(pb.MessageType_FIFO, group), broker.Normal, pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE},
		{"normal to ordered", sent(pb.MessageType_NORMAL, nil), broker.Ordered, pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE},
		{"delay to transactional", sent(pb.MessageType_DELAY, delay), broker.Transactional, pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE},
		{"fifo without group", sent(pb.MessageType_FIFO, nil), broker.Ordered, pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE},
		{"normal with group", sent(pb.MessageType_NORMAL, group), broker.Normal, pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE},
		{"no id", sent(pb.MessageType_NORMAL, func(sp *pb.SystemProperties) { sp.MessageId = "" }), broker.Normal, pb.Code_ILLEGAL_MESSAGE_ID},
		{"bad tag", sent(pb.MessageType_NORMAL, func(sp *pb.SystemProperties) { sp.Tag = proto.String("a||b") }), broker.Normal, pb.Code_ILLEGAL_MESSAGE_TAG},
		{"blank key", sent(pb.MessageType_NORMAL, func(sp *pb.SystemProperties) { sp.Keys = []string{" "} }), broker.Normal, pb.Code_ILLEGAL_MESSAGE_KEY},
		{"long group", sent(pb.MessageType_FIFO, func(sp *pb.SystemProperties) { sp.MessageGroup = proto.String(string(make([]byte, 64))) }), broker.Ordered, pb.Code_ILLEGAL_MESSAGE_GROUP},
		{"far delay", sent(pb.MessageType_DELAY, func(sp *pb.SystemProperties) {
			sp.DeliveryTimestamp = timestamppb.New(now.Add(broker.MaxDeliveryDelay + time.Hour))
		}), broker.Normal, pb.Code_ILLEGAL_DELIVERY_TIME},
		{"no system properties", &pb.Message{Body: []byte("b")}, broker.Normal, pb.Code_MESSAGE_CORRUPTED},
		{"empty body", &pb.Message{SystemProperties: sent(pb.MessageType_NORMAL, nil).SystemProperties}, broker.Normal, pb.Code_MESSAGE_BODY_EMPTY},
		{"bad gzip", &pb.Message{Body: []byte("not gzip"), SystemProperties: sent(pb.MessageType_NORMAL, func(sp *pb.SystemProperties) { sp.BodyEncoding = pb.Encoding_GZIP }).SystemProperties},
			broker.Normal, pb.Code_MESSAGE_CORRUPTED},
	} {
		m, st := fromWire(c.m, "t", c.topic, now, freeInflation())
		code := pb.Code_OK
		if st != nil {
			code = st.Code
		}
		if code != c.want {
			t.Errorf("%s: %v (%v), want %v", c.name, code, st.GetMessage(), c.want)
		}
		if code == pb.Code_OK && m.Properties[propMessageID] != c.m.SystemProperties.MessageId {
			t.Errorf("%s: the message id is not kept: %v", c.name, m.Properties)
		}
	}
	bad := sent(pb.MessageType_NORMAL, nil)
	bad.UserProperties = map[string]string{"UNIQ_KEY": "x"}
	if _, st := fromWire(bad, "t", broker.Normal, now, freeInflation()); st.GetCode() != pb.Code_ILLEGAL_MESSAGE_PROPERTY_KEY {
		t.Errorf("a reserved property name: %v", st)
	}
}

func FuzzFromWire(f *testing.F) {
	for _, m := range []*pb.Message{sent(pb.MessageType_NORMAL, nil), sent(pb.MessageType_FIFO, func(sp *pb.SystemProperties) { sp.MessageGroup = proto.String("g") })} {
		raw, _ := proto.Marshal(m)
		f.Add(raw, 0)
		f.Add(raw, 1)
	}
	types := []broker.MessageType{broker.Normal, broker.Ordered, broker.Transactional}
	f.Fuzz(func(t *testing.T, raw []byte, typ int) {
		var m pb.Message
		if proto.Unmarshal(raw, &m) != nil {
			return
		}
		topic := types[(typ%3+3)%3]
		out, st := fromWire(&m, "t", topic, time.Now(), freeInflation())
		if st != nil {
			return
		}
		// What passes is what the broker takes for the topic, or refuses with a
		// broker error, never a panic.
		if len(out.Body) == 0 || len(out.Body) > broker.MaxBodySize || out.Properties[propMessageID] == "" ||
			(topic == broker.Ordered) != (out.ShardingKey != "") || (topic == broker.Transactional) != out.Transactional {
			t.Fatalf("accepted %v as %+v for a %s topic", &m, out, topic)
		}
	})
}

// freeBudget grants every Take.
type freeBudget struct{}

func (freeBudget) Take(int) error { return nil }
func (freeBudget) Give(int)       {}

// freeInflation bounds a send's bodies as a call does, with memory for free.
func freeInflation() *inflation {
	return &inflation{left: broker.MaxBatchBytes, budget: freeBudget{}}
}
