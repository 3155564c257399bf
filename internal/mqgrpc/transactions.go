package mqgrpc

import (
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// maxChecksPerPush bounds the check-backs one push sends a producer.
const maxChecksPerPush = 64

// sendCheckBacks pushes due transaction check-backs on the Telemetry streams of
// live producers (3.5): the broker's half messages of a topic whose producer
// group is the topic (how SendMessage stores them), each to a producer that
// listed the topic in its Settings. The broker decides when a check is due and
// when an unresolved one is rolled back, as for the other protocols; a check that
// no producer takes stays due until one connects.
func (s *Server) sendCheckBacks() {
	for k, p := range s.clients.producers() {
		info, err := s.Broker.Topic(k.instance, k.id)
		if err != nil || info.Type != broker.Transactional {
			continue
		}
		ts := p.stream.Load()
		if ts == nil || !ts.busy.CompareAndSwap(false, true) {
			continue
		}
		due, err := s.Broker.TakeTransactionChecks(k.instance, k.id, maxChecksPerPush)
		if err != nil || len(due) == 0 {
			ts.busy.Store(false)
			continue
		}
		topic := &pb.Resource{ResourceNamespace: p.namespace, Name: k.id}
		go func() {
			defer ts.busy.Store(false)
			now := time.Now()
			for i := range due {
				m := &s.toWire(topic, &due[i], now).msg
				// The message as a consumer would see it, with every system
				// property: Go panics on a message without them, Node drops one
				// without a body digest. Its handle is the transaction's.
				m.SystemProperties.ReceiptHandle = nil
				m.SystemProperties.InvisibleDuration = nil
				cmd := &pb.TelemetryCommand{Command: &pb.TelemetryCommand_RecoverOrphanedTransactionCommand{
					RecoverOrphanedTransactionCommand: &pb.RecoverOrphanedTransactionCommand{Message: m, TransactionId: due[i].Handle}}}
				if err := ts.write(cmd); err != nil {
					s.Log.V(1).Info("Dropping check-backs: the producer's Telemetry stream is gone", "client", p.id, "reason", err.Error())
					return // the broker checks again later
				}
			}
		}()
	}
}
