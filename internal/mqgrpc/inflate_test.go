package mqgrpc_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

func gzipped(t *testing.T, plain []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestGzipBombsInOneSendStayWithinABatch sends a thousand gzipped bodies in one
// request, each a few kilobytes that inflate to the largest body: together they
// may inflate to what one batch may hold, no further. Before this bound each
// body inflated on its own, to 4 GiB for the request. The send is refused with
// MESSAGE_BODY_TOO_LARGE, nothing is stored, and the call's memory comes back.
func TestGzipBombsInOneSendStayWithinABatch(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 1)
	e.group("GID_tcp", broker.TCP, 0)
	cl := rawClient(t, e)
	ctx, cancel := context.WithTimeout(signed(context.Background(), testAK, testSK, ""), 30*time.Second)
	defer cancel()
	bomb := gzipped(t, make([]byte, broker.MaxBodySize))
	req := &pb.SendMessageRequest{}
	for i := range 1000 {
		req.Messages = append(req.Messages, &pb.Message{Topic: &pb.Resource{Name: "normal"}, Body: bomb,
			SystemProperties: &pb.SystemProperties{MessageId: "01" + strings.Repeat("0", i%7) + string(rune('a'+i%26)),
				MessageType: pb.MessageType_NORMAL, BodyEncoding: pb.Encoding_GZIP}})
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := cl.SendMessage(ctx, req)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status.GetCode() != pb.Code_MESSAGE_BODY_TOO_LARGE {
		t.Fatalf("a send of %d gzip bombs: %v", len(req.Messages), res.Status)
	}
	// The client's request (about 4 MiB) and the bounded inflation; not gigabytes.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
		t.Fatalf("the send allocated %d MiB", alloc>>20)
	}
	if info, _ := e.broker.Topic(testInstance, "normal"); info.Messages != 0 {
		t.Fatalf("%d messages stored", info.Messages)
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.server.MemoryInUse(testInstance) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the instance's calls hold %d bytes after the send", e.server.MemoryInUse(testInstance))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Bodies that inflate within a batch's bound are stored plain.
	small := &pb.SendMessageRequest{}
	for range 3 {
		small.Messages = append(small.Messages, &pb.Message{Topic: &pb.Resource{Name: "normal"}, Body: gzipped(t, []byte(strings.Repeat("plain ", 1000))),
			SystemProperties: &pb.SystemProperties{MessageId: "02" + string(rune('a'+len(small.Messages))), MessageType: pb.MessageType_NORMAL, BodyEncoding: pb.Encoding_GZIP}})
	}
	if res, err := cl.SendMessage(ctx, small); err != nil || res.Status.GetCode() != pb.Code_OK {
		t.Fatalf("a send of three gzipped bodies: %v, %v", res.GetStatus(), err)
	}
	got, err := e.broker.Pull(ctx, testInstance, "GID_tcp", "normal", 0, 0, 8, broker.Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Messages) != 3 || string(got.Messages[0].Body) != strings.Repeat("plain ", 1000) {
		t.Fatalf("stored %d messages, the first of %d bytes", len(got.Messages), len(got.Messages[0].Body))
	}
}
