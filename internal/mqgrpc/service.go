package mqgrpc

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// service implements MessagingService. Section numbers in comments are those
// of specs/rocketmq-grpc-protocol.md.
type service struct {
	pb.UnimplementedMessagingServiceServer
	s *Server
}

// begin authenticates a call and counts it against its instance's connections,
// as mq-http counts its requests: a gRPC connection carries calls of any
// instance, and long polls and Telemetry streams hold one each while they last.
func (s *Server) begin(ctx context.Context) (*call, func(), *pb.Status) {
	c := authenticated(ctx) // by the handler's wrapper, before the request was read
	var unwrapped func()
	if c == nil {
		var st *pb.Status
		if c, st = s.authenticate(ctx); st != nil {
			return nil, nil, st
		}
		c.hold = s.hold(ctx, c)
		unwrapped = c.hold.Release
	}
	release, err := s.Broker.AcquireConnection(c.instance)
	if err != nil {
		if unwrapped != nil {
			unwrapped()
		}
		return nil, nil, brokerStatus(err)
	}
	if unwrapped != nil {
		acquired := release
		release = func() { acquired(); unwrapped() }
	}
	s.clients.touch(c.instance, c.clientID, time.Now())
	return c, release, nil
}

// Settings replies (3.1.2).
var (
	// producerBackoff is the Apache proxy's producer retry policy. The Node client
	// dies on a producer reply without an exponential policy.
	producerBackoff = &pb.RetryPolicy{MaxAttempts: 3, Strategy: &pb.RetryPolicy_ExponentialBackoff{ExponentialBackoff: &pb.ExponentialBackoff{
		Initial: durationpb.New(10 * time.Millisecond), Max: durationpb.New(time.Second), Multiplier: 2}}}
)

// consumerBackoff is a consumer group's retry policy: as many attempts as the
// group delivers a message (maxRedeliveries + 1), exponential in whole seconds
// (Node reads only the seconds of these durations, 3.1.2).
func consumerBackoff(maxRedeliveries int) *pb.RetryPolicy {
	return &pb.RetryPolicy{MaxAttempts: int32(maxRedeliveries + 1), Strategy: &pb.RetryPolicy_ExponentialBackoff{ExponentialBackoff: &pb.ExponentialBackoff{
		Initial: durationpb.New(time.Second), Max: durationpb.New(60 * time.Second), Multiplier: 2}}}
}

func (v *service) QueryRoute(ctx context.Context, req *pb.QueryRouteRequest) (*pb.QueryRouteResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.QueryRouteResponse{Status: st}, nil
	}
	defer release()
	name, st := c.topic(req.GetTopic())
	if st != nil {
		return &pb.QueryRouteResponse{Status: st}, nil
	}
	info, st := v.s.userTopic(c, name)
	if st != nil {
		return &pb.QueryRouteResponse{Status: st}, nil
	}
	queues := make([]*pb.MessageQueue, info.Queues)
	for i := range queues {
		queues[i] = v.s.messageQueue(req.Topic, int32(i), info.Type)
	}
	return &pb.QueryRouteResponse{Status: okStatus(), MessageQueues: queues}, nil
}

// userTopic looks up a topic applications publish to or consume from: the
// retry and dead-letter topics are the broker's.
func (s *Server) userTopic(c *call, name string) (broker.TopicInfo, *pb.Status) {
	info, err := s.Broker.Topic(c.instance, name)
	if errors.Is(err, broker.ErrTopicNotFound) {
		// Created on first use where the Instance allows it, as a 5.x broker with
		// autoCreateTopicEnable creates it: a Normal topic with the default queue
		// count. Ordered and transactional topics are declared.
		info, err = s.Broker.AutoCreateTopic(c.instance, broker.TopicConfig{Name: name, Type: broker.Normal})
	}
	if err != nil {
		return info, brokerStatus(err)
	}
	if info.System {
		return info, statusf(pb.Code_ILLEGAL_TOPIC, "%q is a system topic", name)
	}
	return info, nil
}

// messageQueue is queue id of a topic as routes carry it (3.2): every queue
// readable and writable on the one master, because the Go client uses every queue
// for both; queue 0 exists, because Node uses only that one.
func (s *Server) messageQueue(topic *pb.Resource, id int32, typ broker.MessageType) *pb.MessageQueue {
	return &pb.MessageQueue{
		Topic: topic, Id: id, Permission: pb.Permission_READ_WRITE,
		Broker:             &pb.Broker{Name: BrokerName, Id: 0, Endpoints: s.endpoints()},
		AcceptMessageTypes: acceptedTypes(typ),
	}
}

// acceptedTypes are the message types a topic takes (issue 19): Normal takes
// normal and delay messages, Ordered FIFO, Transactional transactions.
func acceptedTypes(typ broker.MessageType) []pb.MessageType {
	switch typ {
	case broker.Ordered:
		return []pb.MessageType{pb.MessageType_FIFO}
	case broker.Transactional:
		return []pb.MessageType{pb.MessageType_TRANSACTION}
	default:
		return []pb.MessageType{pb.MessageType_NORMAL, pb.MessageType_DELAY}
	}
}

func (v *service) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.HeartbeatResponse{Status: st}, nil
	}
	defer release()
	if req.Group != nil {
		if _, st := c.group(req.Group); st != nil {
			return &pb.HeartbeatResponse{Status: st}, nil
		}
	}
	// Known once it sent Settings; the Go client sends them again on this code
	// (3.3). An empty request from a known producer is Go's recovery probe.
	if v.s.clients.get(c.instance, c.clientID) == nil {
		return &pb.HeartbeatResponse{Status: statusf(pb.Code_UNRECOGNIZED_CLIENT_TYPE, "no Settings from client %q: open a Telemetry stream first", c.clientID)}, nil
	}
	return &pb.HeartbeatResponse{Status: okStatus()}, nil
}

func (v *service) NotifyClientTermination(ctx context.Context, req *pb.NotifyClientTerminationRequest) (*pb.NotifyClientTerminationResponse, error) {
	c, release, st := v.s.begin(ctx)
	if st != nil {
		return &pb.NotifyClientTerminationResponse{Status: st}, nil
	}
	defer release()
	// Always OK: Node's shutdown throws, leaving its streams open, otherwise (3.8).
	v.s.clients.remove(c.instance, c.clientID)
	return &pb.NotifyClientTerminationResponse{Status: okStatus()}, nil
}

// Telemetry keeps the client's stream: Settings in, the merged Settings out, and
// later the server's commands (3.1). It ends when the client ends it or the
// server stops.
func (v *service) Telemetry(stream grpc.BidiStreamingServer[pb.TelemetryCommand, pb.TelemetryCommand]) error {
	ts := &telemetryStream{send: stream.Send}
	defer ts.close() // before the call returns: check-backs may be on their way
	c, release, st := v.s.begin(stream.Context())
	if st != nil {
		// A command with a status and nothing else, then the end of the stream:
		// the clients' startups, which wait for a Settings reply, fail on them
		// rather than reconnecting forever (3.1.3).
		return ts.write(&pb.TelemetryCommand{Status: st})
	}
	defer release()
	done := make(chan error, 1)
	go func() { done <- v.s.telemetry(c, stream, ts) }()
	select {
	case err := <-done:
		return err
	case <-v.s.stopping.Done():
		return nil
	}
}

func (s *Server) telemetry(c *call, stream grpc.BidiStreamingServer[pb.TelemetryCommand, pb.TelemetryCommand], ts *telemetryStream) error {
	var bound *client
	defer func() {
		if bound != nil {
			bound.stream.CompareAndSwap(ts, nil)
		}
	}()
	for {
		cmd, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // the client half-closed: complete the stream
		}
		if err != nil {
			return err
		}
		settings := cmd.GetSettings()
		if settings == nil {
			// Thread stack traces, verify results (and Node's misplaced verify
			// command) answer commands this server does not send: ignored (3.1.4).
			continue
		}
		cl, reply := s.settings(c, settings)
		if cl == nil {
			// Refused: the status alone, then the end of the stream. Node's
			// startup fails on the status; Go's (v5.1.4) on the end, and would
			// wait forever on a status it ignores (3.1.3).
			return ts.write(reply)
		}
		s.clients.put(cl, time.Now())
		if cl = s.clients.get(c.instance, c.clientID); cl != nil {
			cl.stream.Store(ts)
			bound = cl
		}
		if err := ts.write(reply); err != nil {
			return err
		}
	}
}

// settings records a client's Settings and returns the reply: the client's own,
// merged with the server's (3.1.2), or a status alone when they are refused.
func (s *Server) settings(c *call, in *pb.Settings) (*client, *pb.TelemetryCommand) {
	refuse := func(st *pb.Status) (*client, *pb.TelemetryCommand) { return nil, &pb.TelemetryCommand{Status: st} }
	out := proto.Clone(in).(*pb.Settings)
	out.Metric = &pb.Metric{On: false} // no collector: Go would dial one otherwise
	cl := &client{instance: c.instance, id: c.clientID, typ: in.GetClientType(), namespace: c.namespace}
	switch pubSub := in.PubSub.(type) {
	case *pb.Settings_Publishing:
		for _, r := range pubSub.Publishing.GetTopics() {
			// Unknown topics are no reason to refuse: Go lists every topic it ever
			// sent to, mistyped ones included (8, 25).
			name, st := c.topic(r)
			if st != nil {
				return refuse(st)
			}
			cl.topics = append(cl.topics, name)
			if cl.namespace == "" {
				cl.namespace = r.ResourceNamespace // Node sends no header
			}
		}
		out.BackoffPolicy = producerBackoff
		pub := out.GetPublishing()
		pub.MaxBodySize = broker.MaxBodySize
		pub.ValidateMessageType = true
	case *pb.Settings_Subscription:
		sub := pubSub.Subscription
		group, st := c.group(sub.GetGroup())
		if st != nil {
			return refuse(st)
		}
		info, st := s.consumerGroup(c, group)
		if st != nil {
			return refuse(st)
		}
		cl.group = group
		fifo := false
		for _, e := range sub.GetSubscriptions() {
			name, st := c.topic(e.GetTopic())
			if st != nil {
				return refuse(st)
			}
			if _, st := filterOf(e.GetExpression()); st != nil {
				return refuse(st)
			}
			cl.topics = append(cl.topics, name)
			if t, err := s.Broker.Topic(c.instance, name); err == nil && t.Type == broker.Ordered {
				fifo = true
			}
		}
		cl.longPolling = s.lim.LongPolling
		reply := out.GetSubscription()
		reply.Fifo = proto.Bool(fifo)
		reply.ReceiveBatchSize = proto.Int32(broker.MaxPopMessages)
		reply.LongPollingTimeout = durationpb.New(cl.longPolling)
		out.BackoffPolicy = consumerBackoff(info.MaxRedeliveries)
	default:
		return refuse(statusf(pb.Code_BAD_REQUEST, "the Settings name neither publishing nor subscription"))
	}
	return cl, &pb.TelemetryCommand{Status: okStatus(), Command: &pb.TelemetryCommand_Settings{Settings: out}}
}

// consumerGroup looks up a group gRPC consumers may use: one that consumes pop
// style, an HTTP group (docs/grpc.md, "Consumer groups").
func (s *Server) consumerGroup(c *call, name string) (broker.GroupInfo, *pb.Status) {
	info, err := s.Broker.Group(c.instance, name)
	if errors.Is(err, broker.ErrGroupNotFound) {
		// Created on first use where the Instance allows it, as a 5.x broker with
		// autoCreateSubscriptionGroup creates it: for pop-style consumption.
		info, err = s.Broker.AutoCreateGroup(c.instance, name, broker.HTTP)
	}
	if err != nil {
		return info, brokerStatus(err)
	}
	if info.Protocol != broker.HTTP {
		return info, statusf(pb.Code_FORBIDDEN, "consumer group %q is a %s group; gRPC consumers use HTTP groups, which consume pop style", name, info.Protocol)
	}
	return info, nil
}
