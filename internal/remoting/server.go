package remoting

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
)

// BrokerName is the one broker name routes, queues and locks carry (2.2): the
// embedded broker is a single master.
const BrokerName = "orderly"

// clusterName is the cluster routes name.
const clusterName = "orderly"

// Timings of client liveness and transaction check-backs.
const (
	// clientExpiry drops a client that has not sent a heartbeat for this long, as
	// RocketMQ's broker does (3.5).
	clientExpiry = 120 * time.Second
	// maxPullHold bounds how long an empty pull is held: the client's own timeout is
	// 30 s and it asks for 20 s (3.4).
	maxPullHold = 20 * time.Second
	// maxInFlight bounds the requests one connection may have in progress.
	maxInFlight = 1024
	// writeTimeout bounds writing one frame.
	writeTimeout = 30 * time.Second
)

// Server serves the name server and the broker on one address. It is a
// manager.Runnable.
type Server struct {
	// Addr is the listen address.
	Addr string
	// Advertise is the host:port clients reach the broker at; routes carry it.
	Advertise string
	// StoreAddr is the IPv4 host:port records carry as the store host; orderly
	// consumers dial it to send messages back. Defaults to Advertise.
	StoreAddr string
	Broker    *broker.Broker
	Log       logr.Logger
	// Clock drives heartbeat expiry and check-backs; defaults to the wall clock.
	Clock clock.Clock
	// CheckEvery is how often due transaction check-backs are sent; default 1 s.
	CheckEvery time.Duration
	// Listener, when set, is served instead of listening on Addr: a caller that
	// needs the port before the broker opens (message ids carry it) listens first.
	Listener net.Listener

	ready   chan net.Addr
	opaque  atomic.Int32
	clients *registry
	store   hostPort
}

// NewServer returns a server of b on addr, advertising advertise.
func NewServer(addr, advertise string, b *broker.Broker, log logr.Logger) *Server {
	return &Server{Addr: addr, Advertise: advertise, Broker: b, Log: log, ready: make(chan net.Addr, 1)}
}

// NeedLeaderElection reports false: the data plane serves on every replica.
func (s *Server) NeedLeaderElection() bool { return false }

// Listening yields the bound address once the server listens.
func (s *Server) Listening() <-chan net.Addr { return s.ready }

// Start listens and serves until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	if s.Clock == nil {
		s.Clock = clock.Real{}
	}
	if s.CheckEvery <= 0 {
		s.CheckEvery = time.Second
	}
	ln := s.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.Addr); err != nil {
			return fmt.Errorf("failed to listen for remoting on %s: %w", s.Addr, err)
		}
	}
	if s.Advertise == "" {
		s.Advertise = ln.Addr().String()
	}
	if s.StoreAddr == "" {
		s.StoreAddr = s.Advertise
	}
	s.store = parseHostPort(s.StoreAddr)
	s.clients = newRegistry(s)
	s.ready <- ln.Addr()
	s.Log.Info("Serving RocketMQ remoting (name server and broker)", "address", ln.Addr().String(), "advertise", s.Advertise)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.housekeep(ctx) })
	conns := map[*conn]struct{}{}
	var mu sync.Mutex
	go func() {
		<-ctx.Done()
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			c.close()
		}
		mu.Unlock()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			wg.Wait()
			return fmt.Errorf("remoting accept failed: %w", err)
		}
		c := newConn(s, nc)
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			c.serve(ctx)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	return nil
}

// housekeep expires silent clients and sends due transaction check-backs.
func (s *Server) housekeep(ctx context.Context) {
	for {
		t := s.Clock.NewTimer(s.CheckEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		s.clients.expire(s.Clock.Now().Add(-clientExpiry))
		s.sendCheckBacks(ctx)
	}
}

// conn is one client connection. Requests on it are served concurrently, since one
// connection carries held pulls, sends and heartbeats at once (1.4); frames are
// written whole, one at a time.
type conn struct {
	s        *Server
	nc       net.Conn
	remote   string
	out      chan []byte
	inFlight chan struct{}
	closed   chan struct{}
	once     sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{s: s, nc: nc, remote: nc.RemoteAddr().String(), out: make(chan []byte, maxInFlight),
		inFlight: make(chan struct{}, maxInFlight), closed: make(chan struct{})}
	go c.writeLoop()
	return c
}

// writeLoop writes queued frames, as many as are waiting in one system call: under
// load, answers to many concurrent requests leave together.
func (c *conn) writeLoop() {
	var bufs net.Buffers
	for {
		select {
		case <-c.closed:
			return
		case f := <-c.out:
			bufs = append(bufs[:0], f)
		}
	more:
		for len(bufs) < 64 {
			select {
			case f := <-c.out:
				bufs = append(bufs, f)
			default:
				break more
			}
		}
		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := bufs.WriteTo(c.nc); err != nil {
			c.close()
			return
		}
	}
}

func (c *conn) close() {
	c.once.Do(func() {
		close(c.closed)
		_ = c.nc.Close()
	})
}

func (c *conn) serve(ctx context.Context) {
	log := c.s.Log.WithValues("client", c.remote)
	ctx, cancel := context.WithCancel(ctx)
	var handlers sync.WaitGroup
	defer func() {
		cancel()
		c.close()
		handlers.Wait()
		c.s.clients.dropConn(c)
	}()
	r := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		cmd, err := ReadCommand(r)
		var unusable *RequestError
		switch {
		case errors.As(err, &unusable):
			// Read whole but not servable as sent: answered, so that the client
			// gets a reason instead of a closed connection to reconnect to.
			log.V(1).Info("Refusing a request", "reason", unusable.Remark)
			req := unusable.Request
			if !req.IsResponse() {
				c.answer(req, response(req, unusable.Code, unusable.Remark))
			}
			continue
		case err != nil:
			if errors.Is(err, ErrFrame) {
				log.Info("Closing the connection: bad frame", "reason", err.Error())
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.V(1).Info("Connection ended", "reason", err.Error())
			}
			return
		}
		if cmd.IsResponse() {
			continue // clients never answer the oneway requests this server sends
		}
		select {
		case c.inFlight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		handlers.Go(func() {
			defer func() { <-c.inFlight }()
			if res := c.s.handle(ctx, c, cmd); res != nil {
				c.answer(cmd, res)
			}
		})
	}
}

// answer sends res as the answer to req, in req's serialize type, unless req is
// one way: RocketMQ's broker serves those and answers none (1.4).
func (c *conn) answer(req, res *Command) {
	if req.IsOneway() {
		return
	}
	res.Opaque, res.Flag, res.Serialize = req.Opaque, flagResponse, req.Serialize
	if err := c.write(res); err != nil {
		c.close()
	}
}

// write queues one frame for the connection's writer.
func (c *conn) write(cmd *Command) error {
	frame, err := AppendFrame(nil, cmd)
	if err != nil {
		return err
	}
	select {
	case c.out <- frame:
		return nil
	case <-c.closed:
		return net.ErrClosed
	}
}

// request sends a server-to-client request, oneway: the client answers none (1.4).
func (c *conn) request(code int16, ext map[string]string, body []byte) error {
	return c.write(&Command{Code: code, Opaque: c.s.opaque.Add(1), Flag: flagOneway, ExtFields: ext, Body: body})
}

// handle serves one request and returns its answer; nil for none.
func (s *Server) handle(ctx context.Context, c *conn, req *Command) *Command {
	rc, res := s.authenticate(req)
	if res != nil {
		return res
	}
	switch req.Code {
	case reqGetRouteInfo:
		return s.routeInfo(rc, req)
	case reqSendMessage, reqSendMessageV2:
		return s.send(ctx, rc, c, req, false)
	case reqSendBatchMessage:
		return s.send(ctx, rc, c, req, true)
	case reqPullMessage:
		return s.pull(ctx, rc, c, req)
	case reqHeartbeat:
		return s.heartbeat(rc, c, req)
	case reqUnregisterClient:
		s.clients.unregister(rc.instance, req.ExtFields["clientID"])
		return response(req, codeSuccess, "")
	case reqGetConsumerList:
		return s.consumerList(rc, req)
	case reqQueryConsumerOffset:
		return s.queryOffset(rc, req)
	case reqUpdateConsumerOffset:
		return s.updateOffset(rc, req)
	case reqGetMaxOffset, reqGetMinOffset, reqSearchOffsetByTime:
		return s.offsetQuery(rc, req)
	case reqLockBatchMQ:
		return s.lock(rc, req, true)
	case reqUnlockBatchMQ:
		return s.lock(rc, req, false)
	case reqConsumerSendMsgBack:
		return s.sendBack(ctx, rc, req)
	case reqEndTransaction:
		return s.endTransaction(rc, req)
	case reqUpdateAndCreateTopic:
		return s.createTopic(rc, req)
	case reqDeleteTopicInBroker, reqDeleteTopicInNamesrv:
		return s.deleteTopic(rc, req)
	case reqGetAllTopicList:
		return s.topicList(rc, req)
	}
	return response(req, codeNotSupported, fmt.Sprintf("request type %d not supported", req.Code))
}
