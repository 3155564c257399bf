package mqhttp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/metadata"
)

// h2Conn is the gRPC benchmarks' client, the HTTP/2 twin of loadConn, in the
// manner of h2load: one connection, many calls multiplexed on it, nothing but a
// framer, an HPACK coder and a map of streams. grpc-go's own client costs about
// as much CPU per call as the server it drives, on the same two cores, so the
// benchmarks would measure the client. Calls carry what the 5.x clients send: the
// signed metadata, a length-prefixed protobuf request, trailers read for the
// grpc-status.
type h2Conn struct {
	conn net.Conn
	fr   *http2.Framer
	w    *bufio.Writer // the framer's, flushed once per call's frames
	host string

	wmu  sync.Mutex // one frame sequence at a time, and HPACK's table in order
	hbuf bytes.Buffer
	henc *hpack.Encoder
	next uint32

	mu       sync.Mutex
	streams  map[uint32]*h2Call
	err      error
	received int
}

// h2Call is one caller's call in turn: its request's and answer's bytes and the
// grpc-status of its trailers. A caller keeps one and makes its calls through it,
// so that its buffers are reused from call to call, as loadConn reuses its body.
type h2Call struct {
	req    []byte
	data   []byte
	frames [][]byte
	status string
	done   chan struct{} // one token a call, when its answer is whole
}

func newH2Call() *h2Call { return &h2Call{done: make(chan struct{}, 1)} }

// finish hands the call its answer's status and wakes its caller.
func (s *h2Call) finish(status string) {
	s.status = status
	s.done <- struct{}{}
}

// h2Window is the window the client grants: large enough that a benchmark's
// answers never wait for an update of a stream's.
const h2Window = 1 << 30

func dialH2(addr string, tlsConfig *tls.Config) (*h2Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if tlsConfig != nil {
		cfg := tlsConfig.Clone()
		cfg.NextProtos = []string{"h2"}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = tc
	}
	// Buffered both ways, as loadConn is: a call's frames go out in one write,
	// and frames are read out of 32 KiB reads.
	w := bufio.NewWriterSize(conn, 32<<10)
	c := &h2Conn{conn: conn, w: w, fr: http2.NewFramer(w, bufio.NewReaderSize(conn, 32<<10)), host: addr, next: 1, streams: map[uint32]*h2Call{}}
	c.henc = hpack.NewEncoder(&c.hbuf)
	_, _ = w.WriteString(http2.ClientPreface)
	_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2Window - 1})
	_ = c.fr.WriteWindowUpdate(0, h2Window-65535)
	if err := w.Flush(); err != nil {
		return nil, err
	}
	go c.read()
	return c, nil
}

func (c *h2Conn) close() { _ = c.conn.Close() }

// read dispatches the server's frames to their streams until the connection ends.
func (c *h2Conn) read() {
	dec := hpack.NewDecoder(4096, nil)
	fail := func(err error) {
		c.mu.Lock()
		c.err = err
		for id, s := range c.streams {
			delete(c.streams, id)
			s.finish("connection failed")
		}
		c.mu.Unlock()
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			fail(err)
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				_ = c.fr.WriteSettingsAck()
				_ = c.w.Flush()
				c.wmu.Unlock()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				_ = c.fr.WritePing(true, f.Data)
				_ = c.w.Flush()
				c.wmu.Unlock()
			}
		case *http2.GoAwayFrame:
			fail(fmt.Errorf("GOAWAY %v", f.ErrCode))
			return
		case *http2.DataFrame:
			c.mu.Lock()
			if s := c.streams[f.StreamID]; s != nil {
				s.data = append(s.data, f.Data()...)
			}
			// The connection's window is topped up once half of it is used.
			c.received += len(f.Data())
			update := 0
			if c.received > h2Window/2 {
				update, c.received = c.received, 0
			}
			c.mu.Unlock()
			if update > 0 {
				c.wmu.Lock()
				_ = c.fr.WriteWindowUpdate(0, uint32(update))
				_ = c.w.Flush()
				c.wmu.Unlock()
			}
			if f.StreamEnded() {
				c.end(f.StreamID, "")
			}
		case *http2.HeadersFrame:
			// Every header block goes through the decoder, which keeps HPACK's
			// table in step with the server's.
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				fail(err)
				return
			}
			if f.StreamEnded() {
				status := "missing"
				for _, hf := range fields {
					if hf.Name == "grpc-status" {
						status = hf.Value
					}
				}
				c.end(f.StreamID, status)
			}
		case *http2.RSTStreamFrame:
			c.end(f.StreamID, "reset "+f.ErrCode.String())
		}
	}
}

func (c *h2Conn) end(id uint32, status string) {
	c.mu.Lock()
	s := c.streams[id]
	delete(c.streams, id)
	c.mu.Unlock()
	if s != nil {
		s.finish(status)
	}
}

// call makes one call of method with md and the marshalled request req through
// s, and returns the answer's messages (each without its 5-byte prefix), valid
// until s's next call.
func (c *h2Conn) call(s *h2Call, method string, md metadata.MD, req []byte) ([][]byte, error) {
	s.data, s.frames = s.data[:0], s.frames[:0]
	s.req = binary.BigEndian.AppendUint32(append(s.req[:0], 0), uint32(len(req)))
	s.req = append(s.req, req...)
	body := s.req

	c.wmu.Lock()
	id := c.next
	c.next += 2
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		c.wmu.Unlock()
		return nil, c.err
	}
	c.streams[id] = s
	c.mu.Unlock()
	c.hbuf.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method}, {":authority", c.host},
		{"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = c.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for k, vs := range md {
		for _, v := range vs {
			_ = c.henc.WriteField(hpack.HeaderField{Name: k, Value: v})
		}
	}
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true})
	for err == nil && len(body) > 0 {
		n := min(len(body), 16<<10) // HTTP/2's default largest frame
		err = c.fr.WriteData(id, n == len(body), body[:n])
		body = body[n:]
	}
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	<-s.done
	if s.status != "0" {
		c.mu.Lock()
		defer c.mu.Unlock()
		return nil, errors.Join(c.err, fmt.Errorf("call %s ended with grpc-status %s", method, s.status))
	}
	for d := s.data; len(d) >= 5; {
		n := int(binary.BigEndian.Uint32(d[1:5]))
		if len(d) < 5+n {
			return nil, errors.New("a truncated message in the answer")
		}
		s.frames = append(s.frames, d[5:5+n])
		d = d[5+n:]
	}
	return s.frames, nil
}
