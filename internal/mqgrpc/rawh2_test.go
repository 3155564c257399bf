package mqgrpc_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/metadata"

	"github.com/orderly-dev/orderly/internal/mqgrpc"
)

// rawH2 is an HTTP/2 connection to the plain-text endpoint driven frame by
// frame, for clients that misbehave below what grpc-go's own client lets one do:
// calls whose requests stop half-way.
type rawH2 struct {
	conn net.Conn
	fr   *http2.Framer
	hdr  bytes.Buffer
	enc  *hpack.Encoder
	dec  *hpack.Decoder
	// ended holds the grpc-status (or "reset") of each stream that ended.
	ended map[uint32]string
}

func dialRaw(t *testing.T, addr string) *rawH2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := &rawH2{conn: conn, fr: http2.NewFramer(conn, conn), dec: hpack.NewDecoder(4096, nil), ended: map[uint32]string{}}
	c.enc = hpack.NewEncoder(&c.hdr)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// signedMD is a call's metadata signed with the test instance's key.
func signedMD() metadata.MD {
	return mqgrpc.SignedMetadata(testAK, testSK, testInstance, "raw@1@0@raw", time.Now())
}

// open starts call id of method with md and sends the first send bytes of a
// message whose length prefix announces announced bytes, in frames of at most
// 16 KiB, HTTP/2's default; the stream stays open.
func (c *rawH2) open(id uint32, method string, md metadata.MD, announced uint32, send int) {
	c.hdr.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "orderly"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for k, vs := range md {
		for _, v := range vs {
			_ = c.enc.WriteField(hpack.HeaderField{Name: k, Value: v})
		}
	}
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hdr.Bytes(), EndHeaders: true})
	msg := make([]byte, 5+send)
	binary.BigEndian.PutUint32(msg[1:5], announced)
	for len(msg) > 0 {
		n := min(len(msg), 16<<10)
		_ = c.fr.WriteData(id, false, msg[:n])
		msg = msg[n:]
	}
}

// wait reads frames until stream id ends, within d, and returns its grpc-status
// ("reset" for a stream reset without one). Other streams' ends are kept.
func (c *rawH2) wait(t *testing.T, id uint32, d time.Duration) string {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	for {
		if st, ok := c.ended[id]; ok {
			return st
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream %d had not ended after %v: %v", id, d, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if _, ok := c.ended[f.StreamID]; !ok {
				c.ended[f.StreamID] = "reset"
			}
		case *http2.HeadersFrame:
			// Every block goes through the decoder, to keep HPACK's table in step.
			fields, _ := c.dec.DecodeFull(f.HeaderBlockFragment())
			for _, hf := range fields {
				if hf.Name == "grpc-status" {
					c.ended[f.StreamID] = hf.Value
				}
			}
		}
	}
}
