package mqgrpc

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
)

// What a connection may make the server hold before a call's handler runs, and
// for how long.
//
// Every call's handler reads its request itself (memory.go serves the unary
// methods as streams for that), within the memory budgets. Before it asks, a
// stream holds at most its flow-control window (streamWindow), which the server
// sets explicitly so that grpc-go's window estimation cannot grow it. Once it
// asks, grpc-go grants the client window for the whole message as soon as its
// length prefix arrives (up to the 5 MiB maxRecvMessage). The bound on top is
// time: a call must deliver its whole request within Limits.RequestTimeout of
// opening; otherwise its context is cancelled, which ends the read, answers the
// stream and lets its buffers and its budget go. A client that opens calls and
// trickles their requests, or stops half-way, holds what it took for at most
// that long.

const (
	// DefaultRequestTimeout bounds the arrival of a call's request.
	DefaultRequestTimeout = 10 * time.Second
	// streamWindow and connWindow are the server's receive windows: what a
	// client may send ahead of the server's reads, per stream and per connection.
	streamWindow = 64 << 10
	connWindow   = 1 << 20
)

var errRequestTooSlow = errors.New("the request did not arrive whole in time")

// requestTimerKey holds the *time.Timer that cancels a call whose request is late.
type requestTimerKey struct{}

// admit runs as each call opens, on the connection's reader, before any of its
// request is read: it starts the call's request clock.
func (s *Server) admit(ctx context.Context, _ *tap.Info) (context.Context, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(s.lim.RequestTimeout, func() { cancel(errRequestTooSlow) })
	return context.WithValue(ctx, requestTimerKey{}, t), nil
}

// requestArrived stops the request clock of the call ctx belongs to.
func requestArrived(ctx context.Context) {
	if t, ok := ctx.Value(requestTimerKey{}).(*time.Timer); ok {
		t.Stop()
	}
}

// streamArrived stops the clock of a call once its first message has been read:
// a unary call's request, a receive's, a Telemetry stream's first command.
func streamArrived(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &firstMessage{ServerStream: ss})
}

type firstMessage struct {
	grpc.ServerStream
	arrived bool
}

func (f *firstMessage) RecvMsg(m any) error {
	err := f.ServerStream.RecvMsg(m)
	if !f.arrived && err == nil {
		f.arrived = true
		requestArrived(f.Context())
	}
	return err
}

// admissionOptions are the grpc-go options that carry the limits above.
func (s *Server) admissionOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InTapHandle(s.admit),
		grpc.ChainStreamInterceptor(streamArrived),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
	}
}
