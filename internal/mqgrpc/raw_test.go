package mqgrpc_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// rawClient dials the endpoint with the generated stubs, over TLS, for what the
// Go client cannot be made to send.
func rawClient(t *testing.T, e *env) pb.MessagingServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(e.endpoint, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS.Clone())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pb.NewMessagingServiceClient(conn)
}

// signed is ctx with the metadata of a client call, signed with ak and sk in the
// Node form (plain AccessKey, upper-case hex) unless sk is empty.
func signed(ctx context.Context, ak, sk, namespace string) context.Context {
	dt := time.Now().UTC().Format("20060102T150405Z")
	kv := []string{"x-mq-client-id", "test@1@0@raw", "x-mq-date-time", dt, "x-mq-language", "HTTP", "x-mq-protocol", "v2"}
	if namespace != "" {
		kv = append(kv, "x-mq-namespace", namespace)
	}
	if sk != "" {
		mac := hmac.New(sha1.New, []byte(sk))
		mac.Write([]byte(dt))
		kv = append(kv, "authorization", fmt.Sprintf("MQv2-HMAC-SHA1 Credential=%s, SignedHeaders=x-mq-date-time, Signature=%X", ak, mac.Sum(nil)))
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// rawQueryRoute asks for the route of "normal" with md, nil for unsigned.
func rawQueryRoute(t *testing.T, e *env, md context.Context) *pb.Status {
	t.Helper()
	ctx := md
	if ctx == nil {
		ctx = signed(context.Background(), "", "", "")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := rawClient(t, e).QueryRoute(ctx, &pb.QueryRouteRequest{Topic: &pb.Resource{Name: "normal"}})
	if err != nil {
		t.Fatalf("QueryRoute: %v", err)
	}
	return res.Status
}
