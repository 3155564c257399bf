package mqgrpc

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// The pull, offset, lite and recall calls of the newer protos are not served.
// They answer NOT_IMPLEMENTED in the body, as every other refusal, rather than
// gRPC's UNIMPLEMENTED, which the clients take for a broken transport (7, 2).

func notImplemented(what string) *pb.Status {
	return statusf(pb.Code_NOT_IMPLEMENTED, "%s is not supported by this endpoint", what)
}

func (v *service) PullMessage(_ *pb.PullMessageRequest, stream grpc.ServerStreamingServer[pb.PullMessageResponse]) error {
	return stream.Send(&pb.PullMessageResponse{Content: &pb.PullMessageResponse_Status{Status: notImplemented("PullMessage")}})
}

func (v *service) UpdateOffset(context.Context, *pb.UpdateOffsetRequest) (*pb.UpdateOffsetResponse, error) {
	return &pb.UpdateOffsetResponse{Status: notImplemented("UpdateOffset")}, nil
}

func (v *service) GetOffset(context.Context, *pb.GetOffsetRequest) (*pb.GetOffsetResponse, error) {
	return &pb.GetOffsetResponse{Status: notImplemented("GetOffset")}, nil
}

func (v *service) QueryOffset(context.Context, *pb.QueryOffsetRequest) (*pb.QueryOffsetResponse, error) {
	return &pb.QueryOffsetResponse{Status: notImplemented("QueryOffset")}, nil
}

func (v *service) RecallMessage(context.Context, *pb.RecallMessageRequest) (*pb.RecallMessageResponse, error) {
	return &pb.RecallMessageResponse{Status: notImplemented("RecallMessage")}, nil
}

func (v *service) SyncLiteSubscription(context.Context, *pb.SyncLiteSubscriptionRequest) (*pb.SyncLiteSubscriptionResponse, error) {
	return &pb.SyncLiteSubscriptionResponse{Status: notImplemented("SyncLiteSubscription")}, nil
}
