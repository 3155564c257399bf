package mqgrpc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// What calls in progress may make the server hold: their requests being read and
// decoded, and the records their receives read, like mq-http's bodies and answers
// (membudget.Shares, the same defaults).
//
// Each method's handler is wrapped (budgetedService): the call is authenticated
// from its metadata alone, which is all the signature covers, and its request is
// read only once the instance's and the server's budgets have given it the
// largest request (maxRecvMessage). A call that is not signed right is answered
// without its request being read at all. Once decoded, the request holds what
// its message takes, until the handler returns; a receive's records are taken
// from the same hold as the broker reads them. Before its handler asks for it, a
// request holds at most the stream's window (admission.go).
//
// A Telemetry stream's first command is read the same way. Its later commands
// (settings updates, answers to the server's commands) are read as they come,
// one at a time a stream, outside the budgets: a stream that waited for a
// command holding the largest request would hold it for the stream's life, and
// grpc-go has no hook between a message's length and its body. docs/grpc.md
// gives the bound that leaves.
const (
	DefaultMemory         = membudget.DefaultServerBytes
	DefaultInstanceMemory = membudget.DefaultTenantBytes
)

// callKey holds the *call a wrapped handler authenticated, for begin.
type callKey struct{}

// authenticated returns the call the wrapper authenticated ctx's for, or nil.
func authenticated(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// budgetedService is the service's description with every handler wrapped: it
// authenticates, then reads requests within the instance's and the server's
// memory budgets.
//
// grpc-go reads a unary call's request whole before its handler runs, so the
// unary methods are served as streams of one message each way, which on the wire
// they are: the handler then reads the request itself, once the budgets allow.
func (s *Server) budgetedService() *grpc.ServiceDesc {
	d := pb.MessagingService_ServiceDesc
	d.Streams = nil
	for _, m := range pb.MessagingService_ServiceDesc.Methods {
		handler := m.Handler
		d.Streams = append(d.Streams, grpc.StreamDesc{StreamName: m.MethodName, Handler: s.budgeted(m.MethodName,
			func(srv any, stream grpc.ServerStream, ctx context.Context, hold *membudget.Hold) error {
				resp, err := handler(srv, ctx, func(req any) error { return s.decode(ctx, hold, stream.RecvMsg, req) }, nil)
				if err != nil {
					return err
				}
				return stream.SendMsg(resp)
			})})
	}
	d.Methods = nil
	for _, sd := range pb.MessagingService_ServiceDesc.Streams {
		handler := sd.Handler
		sd.Handler = s.budgeted(sd.StreamName, func(srv any, stream grpc.ServerStream, ctx context.Context, hold *membudget.Hold) error {
			ctx = broker.WithReadBudget(ctx, hold)
			return handler(srv, &budgetedStream{ServerStream: stream, ctx: ctx, s: s, hold: hold})
		})
		d.Streams = append(d.Streams, sd)
	}
	return &d
}

// budgeted is the handler of method: it authenticates the call from its
// metadata, answers a call not signed right with the method's refusal, and serves
// the rest with serve, given the call's context (which carries the call, for
// begin) and what it holds of the memory budgets, released when it returns.
func (s *Server) budgeted(method string, serve func(srv any, stream grpc.ServerStream, ctx context.Context, hold *membudget.Hold) error) grpc.StreamHandler {
	refuse := refusal(method)
	return func(srv any, stream grpc.ServerStream) error {
		ctx := stream.Context()
		c, st := s.authenticate(ctx)
		if st != nil {
			return stream.SendMsg(refuse(st))
		}
		hold := s.hold(ctx, c)
		defer hold.Release()
		c.hold = hold
		return serve(srv, stream, context.WithValue(ctx, callKey{}, c), hold)
	}
}

// hold starts what a call of c holds: it waits for memory as long as its request
// may take to arrive.
func (s *Server) hold(ctx context.Context, c *call) *membudget.Hold {
	h := s.memory.Hold(c.instance, time.Now().Add(s.lim.RequestTimeout), ctx.Done())
	h.Refused = func() { s.Broker.NoteThrottled(c.instance) }
	return h
}

// decode reads and decodes a request into req within hold: the largest request
// while it is read, then what the decoded message takes.
func (s *Server) decode(ctx context.Context, hold *membudget.Hold, dec func(any) error, req any) error {
	if err := hold.Take(ctx, maxRecvMessage); err != nil {
		return noMemory(err)
	}
	err := dec(req)
	size := 0
	if m, ok := req.(proto.Message); ok && err == nil {
		size = proto.Size(m)
	}
	hold.Give(maxRecvMessage - min(size, maxRecvMessage))
	return err
}

// noMemory is the error of a call that got no memory in time: RESOURCE_EXHAUSTED,
// which grpc-go itself gives a request past its size bound. There is no response
// to carry a status in: the request could not be read.
func noMemory(err error) error {
	if errors.Is(err, membudget.ErrNoMemory) {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.FromContextError(err).Err()
}

// budgetedStream reads a streaming call's first message within its hold, which
// the call's reads take from as well (broker.WithReadBudget).
type budgetedStream struct {
	grpc.ServerStream
	ctx  context.Context
	s    *Server
	hold *membudget.Hold
	read bool
}

func (b *budgetedStream) Context() context.Context { return b.ctx }

func (b *budgetedStream) RecvMsg(m any) error {
	if b.read {
		return b.ServerStream.RecvMsg(m)
	}
	b.read = true
	return b.s.decode(b.ctx, b.hold, b.ServerStream.RecvMsg, m)
}

// refusal returns, for the method named, its response carrying only a status: the
// answer to a call refused before its request is read. Every response of the
// service has a status as its field "status" (a oneof member in
// ReceiveMessageResponse), which TestEveryMethodCanBeRefused checks.
func refusal(method string) func(*pb.Status) proto.Message {
	md := pb.File_apache_rocketmq_v2_service_proto.Services().ByName("MessagingService").Methods().ByName(protoreflect.Name(method))
	if md == nil {
		panic(fmt.Sprintf("mqgrpc: no method %s in the service's descriptor", method))
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		panic(fmt.Sprintf("mqgrpc: %s's response: %v", method, err))
	}
	field := mt.Descriptor().Fields().ByName("status")
	if field == nil || field.Message() == nil || field.Message().FullName() != (&pb.Status{}).ProtoReflect().Descriptor().FullName() {
		panic(fmt.Sprintf("mqgrpc: %s's response has no status", method))
	}
	return func(st *pb.Status) proto.Message {
		m := mt.New()
		m.Set(field, protoreflect.ValueOfMessage(st.ProtoReflect()))
		return m.Interface()
	}
}

// MemoryInUse returns the bytes the calls of an instance hold, or with "" the
// bytes all calls hold.
func (s *Server) MemoryInUse(instance string) int {
	if s.memory == nil {
		return 0 // not serving yet
	}
	if instance == "" {
		return s.memory.All().InUse()
	}
	return s.memory.Tenant(instance).InUse()
}
