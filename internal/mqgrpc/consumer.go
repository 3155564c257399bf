package mqgrpc

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// Bounds of a receive (3.6), as the Apache proxy checks them.
const (
	minInvisibility = 10 * time.Second
	// pollMargin is what a long poll leaves of the call's deadline for the answer
	// to arrive: a receive that outlives its deadline loses its messages to the
	// Go client.
	pollMargin = 1500 * time.Millisecond
	// maxAckEntries bounds one acknowledgement: the clients acknowledge one
	// message a call.
	maxAckEntries = 1024
)

// filterOf parses a subscription's filter: tags, or a SQL92 expression over the
// message's properties (docs/sqlfilter.md).
func filterOf(f *pb.FilterExpression) (broker.Filter, *pb.Status) {
	if f == nil {
		return broker.Filter{}, nil
	}
	var filter broker.Filter
	var err error
	switch f.Type {
	case pb.FilterType_TAG, pb.FilterType_FILTER_TYPE_UNSPECIFIED:
		filter, err = broker.ParseTagFilter(f.Expression)
	case pb.FilterType_SQL:
		filter, err = broker.ParseSQLFilter(f.Expression)
	default:
		return broker.Filter{}, statusf(pb.Code_ILLEGAL_FILTER_EXPRESSION, "filter type %s is not one of TAG and SQL", f.Type)
	}
	if err != nil {
		return filter, statusf(pb.Code_ILLEGAL_FILTER_EXPRESSION, "%v", err)
	}
	return filter, nil
}

// ReceiveMessage pops messages for the group and streams them: a status, the
// messages, the time of delivery, then the end of the stream, as the Apache proxy
// shapes it (3.6). It waits for messages as long as the request asks, or, when it
// does not say (the Go client never does), as the client's Settings say, always
// answering before the call's deadline.
func (v *service) ReceiveMessage(req *pb.ReceiveMessageRequest, stream grpc.ServerStreamingServer[pb.ReceiveMessageResponse]) error {
	ctx, cancel := v.s.callContext(stream.Context())
	defer cancel()
	answer := func(st *pb.Status, msgs []*wireDelivery) error {
		if err := stream.Send(&pb.ReceiveMessageResponse{Content: &pb.ReceiveMessageResponse_Status{Status: st}}); err != nil {
			return err
		}
		for _, m := range msgs {
			if err := stream.Send(&m.resp); err != nil {
				return err
			}
		}
		return stream.Send(&pb.ReceiveMessageResponse{Content: &pb.ReceiveMessageResponse_DeliveryTimestamp{DeliveryTimestamp: timestamppb.Now()}})
	}
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return answer(st, nil)
	}
	defer release()
	popReq, topic, st := v.s.popRequest(ctx, c, req)
	if st != nil {
		return answer(st, nil)
	}
	ds, err := v.s.Broker.Pop(ctx, c.instance, topic, popReq)
	if err != nil {
		if stream.Context().Err() != nil {
			return nil // the client went away: nobody to answer
		}
		return answer(brokerStatus(err), nil)
	}
	if len(ds) == 0 {
		return answer(statusf(pb.Code_MESSAGE_NOT_FOUND, "no new message"), nil)
	}
	now := time.Now()
	msgs := make([]*wireDelivery, len(ds))
	for i := range ds {
		msgs[i] = v.s.toWire(req.MessageQueue.Topic, &ds[i], now)
		if req.AutoRenew {
			v.s.renewals.add(ds[i].Handle, &renewal{instance: c.instance, topic: topic, group: popReq.Group, clientID: c.clientID,
				invisibility: popReq.Invisibility, started: now, expiry: ds[i].NextConsumeTime})
		}
	}
	return answer(okStatus(), msgs)
}

// popRequest checks a receive and makes it the broker's pop.
func (s *Server) popRequest(ctx context.Context, c *call, req *pb.ReceiveMessageRequest) (broker.PopRequest, string, *pb.Status) {
	var out broker.PopRequest
	group, st := c.group(req.GetGroup())
	if st != nil {
		return out, "", st
	}
	topic, st := c.topic(req.GetMessageQueue().GetTopic())
	if st != nil {
		return out, "", st
	}
	info, st := s.userTopic(c, topic)
	if st != nil {
		return out, "", st
	}
	if out.Filter, st = filterOf(req.FilterExpression); st != nil {
		return out, "", st
	}
	// The requested queue is ignored, as the Apache proxy ignores it: Go picks
	// any queue of the route, Node always 0; a pop takes from every queue.
	out.Group = group
	out.Max = min(max(int(req.BatchSize), 1), broker.MaxPopMessages)
	// Ordered consumption where the topic is ordered: a queue's next batch only
	// once the last is acknowledged (docs/grpc.md, "FIFO").
	out.Orderly = info.Type == broker.Ordered
	if d := req.InvisibleDuration; d != nil {
		inv := d.AsDuration()
		if !d.IsValid() || (!req.AutoRenew && inv < minInvisibility) || inv > broker.MaxInvisibility {
			return out, "", statusf(pb.Code_ILLEGAL_INVISIBLE_TIME, "invisible duration %v is outside %v..%v", inv, minInvisibility, broker.MaxInvisibility)
		}
		out.Invisibility = inv
	} else if !req.AutoRenew {
		return out, "", statusf(pb.Code_ILLEGAL_INVISIBLE_TIME, "the request names no invisible duration")
	} else {
		out.Invisibility = renewInvisibility // and renewed (renew.go)
	}
	poll := s.lim.LongPolling
	if cl := s.clients.get(c.instance, c.clientID); cl != nil && cl.longPolling > 0 {
		poll = cl.longPolling
	}
	if d := req.LongPollingTimeout; d != nil && d.IsValid() {
		poll = d.AsDuration()
	}
	if deadline, ok := ctx.Deadline(); ok {
		poll = min(poll, time.Until(deadline)-pollMargin)
	}
	out.Wait = min(max(poll, 0), broker.MaxPopWait)
	return out, topic, nil
}

// AckMessage acknowledges deliveries by their receipt handles, each with its own
// result (3.6).
func (v *service) AckMessage(ctx context.Context, req *pb.AckMessageRequest) (*pb.AckMessageResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.AckMessageResponse{Status: st}, nil
	}
	defer release()
	group, topic, st := consumerNames(c, req.GetGroup(), req.GetTopic())
	if st != nil {
		return &pb.AckMessageResponse{Status: st}, nil
	}
	if len(req.Entries) == 0 || len(req.Entries) > maxAckEntries {
		return &pb.AckMessageResponse{Status: statusf(pb.Code_BAD_REQUEST, "%d entries to acknowledge; 1 to %d", len(req.Entries), maxAckEntries)}, nil
	}
	handles := make([]string, len(req.Entries))
	for i, e := range req.Entries {
		var release func()
		handles[i], release = v.s.handle(e.ReceiptHandle)
		defer release()
	}
	errs, err := v.s.Broker.Ack(c.instance, topic, group, handles)
	if err != nil {
		return &pb.AckMessageResponse{Status: brokerStatus(err)}, nil
	}
	// The results in two allocations rather than two an entry.
	entries := make([]*pb.AckMessageResultEntry, len(req.Entries))
	statuses := make([]*pb.Status, len(req.Entries))
	results := make([]pb.AckMessageResultEntry, len(req.Entries))
	oks := make([]pb.Status, len(req.Entries))
	for i, e := range req.Entries {
		statuses[i] = &oks[i]
		statuses[i].Code, statuses[i].Message = pb.Code_OK, "OK"
		if errs[i] != nil {
			statuses[i] = ackStatus(errs[i])
		}
		entries[i] = &results[i]
		entries[i].MessageId, entries[i].ReceiptHandle, entries[i].Status = e.MessageId, e.ReceiptHandle, statuses[i]
	}
	return &pb.AckMessageResponse{Status: combined(statuses), Entries: entries}, nil
}

// ackStatus is the status of a handle the broker refused.
func ackStatus(err error) *pb.Status {
	switch {
	case errors.Is(err, broker.ErrHandleExpired):
		return statusf(pb.Code_INVALID_RECEIPT_HANDLE, "receipt handle is expired, or its message acknowledged already")
	case errors.Is(err, broker.ErrInvalidHandle):
		return statusf(pb.Code_INVALID_RECEIPT_HANDLE, "not a current receipt handle of this topic and group")
	}
	return brokerStatus(err)
}

// consumerNames resolves the group and topic a consumer's call names.
func consumerNames(c *call, g, t *pb.Resource) (group, topic string, st *pb.Status) {
	if group, st = c.group(g); st != nil {
		return "", "", st
	}
	if topic, st = c.topic(t); st != nil {
		return "", "", st
	}
	return group, topic, nil
}

// ChangeInvisibleDuration extends a delivery's invisibility, or with a short one
// hands it back (a nack), and returns its new handle (3.6). On failure it returns
// the request's handle: the Go client replaces its handle with whatever comes back.
func (v *service) ChangeInvisibleDuration(ctx context.Context, req *pb.ChangeInvisibleDurationRequest) (*pb.ChangeInvisibleDurationResponse, error) {
	fail := func(st *pb.Status) (*pb.ChangeInvisibleDurationResponse, error) {
		return &pb.ChangeInvisibleDurationResponse{Status: st, ReceiptHandle: req.GetReceiptHandle()}, nil
	}
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return fail(st)
	}
	defer release()
	group, topic, st := consumerNames(c, req.GetGroup(), req.GetTopic())
	if st != nil {
		return fail(st)
	}
	d := req.GetInvisibleDuration()
	if d == nil || !d.IsValid() || d.AsDuration() < 0 || d.AsDuration() > broker.MaxInvisibility {
		return fail(statusf(pb.Code_ILLEGAL_INVISIBLE_TIME, "invisible duration %v is outside 0..%v", d.AsDuration(), broker.MaxInvisibility))
	}
	// An auto-renewed delivery is the client's own from here: no longer renewed.
	current, releaseHandle := v.s.handle(req.ReceiptHandle)
	defer releaseHandle()
	handle, err := v.s.Broker.ChangeInvisibility(c.instance, topic, group, current, d.AsDuration())
	if err != nil {
		return fail(ackStatus(err))
	}
	return &pb.ChangeInvisibleDurationResponse{Status: okStatus(), ReceiptHandle: handle}, nil
}

// ForwardMessageToDeadLetterQueue moves a delivery to the group's dead letters,
// for a FIFO push consumer that gave up on it locally (3.7).
func (v *service) ForwardMessageToDeadLetterQueue(ctx context.Context, req *pb.ForwardMessageToDeadLetterQueueRequest) (*pb.ForwardMessageToDeadLetterQueueResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.ForwardMessageToDeadLetterQueueResponse{Status: st}, nil
	}
	defer release()
	group, topic, st := consumerNames(c, req.GetGroup(), req.GetTopic())
	if st != nil {
		return &pb.ForwardMessageToDeadLetterQueueResponse{Status: st}, nil
	}
	current, releaseHandle := v.s.handle(req.ReceiptHandle)
	defer releaseHandle()
	if err := v.s.Broker.DeadLetterDelivery(ctx, c.instance, topic, group, current); err != nil {
		return &pb.ForwardMessageToDeadLetterQueueResponse{Status: ackStatus(err)}, nil
	}
	return &pb.ForwardMessageToDeadLetterQueueResponse{Status: okStatus()}, nil
}

// QueryAssignment tells a push consumer which queues to poll (3.7): every queue
// of an ordered topic, each its own poll, and for other topics one assignment of
// the whole topic (queue -1), as the Apache proxy assigns them. A pop takes from
// every queue either way.
func (v *service) QueryAssignment(ctx context.Context, req *pb.QueryAssignmentRequest) (*pb.QueryAssignmentResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.QueryAssignmentResponse{Status: st}, nil
	}
	defer release()
	group, topic, st := consumerNames(c, req.GetGroup(), req.GetTopic())
	if st != nil {
		return &pb.QueryAssignmentResponse{Status: st}, nil
	}
	info, st := v.s.userTopic(c, topic)
	if st != nil {
		return &pb.QueryAssignmentResponse{Status: st}, nil
	}
	if _, st := v.s.consumerGroup(c, group); st != nil {
		return &pb.QueryAssignmentResponse{Status: st}, nil
	}
	var out []*pb.Assignment
	if info.Type == broker.Ordered {
		for i := range info.Queues {
			out = append(out, &pb.Assignment{MessageQueue: v.s.messageQueue(req.Topic, int32(i), info.Type)})
		}
	} else {
		out = []*pb.Assignment{{MessageQueue: v.s.messageQueue(req.Topic, -1, info.Type)}}
	}
	return &pb.QueryAssignmentResponse{Status: okStatus(), Assignments: out}, nil
}
