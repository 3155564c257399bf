package mqgrpc_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// A call whose request does not arrive whole in time is answered and let go,
// whatever it announced: a client that opens sends and trickles them, or stops
// half-way through a large message, cannot make the server hold what it sent.
// Calls that deliver their requests are untouched, however long they then run.
func TestACallWhoseRequestIsLateIsCut(t *testing.T) {
	e := newEnvWith(t, func(s *mqgrpc.Server) {
		s.TLS = nil // plain text, to speak HTTP/2 frames by hand
		s.Limits.RequestTimeout = time.Second
	})
	conn, err := net.Dial("tcp", e.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", pb.MessagingService_SendMessage_FullMethodName},
		{":authority", e.endpoint}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	// A message announced as 4 MiB, of which 32 KiB are sent.
	msg := make([]byte, 5+32<<10)
	binary.BigEndian.PutUint32(msg[1:5], 4<<20)
	for len(msg) > 0 { // in frames of at most 16 KiB, HTTP/2's default
		n := min(len(msg), 16<<10)
		if err := fr.WriteData(1, false, msg[:n]); err != nil {
			t.Fatal(err)
		}
		msg = msg[n:]
	}
	opened := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no answer to the stalled call within 10 s: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
			continue
		case *http2.RSTStreamFrame:
			if f.StreamID != 1 {
				continue
			}
		case *http2.HeadersFrame:
			if f.StreamID != 1 {
				continue
			}
			fields, _ := dec.DecodeFull(f.HeaderBlockFragment())
			status := ""
			for _, hf := range fields {
				if hf.Name == "grpc-status" {
					status = hf.Value
				}
			}
			if status == "" && !f.StreamEnded() {
				continue // the response headers; the status comes in the trailers
			}
			if status == "0" || status == "" {
				t.Fatalf("the stalled call ended with status %q", status)
			}
		default:
			continue
		}
		break
	}
	if held := time.Since(opened); held < 900*time.Millisecond || held > 5*time.Second {
		t.Fatalf("the stalled call was cut after %v, want about the 1 s request timeout", held)
	}

	// A long poll that delivered its request outlives the request timeout.
	tls := newEnvWith(t, func(s *mqgrpc.Server) { s.Limits.RequestTimeout = time.Second })
	tls.topic("normal", broker.Normal, 1)
	tls.group("GID_poll", broker.HTTP, 0)
	c := tls.consumer("GID_poll", 3*time.Second, "normal")
	start := time.Now()
	if _, err := c.Receive(t.Context(), 1, 20*time.Second); !isCode(err, 40401) {
		t.Fatalf("an empty long poll: %v", err)
	}
	if waited := time.Since(start); waited < 2*time.Second {
		t.Fatalf("the long poll returned after %v: cut by the request timeout?", waited)
	}
}
