package mqgrpc

import (
	"context"
	"errors"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// SendMessage stores the request's messages, all of one topic, atomically (3.4).
// The clients send one message a call.
func (v *service) SendMessage(ctx context.Context, req *pb.SendMessageRequest) (*pb.SendMessageResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.SendMessageResponse{Status: st}, nil
	}
	defer release()
	entries, st := v.s.send(ctx, c, req.GetMessages())
	if st != nil {
		return &pb.SendMessageResponse{Status: st}, nil
	}
	statuses := make([]*pb.Status, len(entries))
	for i, e := range entries {
		statuses[i] = e.Status
	}
	return &pb.SendMessageResponse{Status: combined(statuses), Entries: entries}, nil
}

func (s *Server) send(ctx context.Context, c *call, msgs []*pb.Message) ([]*pb.SendResultEntry, *pb.Status) {
	if len(msgs) == 0 {
		return nil, statusf(pb.Code_MESSAGE_CORRUPTED, "the request carries no message")
	}
	if len(msgs) > broker.MaxBatchMessages {
		return nil, statusf(pb.Code_MESSAGE_CORRUPTED, "%d messages in one request; at most %d", len(msgs), broker.MaxBatchMessages)
	}
	topic, st := c.topic(msgs[0].GetTopic())
	if st != nil {
		return nil, st
	}
	for _, m := range msgs[1:] {
		if m.GetTopic().GetName() != topic {
			return nil, statusf(pb.Code_MESSAGE_CORRUPTED, "the messages of one request go to one topic")
		}
	}
	info, st := s.userTopic(c, topic)
	if st != nil {
		return nil, st
	}
	now := time.Now()
	out := make([]broker.Message, len(msgs))
	inf := &inflation{left: broker.MaxBatchBytes, budget: holdBudget{ctx, c.hold}}
	for i, m := range msgs {
		if out[i], st = fromWire(m, topic, info.Type, now, inf); st != nil {
			return nil, st
		}
	}
	var results []broker.PublishResult
	var err error
	ctx = broker.WithWire(ctx, broker.WireGRPC)
	if len(out) == 1 {
		var r broker.PublishResult
		r, err = s.Broker.Publish(ctx, c.instance, topic, out[0])
		results = []broker.PublishResult{r}
	} else {
		results, err = s.Broker.PublishBatch(ctx, c.instance, topic, out)
	}
	if err != nil {
		return nil, brokerStatus(err)
	}
	entries := make([]*pb.SendResultEntry, len(results))
	for i, r := range results {
		entries[i] = &pb.SendResultEntry{
			Status:        okStatus(),
			MessageId:     msgs[i].SystemProperties.MessageId,
			TransactionId: r.TxnHandle,
			// A timer or half message has no queue offset until it is delivered.
			Offset: max(r.Offset, 0),
		}
	}
	return entries, nil
}

// holdBudget is a call's hold as the memory its bodies inflate in.
type holdBudget struct {
	ctx  context.Context
	hold *membudget.Hold
}

// Take holds nothing when it fails: a Hold that took the bytes but found its
// context ended gives them back here, as compression.Budget asks.
func (b holdBudget) Take(n int) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	err := b.hold.Take(b.ctx, n)
	if err != nil && !errors.Is(err, membudget.ErrNoMemory) {
		b.hold.Give(n)
	}
	return err
}

func (b holdBudget) Give(n int) { b.hold.Give(n) }

// EndTransaction commits or rolls back a half message by the transaction id its
// send returned (3.5): the broker's transaction handle.
func (v *service) EndTransaction(ctx context.Context, req *pb.EndTransactionRequest) (*pb.EndTransactionResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.EndTransactionResponse{Status: st}, nil
	}
	defer release()
	topic, st := c.topic(req.GetTopic())
	if st != nil {
		return &pb.EndTransactionResponse{Status: st}, nil
	}
	if req.TransactionId == "" {
		return &pb.EndTransactionResponse{Status: statusf(pb.Code_INVALID_TRANSACTION_ID, "the request carries no transaction id")}, nil
	}
	var commit bool
	switch req.Resolution {
	case pb.TransactionResolution_COMMIT:
		commit = true
	case pb.TransactionResolution_ROLLBACK:
	default:
		// Still unknown (the Go client's answer to a check for UNKNOWN): the
		// half message waits for its next check-back.
		return &pb.EndTransactionResponse{Status: okStatus()}, nil
	}
	err := v.s.Broker.EndTransaction(c.instance, topic, req.TransactionId, commit)
	switch {
	case err == nil:
		return &pb.EndTransactionResponse{Status: okStatus()}, nil
	case errors.Is(err, broker.ErrHandleExpired), errors.Is(err, broker.ErrInvalidHandle):
		return &pb.EndTransactionResponse{Status: statusf(pb.Code_INVALID_TRANSACTION_ID,
			"transaction %q of message %s is unknown, resolved already, or past its check-back: %v", req.TransactionId, req.MessageId, err)}, nil
	default:
		return &pb.EndTransactionResponse{Status: brokerStatus(err)}, nil
	}
}
