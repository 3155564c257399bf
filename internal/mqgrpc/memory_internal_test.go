package mqgrpc

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// Every method of the service can be answered with a status alone, which is how
// a call refused before its request is read is answered.
func TestEveryMethodCanBeRefused(t *testing.T) {
	var names []string
	for _, m := range pb.MessagingService_ServiceDesc.Methods {
		names = append(names, m.MethodName)
	}
	for _, s := range pb.MessagingService_ServiceDesc.Streams {
		names = append(names, s.StreamName)
	}
	for _, name := range names {
		st := statusf(pb.Code_UNAUTHORIZED, "refused")
		m := refusal(name)(st)
		got := m.ProtoReflect().Get(m.ProtoReflect().Descriptor().Fields().ByName("status")).Message().Interface()
		if !proto.Equal(got, st) {
			t.Errorf("%s: the refusal carries %v", name, got)
		}
	}
}
