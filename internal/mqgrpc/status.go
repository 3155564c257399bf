package mqgrpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// Errors go in the response body as a Status with gRPC's own status OK, as the
// Apache proxy answers (specs/rocketmq-grpc-protocol.md 1.5): a gRPC error is a
// transport failure to the clients, and UNAVAILABLE makes the Go client drop the
// whole connection, its Telemetry stream with it.

func okStatus() *pb.Status { return &pb.Status{Code: pb.Code_OK, Message: "OK"} }

func statusf(code pb.Code, format string, args ...any) *pb.Status {
	return &pb.Status{Code: code, Message: fmt.Sprintf(format, args...)}
}

// brokerStatus maps a broker error to the protocol's code (5).
func brokerStatus(err error) *pb.Status {
	code := pb.Code_INTERNAL_SERVER_ERROR
	switch {
	case errors.Is(err, broker.ErrTopicNotFound):
		code = pb.Code_TOPIC_NOT_FOUND
	case errors.Is(err, broker.ErrGroupNotFound):
		code = pb.Code_CONSUMER_GROUP_NOT_FOUND
	case errors.Is(err, broker.ErrWrongProtocol):
		code = pb.Code_FORBIDDEN
	case errors.Is(err, broker.ErrMessageType):
		code = pb.Code_MESSAGE_PROPERTY_CONFLICT_WITH_TYPE
	case errors.Is(err, broker.ErrHandleExpired), errors.Is(err, broker.ErrInvalidHandle):
		code = pb.Code_INVALID_RECEIPT_HANDLE
	case errors.Is(err, broker.ErrInvalidArgument), errors.Is(err, broker.ErrInstanceNotFound):
		code = pb.Code_BAD_REQUEST
	case errors.Is(err, broker.ErrThrottled), errors.Is(err, broker.ErrQuotaExceeded), errors.Is(err, membudget.ErrNoMemory):
		code = pb.Code_TOO_MANY_REQUESTS
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code = pb.Code_PROXY_TIMEOUT
	case errors.Is(err, broker.ErrClosed):
		return statusf(pb.Code_INTERNAL_SERVER_ERROR, "the broker is shutting down")
	}
	return &pb.Status{Code: code, Message: err.Error()}
}

// combined is the top-level status of per-entry results: their common code, or
// MULTIPLE_RESULTS when they differ, as the Apache proxy sums them up.
func combined(entries []*pb.Status) *pb.Status {
	if len(entries) == 0 {
		return okStatus()
	}
	first := entries[0]
	for _, s := range entries[1:] {
		if s.Code != first.Code {
			return statusf(pb.Code_MULTIPLE_RESULTS, "the entries have different results")
		}
	}
	return &pb.Status{Code: first.Code, Message: first.Message}
}
