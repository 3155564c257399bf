package remoting

import (
	"bytes"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/orderly-dev/orderly/internal/broker"
)

func zlibBody(plain []byte) []byte {
	var b bytes.Buffer
	w, _ := zlib.NewWriterLevel(&b, 5)
	_, _ = w.Write(plain)
	_ = w.Close()
	return b.Bytes()
}

func lz4Body(plain []byte) []byte {
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	_, _ = w.Write(plain)
	_ = w.Close()
	return b.Bytes()
}

func zstdBody(plain []byte) []byte {
	var b bytes.Buffer
	w, _ := zstd.NewWriter(&b)
	_, _ = w.Write(plain)
	_ = w.Close()
	return b.Bytes()
}

func compressibleText(seed string, n int) []byte {
	var sb strings.Builder
	for sb.Len() < n {
		fmt.Fprintf(&sb, "%s, line %d; ", seed, sb.Len())
	}
	return []byte(sb.String()[:n])
}

// TestCompressedSendsAreStoredPlain sends a body compressed in each way a client
// marks in sysFlag: the 4.x clients' zlib (type bits 0), and RocketMQ 5's zlib,
// LZ4 and zstd types. Each is stored plain, with the flag cleared, so that any
// consumer on any wire reads the body as it was before compression.
func TestCompressedSendsAreStoredPlain(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicC", broker.Normal, 1)
	e.group("GID_c", broker.TCP, 16)
	c := e.raw()
	want := map[string]string{}
	for _, tc := range []struct {
		sysFlag  string
		compress func([]byte) []byte
	}{
		{"1", zlibBody},
		{"769", zlibBody}, // 0x300|1: RocketMQ 5's ZLIB type
		{"257", lz4Body},  // 0x100|1: LZ4
		{"513", zstdBody}, // 0x200|1: ZSTD
	} {
		plain := compressibleText("sysFlag "+tc.sysFlag, 20<<10)
		ext := sendExt("TopicC", "")
		ext["sysFlag"] = tc.sysFlag
		if res := c.call(reqSendMessage, ext, tc.compress(plain), testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("sysFlag %s: %d %q", tc.sysFlag, res.Code, res.Remark)
		}
		want[string(plain)] = tc.sysFlag
	}
	res, err := e.broker.Pull(context.Background(), testInstance, "GID_c", "TopicC", 0, 0, 32, broker.Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Messages) != len(want) {
		t.Fatalf("%d messages stored, %d sent", len(res.Messages), len(want))
	}
	for _, m := range res.Messages {
		flag, ok := want[string(m.Body)]
		if !ok {
			t.Errorf("a stored body of %d bytes that was not sent: %.30q", len(m.Body), m.Body)
			continue
		}
		if m.SysFlag&(sysFlagCompress|sysFlagCompressType) != 0 {
			t.Errorf("sysFlag %s: stored with sysFlag %#x; the compression bits must be cleared with the body inflated", flag, m.SysFlag)
		}
	}
}

// TestBadCompressedSendsAreRefused: a body that inflates past the largest body,
// does not inflate, names an unknown type, or is a batch marked compressed is
// refused with MESSAGE_ILLEGAL; nothing is stored, the memory inflating took is
// given back, and the connection serves the next send.
func TestBadCompressedSendsAreRefused(t *testing.T) {
	e := newEnv(t)
	e.topic("TopicC", broker.Normal, 1)
	c := e.raw()
	bomb := zlibBody(make([]byte, 64<<20))
	for name, tc := range map[string]struct {
		code    int16
		sysFlag string
		body    []byte
		remark  string
	}{
		"a zlib bomb":           {reqSendMessage, "1", bomb, "inflates past"},
		"an lz4 bomb":           {reqSendMessage, "257", lz4Body(make([]byte, 64<<20)), "inflates past"},
		"a zstd bomb":           {reqSendMessage, "513", zstdBody(make([]byte, 64<<20)), "inflates past"},
		"not zlib":              {reqSendMessage, "1", []byte("plain text"), "does not decompress"},
		"truncated":             {reqSendMessage, "1", zlibBody(compressibleText("t", 10<<10))[:40], "does not decompress"},
		"an unknown type":       {reqSendMessage, "1025", zlibBody([]byte("x")), "unknown compression type"},
		"a compressed batch":    {reqSendBatchMessage, "1", zlibBody(batchBody([2]string{"x", ""})), "compress single messages only"},
		"a zlib bomb, sent V2":  {reqSendMessageV2, "1", bomb, "inflates past"},
		"an lz4 frame, no data": {reqSendMessage, "257", []byte{4, 0x22, 0x4d, 0x18}, "does not decompress"},
	} {
		ext := sendExt("TopicC", "")
		ext["sysFlag"] = tc.sysFlag
		if tc.code != reqSendMessage {
			ext = map[string]string{"a": "PID_raw", "b": "TopicC", "e": "0", "f": tc.sysFlag, "g": "0", "h": "0", "i": "", "j": "0"}
		}
		res := c.call(tc.code, ext, tc.body, testAK, testSK)
		if res.Code != codeMessageIllegal || !strings.Contains(res.Remark, tc.remark) {
			t.Errorf("%s: %d %q; want %d with %q", name, res.Code, res.Remark, codeMessageIllegal, tc.remark)
		}
	}
	if info, _ := e.broker.Topic(testInstance, "TopicC"); info.Messages != 0 {
		t.Errorf("%d messages stored from refused sends", info.Messages)
	}
	eventually(t, 5*time.Second, "the server's memory given back", func() bool { return e.server.memory.InUse() == 0 })
	if res := c.call(reqSendMessage, sendExt("TopicC", ""), []byte("after"), testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("a plain send after the refusals: %d %q", res.Code, res.Remark)
	}
}

// TestInflatingWaitsForTheInstancesMemory: inflating takes from the instance's
// share like the frame that carried the body, so a tenant whose requests hold
// their share gets SYSTEM_BUSY-bound errNoMemory for the next one instead of the
// process growing.
func TestInflatingWaitsForTheInstancesMemory(t *testing.T) {
	e := newEnvWith(t, broker.Limits{}, func(s *Server) { s.Limits.FrameTimeout = 100 * time.Millisecond })
	c := newConn(e.server, discardConn{})
	tenant := e.server.tenantMemory.Of(testInstance)
	tenant.Force(e.server.lim.InstanceMemory) // another request of the instance holds its share
	mem := &frameMemory{c: c}
	_, err := e.server.inflate(testInstance, zlibBody(compressibleText("x", 1<<20)), 1, false, mem)
	if !errors.Is(err, errNoMemory) {
		t.Fatalf("inflating with the instance's share held: %v, want errNoMemory", err)
	}
	mem.give()
	tenant.Give(e.server.lim.InstanceMemory)
	if used := tenant.InUse(); used != 0 {
		t.Fatalf("the instance holds %d bytes after a refused inflate", used)
	}
	if used := c.memory.InUse(); used != 0 {
		t.Fatalf("the connection holds %d bytes after a refused inflate", used)
	}
	plain, err := e.server.inflate(testInstance, zlibBody(compressibleText("x", 1<<20)), 1, false, mem)
	if err != nil || len(plain) != 1<<20 {
		t.Fatalf("inflating with the share free: %d bytes, %v", len(plain), err)
	}
	if mem.tenantHeld < len(plain) || c.memory.InUse() < len(plain) {
		t.Fatalf("the request holds %d bytes of the instance's and %d of the connection's for a body of %d", mem.tenantHeld, c.memory.InUse(), len(plain))
	}
	mem.give()
}
