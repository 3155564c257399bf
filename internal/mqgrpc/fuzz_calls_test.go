package mqgrpc

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

const fuzzInstance, fuzzAK, fuzzSK = "MQ_INST_fuzz", "ORDLfuzzkey0000000000000", "fuzzsecret000000000000000000000"

// FuzzCalls decodes arbitrary bytes as each unary call's request, and as a
// receive's, and runs them through the service on a live broker, signed: every
// request the protobuf decoder accepts must be answered with a status, never a
// panic, and a refused one must leave the broker serving.
func FuzzCalls(f *testing.F) {
	b, err := broker.Open(broker.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: fuzzInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: fuzzAK, AccessKeySecret: fuzzSK}}}); err != nil {
		f.Fatal(err)
	}
	for name, typ := range map[string]broker.MessageType{"normal": broker.Normal, "fifo": broker.Ordered, "txn": broker.Transactional} {
		if _, err := b.EnsureTopic(fuzzInstance, broker.TopicConfig{Name: name, Type: typ, Queues: 2, Owner: "o"}); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := b.EnsureGroup(fuzzInstance, broker.GroupConfig{ID: "G", Protocol: broker.HTTP, Owner: "o"}); err != nil {
		f.Fatal(err)
	}
	s := NewServer("127.0.0.1:0", "", b, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	f.Cleanup(func() { cancel(); <-done })
	select {
	case <-s.Listening():
	case err := <-done:
		f.Fatal(err)
	}
	v := &service{s: s}

	ns := func(name string) *pb.Resource { return &pb.Resource{ResourceNamespace: fuzzInstance, Name: name} }
	tag := "T"
	seeds := []proto.Message{
		&pb.QueryRouteRequest{Topic: ns("normal")},
		&pb.HeartbeatRequest{Group: ns("G"), ClientType: pb.ClientType_SIMPLE_CONSUMER},
		&pb.SendMessageRequest{Messages: []*pb.Message{{Topic: ns("normal"), Body: []byte("x"),
			SystemProperties: &pb.SystemProperties{MessageId: "01", Tag: &tag, MessageType: pb.MessageType_NORMAL}}}},
		&pb.QueryAssignmentRequest{Topic: ns("fifo"), Group: ns("G")},
		&pb.AckMessageRequest{Group: ns("G"), Topic: ns("normal"), Entries: []*pb.AckMessageEntry{{MessageId: "01", ReceiptHandle: "h"}}},
		&pb.ChangeInvisibleDurationRequest{Group: ns("G"), Topic: ns("normal"), ReceiptHandle: "h", MessageId: "01"},
		&pb.EndTransactionRequest{Topic: ns("txn"), MessageId: "01", TransactionId: "t"},
		&pb.ForwardMessageToDeadLetterQueueRequest{Group: ns("G"), Topic: ns("normal"), ReceiptHandle: "h", MessageId: "01"},
		&pb.NotifyClientTerminationRequest{Group: ns("G")},
		&pb.ReceiveMessageRequest{Group: ns("G"), MessageQueue: &pb.MessageQueue{Topic: ns("normal")}, BatchSize: 4},
	}
	for i, m := range seeds {
		raw, _ := proto.Marshal(m)
		f.Add(uint8(i), raw)
	}
	// The unary calls, in the order of their seeds; the last seed is a receive's.
	unary := []func(context.Context, []byte) (bool, *pb.Status){
		unaryCall(v.QueryRoute), unaryCall(v.Heartbeat), unaryCall(v.SendMessage), unaryCall(v.QueryAssignment),
		unaryCall(v.AckMessage), unaryCall(v.ChangeInvisibleDuration), unaryCall(v.EndTransaction),
		unaryCall(v.ForwardMessageToDeadLetterQueue), unaryCall(v.NotifyClientTermination),
	}
	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		ctx, cancel := context.WithTimeout(metadata.NewIncomingContext(context.Background(),
			SignedMetadata(fuzzAK, fuzzSK, fuzzInstance, "fuzz@1@0@x", time.Now())), 2*time.Second)
		defer cancel()
		which %= uint8(len(seeds))
		if int(which) < len(unary) {
			decoded, st := unary[which](ctx, raw)
			if decoded && st == nil {
				t.Fatalf("call %d answered %x without a status", which, raw)
			}
			if _, err := b.Topic(fuzzInstance, "normal"); err != nil {
				t.Fatalf("the broker stopped serving: %v", err)
			}
			return
		}
		// A receive's validation, which decides the broker's pop.
		r := new(pb.ReceiveMessageRequest)
		if proto.Unmarshal(raw, r) != nil {
			return
		}
		c, release, bad := s.begin(ctx)
		if bad != nil {
			t.Fatalf("a signed call was refused: %v", bad)
		}
		req, _, bad := s.popRequest(ctx, c, r)
		release()
		if bad != nil {
			return
		}
		if req.Max < 1 || req.Max > broker.MaxPopMessages || req.Wait < 0 || req.Wait > broker.MaxPopWait ||
			req.Invisibility <= 0 || req.Invisibility > broker.MaxInvisibility {
			t.Fatalf("accepted %v as %+v", r, req)
		}
	})
}

// unaryCall decodes raw as call's request and makes the call, reporting whether
// raw decoded and the answer's status.
func unaryCall[Req any, PReq interface {
	*Req
	proto.Message
}, Res interface{ GetStatus() *pb.Status }](call func(context.Context, PReq) (Res, error)) func(context.Context, []byte) (bool, *pb.Status) {
	return func(ctx context.Context, raw []byte) (bool, *pb.Status) {
		req := PReq(new(Req))
		if proto.Unmarshal(raw, req) != nil {
			return false, nil
		}
		res, _ := call(ctx, req)
		return true, res.GetStatus()
	}
}
