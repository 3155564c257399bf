package mqgrpc_test

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	"github.com/orderly-dev/orderly/internal/wiretls"

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
	return metadata.NewOutgoingContext(ctx, mqgrpc.SignedMetadata(ak, sk, namespace, "test@1@0@raw", time.Now()))
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

func TestCallsOfTheProtocolBesidesTheGoClients(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 2)
	e.topic("ordered", broker.Ordered, 3)
	e.group("GID_raw", broker.HTTP, 0)
	e.group("GID_tcp", broker.TCP, 0)
	cl := rawClient(t, e)
	ctx, cancel := context.WithTimeout(signed(context.Background(), testAK, testSK, ""), 10*time.Second)
	defer cancel()
	ns := func(name string) *pb.Resource { return &pb.Resource{Name: name} }

	// Routes: every queue read-write, on the advertised endpoint; types by topic.
	route, err := cl.QueryRoute(ctx, &pb.QueryRouteRequest{Topic: ns("ordered")})
	if err != nil || route.Status.Code != pb.Code_OK || len(route.MessageQueues) != 3 {
		t.Fatalf("QueryRoute = %v, %v", route, err)
	}
	for i, q := range route.MessageQueues {
		a := q.Broker.Endpoints.Addresses[0]
		if q.Id != int32(i) || q.Permission != pb.Permission_READ_WRITE || q.Topic.Name != "ordered" ||
			fmt.Sprintf("%s:%d", a.Host, a.Port) != e.endpoint || q.AcceptMessageTypes[0] != pb.MessageType_FIFO {
			t.Fatalf("queue %d: %v", i, q)
		}
	}
	// Heartbeat before Settings: unknown; NotifyClientTermination: always OK.
	if hb, err := cl.Heartbeat(ctx, &pb.HeartbeatRequest{ClientType: pb.ClientType_PRODUCER}); err != nil || hb.Status.Code != pb.Code_UNRECOGNIZED_CLIENT_TYPE {
		t.Fatalf("Heartbeat = %v, %v", hb, err)
	}
	// Telemetry: a consumer's Settings come back merged.
	stream, err := cl.Telemetry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ct := pb.ClientType_PUSH_CONSUMER
	if err := stream.Send(&pb.TelemetryCommand{Command: &pb.TelemetryCommand_Settings{Settings: &pb.Settings{ClientType: &ct,
		PubSub: &pb.Settings_Subscription{Subscription: &pb.Subscription{Group: ns("GID_raw"),
			Subscriptions: []*pb.SubscriptionEntry{{Topic: ns("ordered"), Expression: &pb.FilterExpression{Type: pb.FilterType_TAG, Expression: "*"}}}}}}}}); err != nil {
		t.Fatal(err)
	}
	reply, err := stream.Recv()
	if err != nil || reply.Status.GetCode() != pb.Code_OK {
		t.Fatalf("Settings reply %v, %v", reply, err)
	}
	sub := reply.GetSettings().GetSubscription()
	if !sub.GetFifo() || sub.GetReceiveBatchSize() <= 0 || sub.GetLongPollingTimeout().AsDuration() != 20*time.Second ||
		reply.GetSettings().GetBackoffPolicy().GetMaxAttempts() != broker.DefaultMaxRedeliveries+1 ||
		reply.GetSettings().GetBackoffPolicy().GetExponentialBackoff() == nil || reply.GetSettings().GetMetric().GetOn() {
		t.Fatalf("Settings reply %v", reply.GetSettings())
	}
	if hb, err := cl.Heartbeat(ctx, &pb.HeartbeatRequest{ClientType: ct, Group: ns("GID_raw")}); err != nil || hb.Status.Code != pb.Code_OK {
		t.Fatalf("Heartbeat after Settings = %v, %v", hb, err)
	}
	// A TCP group is refused to gRPC consumers: a status, then the end.
	stream2, _ := cl.Telemetry(ctx)
	_ = stream2.Send(&pb.TelemetryCommand{Command: &pb.TelemetryCommand_Settings{Settings: &pb.Settings{ClientType: &ct,
		PubSub: &pb.Settings_Subscription{Subscription: &pb.Subscription{Group: ns("GID_tcp")}}}}})
	if r, err := stream2.Recv(); err != nil || r.Status.GetCode() != pb.Code_FORBIDDEN || r.Command != nil {
		t.Fatalf("Settings of a TCP group: %v, %v", r, err)
	}
	if _, err := stream2.Recv(); err == nil {
		t.Fatal("the refused stream goes on")
	}
	// Assignments: each queue of an ordered topic, the whole of another.
	as, err := cl.QueryAssignment(ctx, &pb.QueryAssignmentRequest{Topic: ns("ordered"), Group: ns("GID_raw")})
	if err != nil || as.Status.Code != pb.Code_OK || len(as.Assignments) != 3 {
		t.Fatalf("QueryAssignment = %v, %v", as, err)
	}
	as, err = cl.QueryAssignment(ctx, &pb.QueryAssignmentRequest{Topic: ns("normal"), Group: ns("GID_raw")})
	if err != nil || len(as.Assignments) != 1 || as.Assignments[0].MessageQueue.Id != -1 {
		t.Fatalf("QueryAssignment = %v, %v", as, err)
	}

	// A receive's stream: a status, the messages, the delivery time; then a
	// message forwarded to the dead letters by its consumer.
	if _, err := e.broker.Publish(context.Background(), testInstance, "normal", broker.Message{Body: []byte("given up"), Queue: broker.AnyQueue}); err != nil {
		t.Fatal(err)
	}
	normal, err := cl.QueryRoute(ctx, &pb.QueryRouteRequest{Topic: ns("normal")})
	if err != nil || len(normal.MessageQueues) != 2 || len(normal.MessageQueues[0].AcceptMessageTypes) != 2 {
		t.Fatalf("QueryRoute = %v, %v", normal, err)
	}
	rs, err := cl.ReceiveMessage(ctx, &pb.ReceiveMessageRequest{Group: ns("GID_raw"), MessageQueue: normal.MessageQueues[1], BatchSize: 4,
		InvisibleDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	var frames []*pb.ReceiveMessageResponse
	for {
		f, err := rs.Recv()
		if err != nil {
			break
		}
		frames = append(frames, f)
	}
	if len(frames) != 3 || frames[0].GetStatus().GetCode() != pb.Code_OK || frames[2].GetDeliveryTimestamp() == nil {
		t.Fatalf("receive frames %v", frames)
	}
	m := frames[1].GetMessage()
	sp := m.GetSystemProperties()
	if string(m.Body) != "given up" || sp.GetReceiptHandle() == "" || sp.GetDeliveryAttempt() != 1 || sp.GetBodyDigest().GetType() != pb.DigestType_MD5 ||
		sp.GetBodyDigest().GetChecksum() != fmt.Sprintf("%X", md5.Sum(m.Body)) || sp.GetMessageId() == "" || sp.GetBornTimestamp() == nil {
		t.Fatalf("message %v", m)
	}
	fwd := &pb.ForwardMessageToDeadLetterQueueRequest{Group: ns("GID_raw"), Topic: ns("normal"), ReceiptHandle: sp.GetReceiptHandle(),
		MessageId: sp.GetMessageId(), DeliveryAttempt: 1, MaxDeliveryAttempts: 1}
	if r, err := cl.ForwardMessageToDeadLetterQueue(ctx, fwd); err != nil || r.Status.Code != pb.Code_OK {
		t.Fatalf("ForwardMessageToDeadLetterQueue = %v, %v", r, err)
	}
	if r, err := cl.ForwardMessageToDeadLetterQueue(ctx, fwd); err != nil || r.Status.Code != pb.Code_INVALID_RECEIPT_HANDLE {
		t.Fatalf("second ForwardMessageToDeadLetterQueue = %v, %v", r, err)
	}
	if dead, _, err := e.broker.DeadLetters(testInstance, "GID_raw", 0, 16); err != nil || len(dead) != 1 {
		t.Fatalf("dead letters %v, %v", dead, err)
	}
	// An empty receive waits, within the call's deadline, then says so.
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	start := time.Now()
	rs, err = cl.ReceiveMessage(short, &pb.ReceiveMessageRequest{Group: ns("GID_raw"), MessageQueue: normal.MessageQueues[0], BatchSize: 4,
		InvisibleDuration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := rs.Recv(); err != nil || f.GetStatus().GetCode() != pb.Code_MESSAGE_NOT_FOUND {
		t.Fatalf("empty receive: %v, %v", f, err)
	}
	if held := time.Since(start); held < time.Second || held > 3*time.Second {
		t.Fatalf("an empty receive with a 3 s deadline was held %v", held)
	}
	if r, err := cl.GetOffset(ctx, &pb.GetOffsetRequest{}); err != nil || r.Status.Code != pb.Code_NOT_IMPLEMENTED {
		t.Fatalf("GetOffset = %v, %v", r, err)
	}
	if nc, err := cl.NotifyClientTermination(ctx, &pb.NotifyClientTerminationRequest{Group: ns("GID_raw")}); err != nil || nc.Status.Code != pb.Code_OK {
		t.Fatalf("NotifyClientTermination = %v, %v", nc, err)
	}
}

func TestTLSAndPlainTextOnOnePort(t *testing.T) {
	e := newEnvWith(t, func(s *mqgrpc.Server) { s.PlainText = wiretls.Loopback })
	e.topic("normal", broker.Normal, 1)
	// TLS, with ALPN h2 negotiated: grpc-go refuses a TLS server without it.
	conn, err := tls.Dial("tcp", e.endpoint, &tls.Config{RootCAs: clientTLS.RootCAs, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN %q, want h2", p)
	}
	_ = conn.Close()
	if st := rawQueryRoute(t, e, signed(context.Background(), testAK, testSK, testInstance)); st.Code != pb.Code_OK {
		t.Fatalf("over TLS: %v", st)
	}
	// Plain text (h2c), as the Node client dials by default.
	plain, err := grpc.NewClient(e.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx, cancel := context.WithTimeout(signed(context.Background(), testAK, testSK, ""), 5*time.Second)
	defer cancel()
	res, err := pb.NewMessagingServiceClient(plain).QueryRoute(ctx, &pb.QueryRouteRequest{Topic: &pb.Resource{Name: "normal"}})
	if err != nil || res.Status.Code != pb.Code_OK || len(res.MessageQueues) != 1 {
		t.Fatalf("over plain text: %v, %v", res, err)
	}
}

func TestAutoRenewedDeliveryStaysInvisibleUntilAcked(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 1)
	e.group("GID_renew", broker.HTTP, 0)
	cl := rawClient(t, e)
	ctx, cancel := context.WithTimeout(signed(context.Background(), testAK, testSK, ""), 30*time.Second)
	defer cancel()
	ns := func(name string) *pb.Resource { return &pb.Resource{Name: name} }
	// Renewal is for live clients: this one sends its Settings.
	stream, err := cl.Telemetry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ct := pb.ClientType_PUSH_CONSUMER
	_ = stream.Send(&pb.TelemetryCommand{Command: &pb.TelemetryCommand_Settings{Settings: &pb.Settings{ClientType: &ct,
		PubSub: &pb.Settings_Subscription{Subscription: &pb.Subscription{Group: ns("GID_renew"),
			Subscriptions: []*pb.SubscriptionEntry{{Topic: ns("normal")}}}}}}})
	if r, err := stream.Recv(); err != nil || r.Status.GetCode() != pb.Code_OK {
		t.Fatalf("Settings: %v, %v", r, err)
	}
	if _, err := e.broker.Publish(context.Background(), testInstance, "normal", broker.Message{Body: []byte("slow"), Queue: broker.AnyQueue}); err != nil {
		t.Fatal(err)
	}
	recv := func(autoRenew bool, inv time.Duration) []*pb.Message {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		rs, err := cl.ReceiveMessage(short, &pb.ReceiveMessageRequest{Group: ns("GID_renew"), MessageQueue: &pb.MessageQueue{Topic: ns("normal")},
			BatchSize: 1, AutoRenew: autoRenew, InvisibleDuration: durationpb.New(inv)})
		if err != nil {
			t.Fatal(err)
		}
		var out []*pb.Message
		for {
			f, err := rs.Recv()
			if err != nil {
				return out
			}
			if m := f.GetMessage(); m != nil {
				out = append(out, m)
			}
		}
	}
	got := recv(true, 4*time.Second)
	if len(got) != 1 {
		t.Fatalf("received %d", len(got))
	}
	// Twice its invisibility later, it is still in flight, renewed.
	time.Sleep(8 * time.Second)
	if again := recv(false, 10*time.Second); len(again) != 0 {
		t.Fatalf("an auto-renewed delivery came again: %v", again)
	}
	// And the handle the client got still acknowledges it.
	ack, err := cl.AckMessage(ctx, &pb.AckMessageRequest{Group: ns("GID_renew"), Topic: ns("normal"),
		Entries: []*pb.AckMessageEntry{{MessageId: got[0].SystemProperties.MessageId, ReceiptHandle: got[0].SystemProperties.GetReceiptHandle()}}})
	if err != nil || ack.Status.Code != pb.Code_OK {
		t.Fatalf("ack with the first handle: %v, %v", ack, err)
	}
}

func TestSilentClientsExpire(t *testing.T) {
	e := newEnvWith(t, func(s *mqgrpc.Server) { s.Limits.ClientExpiry = 2 * time.Second })
	e.topic("normal", broker.Normal, 1)
	cl := rawClient(t, e)
	ctx, cancel := context.WithTimeout(signed(context.Background(), testAK, testSK, ""), 20*time.Second)
	defer cancel()
	stream, err := cl.Telemetry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ct := pb.ClientType_PRODUCER
	_ = stream.Send(&pb.TelemetryCommand{Command: &pb.TelemetryCommand_Settings{Settings: &pb.Settings{ClientType: &ct,
		PubSub: &pb.Settings_Publishing{Publishing: &pb.Publishing{Topics: []*pb.Resource{{Name: "normal"}, {Name: "mistyped"}}}}}}})
	r, err := stream.Recv()
	if err != nil || r.Status.GetCode() != pb.Code_OK || r.GetSettings().GetPublishing().GetMaxBodySize() != broker.MaxBodySize ||
		!r.GetSettings().GetPublishing().GetValidateMessageType() || r.GetSettings().GetBackoffPolicy().GetExponentialBackoff() == nil {
		t.Fatalf("producer Settings reply %v, %v", r, err)
	}
	heartbeat := func() pb.Code {
		hb, err := cl.Heartbeat(ctx, &pb.HeartbeatRequest{ClientType: ct})
		if err != nil {
			t.Fatal(err)
		}
		return hb.Status.Code
	}
	for range 3 { // heartbeats keep it
		if c := heartbeat(); c != pb.Code_OK {
			t.Fatalf("heartbeat: %v", c)
		}
		time.Sleep(time.Second)
	}
	time.Sleep(4 * time.Second)
	if c := heartbeat(); c != pb.Code_UNRECOGNIZED_CLIENT_TYPE {
		t.Fatalf("heartbeat after 4 s of silence: %v", c)
	}
}
