package remoting

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
)

const (
	// maxInFlight bounds the requests one connection may have in progress.
	maxInFlight = 1024
	// readBufferSize is each connection's read buffer: small, since an idle
	// connection holds it; larger frames are read straight into their own buffers.
	readBufferSize = 4 << 10
	// maxWriteBatch bounds the frames written in one system call.
	maxWriteBatch = 64
)

var (
	// errNoMemory: a frame could not get the memory for its next bytes before its
	// deadline, from the connection's budget or the server's.
	errNoMemory = errors.New("no memory for the frame before its deadline")
	// errOutboxFull: a request the server sends was dropped, the connection's
	// outbound queue being full (its client reads too slowly, or not at all).
	errOutboxFull = errors.New("the connection's outbound queue is full")
)

// conn is one client connection. Requests on it are served concurrently, since one
// connection carries held pulls, sends and heartbeats at once (1.4). Frames are read
// one at a time by serve, whose buffer is small; answers and the server's own
// requests are queued in the connection's outbox and written, whole and in order,
// by a writer that runs only while there is something to write. Nothing is written
// to the network under a lock any other connection waits on.
type conn struct {
	s        *Server
	nc       net.Conn
	remote   string
	inFlight chan struct{}
	// memory holds this connection's frames larger than smallFrame, being read or
	// being served.
	memory *membudget.Budget
	closed chan struct{}
	once   sync.Once

	outMu    sync.Mutex
	out      []outFrame // frames queued for the writer, from outHead on
	outHead  int
	outBytes int
	writing  bool          // a writer runs
	closing  bool          // close once the queue is written
	space    chan struct{} // closed when the writer frees room; nil while nobody waits

	tenantMu sync.Mutex
	// tenants are the instances whose connection quota counts this connection, with
	// the function giving each back.
	tenants map[string]func()

	// producerGroups and clientIDs are what this connection registered, bounded per
	// connection. The registry's mutex guards them.
	producerGroups map[groupKey]bool
	clientIDs      map[string]bool
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{s: s, nc: nc, remote: nc.RemoteAddr().String(), inFlight: make(chan struct{}, maxInFlight),
		memory: membudget.New(s.lim.ConnMemory), closed: make(chan struct{})}
}

func (c *conn) close() {
	c.once.Do(func() {
		close(c.closed)
		_ = c.nc.Close()
	})
}

// serve reads and dispatches requests until the connection ends, then forgets
// everything the connection held.
func (c *conn) serve(ctx context.Context) {
	log := c.s.Log.WithValues("client", c.remote)
	ctx, cancel := context.WithCancel(ctx)
	var handlers sync.WaitGroup
	defer func() {
		cancel()
		c.close()
		handlers.Wait()
		c.s.clients.dropConn(c)
		c.releaseTenants()
	}()
	r := bufio.NewReaderSize(c.nc, readBufferSize)
	for {
		cmd, charged, err := c.next(r)
		var unusable *RequestError
		switch {
		case errors.As(err, &unusable):
			// Read whole but not servable as sent: answered, so that the client
			// gets a reason instead of a closed connection to reconnect to.
			c.giveFrame(charged)
			log.V(1).Info("Refusing a request", "reason", unusable.Remark)
			req := unusable.Request
			if !req.IsResponse() {
				c.answer(req, response(req, unusable.Code, unusable.Remark))
			}
			if unusable.BodyUnread {
				// The rest of the frame is still on the wire: nothing after it
				// can be read as a frame.
				c.closeWhenWritten()
				<-c.closed
				return
			}
			continue
		case err != nil:
			c.giveFrame(charged)
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, errNoMemory):
				log.V(1).Info("Closing the connection: a frame was not read within its deadline, or no frame came within the idle timeout", "reason", err.Error())
			case errors.Is(err, ErrFrame):
				log.Info("Closing the connection: bad frame", "reason", err.Error())
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
				log.V(1).Info("Connection ended", "reason", err.Error())
			}
			return
		}
		if cmd.IsResponse() {
			c.giveFrame(charged)
			continue // clients never answer the oneway requests this server sends
		}
		select {
		case c.inFlight <- struct{}{}:
		case <-ctx.Done():
			c.giveFrame(charged)
			return
		}
		handlers.Go(func() {
			mem := frameMemory{c: c, frameCharge: charged}
			defer func() {
				<-c.inFlight
				mem.give()
				if p := recover(); p != nil {
					// A request must never stop the process every tenant shares.
					log.Error(fmt.Errorf("panic: %v", p), "Closing the connection: serving a request panicked", "code", cmd.Code, "stack", string(debug.Stack()))
					c.close()
				}
			}()
			if res := c.s.handle(ctx, c, cmd, &mem); res != nil {
				c.answer(cmd, res)
			}
		})
	}
}

// next reads the next frame within the connection's deadlines: IdleTimeout for its
// first byte, then FrameTimeout for the rest, memory waited for included. A frame
// already buffered whole is read without touching the deadline. Its header's
// growth past 4 KiB is taken from the connection's memory and the server's; its
// body's, from those and its instance's, once the header has named a known
// AccessKey (admit).
func (c *conn) next(r *bufio.Reader) (*Command, frameCharge, error) {
	lim := &c.s.lim
	if r.Buffered() == 0 {
		_ = c.nc.SetReadDeadline(time.Now().Add(lim.IdleTimeout))
		if _, err := r.Peek(1); err != nil {
			return nil, frameCharge{}, err
		}
	}
	deadline := time.Now().Add(lim.FrameTimeout)
	if !frameBuffered(r) {
		_ = c.nc.SetReadDeadline(deadline)
	}
	take := func(n, held int) error {
		if !c.memory.Take(n, held, deadline, c.closed) {
			return fmt.Errorf("%w: the connection holds %d bytes of frames", errNoMemory, c.memory.InUse())
		}
		if !c.s.memory.Take(n, held, deadline, c.closed) {
			c.memory.Give(n)
			return fmt.Errorf("%w: the server holds %d bytes of frames", errNoMemory, c.s.memory.InUse())
		}
		return nil
	}
	var ch frameCharge
	admit := func(cmd *Command, n int) (func(n, held int) error, error) {
		if n <= smallFrame {
			return nil, nil // a body this small costs no more than the reader's buffer
		}
		instance, _, ok := c.s.Broker.LookupAccessKey(cmd.ExtFields["AccessKey"])
		if !ok {
			return nil, &RequestError{Request: cmd, Code: codeNoPermission,
				Remark: fmt.Sprintf("a frame with a body of %d bytes must be signed with a known AccessKey; its body was not read", n)}
		}
		ch.tenant = c.s.tenantMemory.Of(instance)
		return func(n, held int) error {
			if !ch.tenant.Take(n, ch.tenantHeld, deadline, c.closed) {
				c.s.Broker.NoteThrottled(instance)
				return fmt.Errorf("%w: instance %s's frames hold %d bytes", errNoMemory, instance, ch.tenant.InUse())
			}
			if err := take(n, held); err != nil {
				ch.tenant.Give(n)
				return err
			}
			ch.tenantHeld += n
			ch.n += n
			return nil
		}, nil
	}
	cmd, charged, err := readChunked(r, take, admit)
	ch.n += charged
	return cmd, ch, err
}

// frameCharge is what a frame holds: n bytes of the connection's and the server's
// memory, tenantHeld of them of its instance's too.
type frameCharge struct {
	n          int
	tenant     *membudget.Budget
	tenantHeld int
}

// frameBuffered reports whether r holds the next frame whole.
func frameBuffered(r *bufio.Reader) bool {
	if r.Buffered() < 4 {
		return false
	}
	prefix, _ := r.Peek(4)
	return uint64(r.Buffered()) >= 4+uint64(binary.BigEndian.Uint32(prefix))
}

// frameMemory is what a request's frame was charged, given back once: when the
// request no longer needs its body, or when it has been served. Only the request's
// handler uses it.
type frameMemory struct {
	c *conn
	frameCharge
}

func (m *frameMemory) give() {
	if m != nil {
		m.c.giveFrame(m.frameCharge)
		m.frameCharge = frameCharge{}
	}
}

// take adds n bytes to what the request holds, from its instance's memory, the
// connection's and the server's, waiting for them up to FrameTimeout: for what
// serving it allocates past its frame (a compressed body inflated).
func (m *frameMemory) take(instance string, n int) error {
	c := m.c
	if m.tenant == nil {
		m.tenant = c.s.tenantMemory.Of(instance)
	}
	deadline := time.Now().Add(c.s.lim.FrameTimeout)
	if !m.tenant.Take(n, m.tenantHeld, deadline, c.closed) {
		return fmt.Errorf("%w: instance %s's requests hold %d bytes", errNoMemory, instance, m.tenant.InUse())
	}
	held := m.n
	if !c.memory.Take(n, held, deadline, c.closed) {
		m.tenant.Give(n)
		return fmt.Errorf("%w: the connection holds %d bytes", errNoMemory, c.memory.InUse())
	}
	if !c.s.memory.Take(n, held, deadline, c.closed) {
		m.tenant.Give(n)
		c.memory.Give(n)
		return fmt.Errorf("%w: the server holds %d bytes", errNoMemory, c.s.memory.InUse())
	}
	m.tenantHeld += n
	m.n += n
	return nil
}

// giveBack returns n of the bytes take added, before the request is done.
func (m *frameMemory) giveBack(n int) {
	m.tenant.Give(n)
	m.c.give(n)
	m.tenantHeld -= n
	m.n -= n
}

// giveFrame returns the memory a frame was charged.
func (c *conn) giveFrame(ch frameCharge) {
	c.give(ch.n)
	if ch.tenantHeld > 0 {
		ch.tenant.Give(ch.tenantHeld)
	}
}

// give returns n bytes of the connection's memory and the server's.
func (c *conn) give(n int) {
	if n > 0 {
		c.memory.Give(n)
		c.s.memory.Give(n)
	}
}

// admit counts the connection against the instance's connection quota the first
// time a request authenticates for it.
func (c *conn) admit(instance string) error {
	c.tenantMu.Lock()
	defer c.tenantMu.Unlock()
	if _, ok := c.tenants[instance]; ok {
		return nil
	}
	release, err := c.s.Broker.AcquireConnection(instance)
	if err != nil {
		return err
	}
	if c.tenants == nil {
		c.tenants = map[string]func(){}
	}
	c.tenants[instance] = release
	return nil
}

func (c *conn) releaseTenants() {
	c.tenantMu.Lock()
	defer c.tenantMu.Unlock()
	for _, release := range c.tenants {
		release()
	}
	c.tenants = nil
}

// outFrame is a frame queued for the writer, with the memory its answer holds in
// the connection's budget, given back once it is written.
type outFrame struct {
	b    []byte
	held int
}

// answer sends res as the answer to req, in req's serialize type, unless req is
// one way: RocketMQ's broker serves those and answers none (1.4).
func (c *conn) answer(req, res *Command) { c.answerHolding(req, res, &answerMemory{c: c}) }

// answerHolding is answer for an answer whose records hold mem, which is given
// back once the answer is written (or dropped).
func (c *conn) answerHolding(req, res *Command, mem *answerMemory) {
	if req.IsOneway() {
		mem.give()
		return
	}
	res.Opaque, res.Flag, res.Serialize = req.Opaque, flagResponse, req.Serialize
	frame, err := AppendFrame(nil, res)
	if err != nil {
		mem.give()
		c.close()
		return
	}
	// An answer waits for room: the writer either makes some within its write
	// timeout or closes the connection.
	if err := c.enqueue(outFrame{frame, mem.held}, true); err != nil {
		mem.give()
		c.close()
	}
}

// answerMemory is what one answer's records hold, taken from the connection's
// budget and the server's (the ones frames being read take from): a Pull takes
// it before it reads (broker.ReadBudget), and it is given back once the answer
// is written. A client that sends pulls and does not read their answers makes
// its own pulls wait once its budget is taken; the writer's timeout then closes
// the connection, and with it everything it held.
type answerMemory struct {
	c    *conn
	held int
}

// Take waits for n bytes until the connection closes or the frame timeout ends.
func (a *answerMemory) Take(ctx context.Context, n int) error {
	deadline := time.Now().Add(a.c.s.lim.FrameTimeout)
	if !a.c.memory.Take(n, a.held, deadline, a.c.closed) {
		return fmt.Errorf("%w: the connection holds %d bytes of frames and answers", errNoMemory, a.c.memory.InUse())
	}
	if !a.c.s.memory.Take(n, a.held, deadline, a.c.closed) {
		a.c.memory.Give(n)
		return fmt.Errorf("%w: the server holds %d bytes of frames and answers", errNoMemory, a.c.s.memory.InUse())
	}
	a.held += n
	return ctx.Err()
}

func (a *answerMemory) Charge(n int) {
	a.c.memory.Force(n)
	a.c.s.memory.Force(n)
	a.held += n
}

func (a *answerMemory) Give(n int) {
	a.c.give(n)
	a.held -= n
}

// give gives back everything held.
func (a *answerMemory) give() { a.Give(a.held) }

// request sends a server-to-client request, oneway: the client answers none (1.4).
// It never waits: with the connection's outbound queue full it fails with
// errOutboxFull, so that a client that does not read delays no other.
func (c *conn) request(code int16, ext map[string]string, body []byte) error {
	frame, err := AppendFrame(nil, &Command{Code: code, Opaque: c.s.opaque.Add(1), Flag: flagOneway, ExtFields: ext, Body: body})
	if err != nil {
		return err
	}
	return c.enqueue(outFrame{b: frame}, false)
}

// enqueue queues a frame for the writer, starting it if none runs. With the queue
// past OutboundBytes it waits for room if wait is set, and fails otherwise.
func (c *conn) enqueue(frame outFrame, wait bool) error {
	for {
		c.outMu.Lock()
		select {
		case <-c.closed:
			c.outMu.Unlock()
			return net.ErrClosed
		default:
		}
		if c.outBytes == 0 || c.outBytes+len(frame.b) <= c.s.lim.OutboundBytes {
			c.out = append(c.out, frame)
			c.outBytes += len(frame.b)
			start := !c.writing
			c.writing = true
			c.outMu.Unlock()
			if start {
				go c.writeLoop()
			}
			return nil
		}
		if !wait {
			c.outMu.Unlock()
			return errOutboxFull
		}
		if c.space == nil {
			c.space = make(chan struct{})
		}
		space := c.space
		c.outMu.Unlock()
		select {
		case <-space:
		case <-c.closed:
			return net.ErrClosed
		}
	}
}

// writeLoop writes queued frames, as many as are waiting (up to maxWriteBatch) in
// one system call, so that under load answers to many concurrent requests leave
// together; it ends when the queue is empty. A write that does not complete within
// WriteTimeout closes the connection.
func (c *conn) writeLoop() {
	var batch [maxWriteBatch]outFrame
	var bufs [maxWriteBatch][]byte
	for {
		c.outMu.Lock()
		if c.outHead == len(c.out) {
			c.out, c.outHead = c.out[:0], 0
			c.writing = false
			closing := c.closing
			c.outMu.Unlock()
			if closing {
				c.close()
			}
			return
		}
		n := copy(batch[:], c.out[c.outHead:])
		clear(c.out[c.outHead : c.outHead+n])
		if c.outHead += n; c.outHead > maxWriteBatch && 2*c.outHead > len(c.out) {
			// A queue never drained whole would otherwise grow at its tail forever.
			rest := copy(c.out, c.out[c.outHead:])
			clear(c.out[rest:])
			c.out, c.outHead = c.out[:rest], 0
		}
		c.outMu.Unlock()
		size, held := 0, 0
		for i, f := range batch[:n] {
			size += len(f.b)
			held += f.held
			bufs[i] = f.b
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.lim.WriteTimeout))
		nb := net.Buffers(bufs[:n])
		_, err := nb.WriteTo(c.nc)
		clear(batch[:n])
		clear(bufs[:n])
		c.give(held)
		c.outMu.Lock()
		c.outBytes -= size
		if c.space != nil {
			close(c.space)
			c.space = nil
		}
		if err != nil {
			// What is still queued is never written: its memory goes back now.
			for _, f := range c.out[c.outHead:] {
				c.give(f.held)
				c.outBytes -= len(f.b)
			}
			clear(c.out)
			c.out, c.outHead = c.out[:0], 0
			c.writing = false
			c.outMu.Unlock()
			c.close()
			return
		}
		c.outMu.Unlock()
	}
}

// closeWhenWritten closes the connection once what is queued has been written.
func (c *conn) closeWhenWritten() {
	c.outMu.Lock()
	if c.writing {
		c.closing = true
		c.outMu.Unlock()
		return
	}
	c.outMu.Unlock()
	c.close()
}

// refuseTenant answers a request whose instance holds its connection quota with
// SYSTEM_BUSY, which the clients back off on, and closes the connection once the
// answer is written: the quota counts connections.
func (c *conn) refuseTenant(req *Command, instance string, err error) {
	if !errors.Is(err, broker.ErrThrottled) {
		c.answer(req, brokerError(req, err))
		return
	}
	c.s.Log.V(1).Info("Refusing a connection past its instance's connection quota", "client", c.remote, "instance", instance)
	c.answer(req, response(req, codeSystemBusy, err.Error()))
	c.closeWhenWritten()
}
