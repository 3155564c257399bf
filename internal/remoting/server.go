package remoting

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
	"github.com/orderly-dev/orderly/internal/connlimit"
	"github.com/orderly-dev/orderly/internal/membudget"
	"github.com/orderly-dev/orderly/internal/wiretls"
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
)

// Server serves the name server and the broker on one address. It is a
// manager.Runnable.
type Server struct {
	// Addr is the listen address.
	Addr string
	// listener is the capped listener once serving, for Connections.
	listener atomic.Pointer[connlimit.Listener]
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
	// Limits bound connections and what they hold; zero fields take the defaults.
	Limits Limits
	// TLS, when set, serves TLS; PlainText then says which client addresses may
	// still speak plain text on the same port (nil: none), told apart by their
	// first byte (internal/wiretls).
	TLS       *tls.Config
	PlainText func(net.Addr) bool

	ready   chan net.Addr
	opaque  atomic.Int32
	clients *registry
	store   hostPort
	lim     Limits
	// memory holds the frames larger than smallFrame of every connection, being
	// read or being served.
	memory *membudget.Budget
	// tenantMemory holds each instance's share of memory: the bodies of its frames.
	tenantMemory *membudget.Tenants
	// macs are the keyed signature states of the secrets in use.
	macs macCache

	connsMu sync.Mutex
	conns   map[*conn]struct{}
}

// NewServer returns a server of b on addr, advertising advertise.
func NewServer(addr, advertise string, b *broker.Broker, log logr.Logger) *Server {
	return &Server{Addr: addr, Advertise: advertise, Broker: b, Log: log, ready: make(chan net.Addr, 1)}
}

// NeedLeaderElection reports false: the data plane serves on every replica.
func (s *Server) NeedLeaderElection() bool { return false }

// Listening yields the bound address once the server listens.
func (s *Server) Listening() <-chan net.Addr { return s.ready }

// Connections reports the server's open connections and those refused past its
// caps, for metrics.
func (s *Server) Connections() connlimit.Stats { return s.listener.Load().Stats() }

// Start listens and serves until ctx ends.
func (s *Server) Start(ctx context.Context) error {
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
	s.setup()
	refusals := newRefusalLog(s.Log)
	capped := connlimit.Wrap(ln, s.lim.MaxConns, s.lim.MaxConnsPerHost, refusals.refuse)
	s.listener.Store(capped)
	ln = wiretls.Listen(capped, s.TLS, s.PlainText)
	s.ready <- ln.Addr()
	s.Log.Info("Serving RocketMQ remoting (name server and broker)", "address", ln.Addr().String(), "advertise", s.Advertise)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { s.housekeep(ctx) })
	go func() {
		<-ctx.Done()
		_ = ln.Close()
		s.connsMu.Lock()
		for c := range s.conns {
			c.close()
		}
		s.connsMu.Unlock()
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
		s.connsMu.Lock()
		s.conns[c] = struct{}{}
		s.connsMu.Unlock()
		wg.Go(func() {
			c.serve(ctx)
			s.connsMu.Lock()
			delete(s.conns, c)
			s.connsMu.Unlock()
		})
	}
	wg.Wait()
	return nil
}

// setup fills the defaults and makes what serving needs.
func (s *Server) setup() {
	if s.Clock == nil {
		s.Clock = clock.Real{}
	}
	if s.CheckEvery <= 0 {
		s.CheckEvery = time.Second
	}
	s.store = parseHostPort(s.StoreAddr)
	s.lim = s.Limits.withDefaults()
	s.memory = membudget.New(s.lim.Memory)
	s.tenantMemory = membudget.NewTenants(s.lim.InstanceMemory)
	s.clients = newRegistry(s)
	s.conns = map[*conn]struct{}{}
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

// handle serves one request and returns its answer; nil for none. mem is the
// memory its frame holds, given back as soon as the signature over the body is
// checked if the request does not use its body: a held pull carrying 16 MiB it has
// no use for holds none of it for 20 s.
func (s *Server) handle(ctx context.Context, c *conn, req *Command, mem *frameMemory) *Command {
	rc, res := s.authenticate(req)
	if res != nil {
		return res
	}
	switch req.Code {
	case reqSendMessage, reqSendMessageV2, reqSendBatchMessage, reqHeartbeat, reqLockBatchMQ, reqUnlockBatchMQ, reqCheckClientConfig:
	default:
		req.Body = nil
		mem.give()
	}
	if err := c.admit(rc.instance); err != nil {
		c.refuseTenant(req, rc.instance, err)
		return nil
	}
	switch req.Code {
	case reqGetRouteInfo:
		return s.routeInfo(rc, req)
	case reqSendMessage, reqSendMessageV2:
		return s.send(ctx, rc, c, req, false, mem)
	case reqSendBatchMessage:
		return s.send(ctx, rc, c, req, true, mem)
	case reqPullMessage:
		return s.pull(ctx, rc, c, req)
	case reqHeartbeat:
		return s.heartbeat(rc, c, req)
	case reqUnregisterClient:
		s.clients.unregister(rc.instance, req.ExtFields["clientID"])
		return response(req, codeSuccess, "")
	case reqGetConsumerList:
		return s.consumerList(rc, req)
	case reqCheckClientConfig:
		return s.checkClientConfig(req)
	case reqViewMessageByID:
		return s.viewMessage(ctx, rc, c, req)
	case reqQueryMessage:
		return s.queryMessage(ctx, rc, c, req)
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
