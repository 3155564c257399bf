// Package mqgrpc serves RocketMQ 5.x's gRPC protocol, the service
// apache.rocketmq.v2.MessagingService that the rocketmq-clients (Java, Go, Node.js,
// C++, Python, C#, Rust) speak, on top of the broker, so that applications of
// ApsaraMQ for RocketMQ 5.x and TDMQ 5.x instances work against Orderly unchanged.
// It only translates: every message semantic is the broker's. docs/grpc.md says
// what the code relies on and what it chose where the protocol is silent.
package mqgrpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/connlimit"
	"github.com/orderly-dev/orderly/internal/membudget"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// BrokerName is the one broker routes name: the embedded broker is a single
// master, and the clients tell brokers apart by name only.
const BrokerName = "orderly"

// Broker is what the endpoint needs of the broker.
type Broker interface {
	LookupAccessKey(accessKeyID string) (instanceID, secret string, ok bool)
	AcquireConnection(instanceID string) (release func(), err error)
	Topic(instanceID, name string) (broker.TopicInfo, error)
	Group(instanceID, id string) (broker.GroupInfo, error)
	// AutoCreateTopic and AutoCreateGroup create what the instance lets its
	// clients create on first use (Instance spec.autoCreate).
	AutoCreateTopic(instanceID string, cfg broker.TopicConfig) (broker.TopicInfo, error)
	AutoCreateGroup(instanceID, id string, protocol broker.Protocol) (broker.GroupInfo, error)
	Publish(ctx context.Context, instanceID, topic string, msg broker.Message) (broker.PublishResult, error)
	PublishBatch(ctx context.Context, instanceID, topic string, msgs []broker.Message) ([]broker.PublishResult, error)
	EndTransaction(instanceID, topic, handle string, commit bool) error
	TakeTransactionChecks(instanceID, producerGroup string, max int) ([]broker.Delivery, error)
	Pop(ctx context.Context, instanceID, topic string, req broker.PopRequest) ([]broker.Delivery, error)
	Ack(instanceID, topic, group string, handles []string) ([]error, error)
	ChangeInvisibility(instanceID, topic, group, handle string, invisibility time.Duration) (string, error)
	DeadLetterDelivery(ctx context.Context, instanceID, topic, group, handle string) error
	// NoteAuthFailure counts a refused signature, for metrics.
	NoteAuthFailure(instanceID string)
	// NoteThrottled counts a call refused for the instance's limits, memory
	// included, for metrics.
	NoteThrottled(instanceID string)
}

// Limits bound what connections may hold. Zero fields take the defaults.
type Limits struct {
	// MaxConns and MaxConnsPerHost cap concurrent connections in total and per
	// client address (defaults: connlimit's).
	MaxConns, MaxConnsPerHost int
	// MaxStreams caps the calls in progress on one connection (default 1024:
	// a client's long polls and its Telemetry stream share its connection).
	MaxStreams int
	// ClientExpiry forgets a client that has made no call for this long (default
	// 120 s; the clients send a heartbeat every 10 s, and the Go client never says
	// it is going away).
	ClientExpiry time.Duration
	// RequestTimeout bounds how long after a call opens its request must have
	// arrived whole (default DefaultRequestTimeout; see admission.go).
	RequestTimeout time.Duration
	// Memory bounds the requests and receive answers all calls in progress hold
	// at once (default DefaultMemory), InstanceMemory one instance's (default
	// DefaultInstanceMemory; see memory.go).
	Memory, InstanceMemory int
	// LongPolling is how long a receive waits for messages when the request names
	// no time, and what the Settings reply tells consumers (default 20 s, the
	// Apache proxy's; at most the broker's 30 s).
	LongPolling time.Duration
}

// Defaults of Limits.
const (
	DefaultMaxStreams   = 1024
	DefaultClientExpiry = 120 * time.Second
	DefaultLongPolling  = 20 * time.Second
)

func (l Limits) withDefaults() Limits {
	if l.MaxStreams <= 0 {
		l.MaxStreams = DefaultMaxStreams
	}
	if l.ClientExpiry <= 0 {
		l.ClientExpiry = DefaultClientExpiry
	}
	if l.LongPolling <= 0 {
		l.LongPolling = DefaultLongPolling
	}
	if l.Memory <= 0 {
		l.Memory = DefaultMemory
	}
	if l.InstanceMemory <= 0 {
		l.InstanceMemory = DefaultInstanceMemory
	}
	if l.RequestTimeout <= 0 {
		l.RequestTimeout = DefaultRequestTimeout
	}
	l.LongPolling = min(l.LongPolling, broker.MaxPopWait)
	return l
}

// maxRecvMessage bounds one request: a message of the largest body the broker
// stores, its properties and the envelope. A gzipped body is smaller on the wire.
const maxRecvMessage = broker.MaxBodySize + 1<<20

// shutdownGrace bounds how long Start waits for calls in progress once its
// context ends; long polls and Telemetry streams end at once.
const shutdownGrace = 10 * time.Second

// Server serves the gRPC endpoint. It is a manager.Runnable.
type Server struct {
	// Addr is the listen address, host:port.
	Addr string
	// listener is the capped listener once serving, for Connections.
	listener atomic.Pointer[connlimit.Listener]
	// Advertise is the host:port clients reach the endpoint at; routes carry it,
	// and the clients send everything but the route queries there.
	Advertise string
	Broker    Broker
	Log       logr.Logger
	// Listener, when set, is served instead of listening on Addr.
	Listener net.Listener
	// Limits bound connections; zero fields take the defaults.
	Limits Limits
	// TLS, when set, serves TLS (with ALPN h2, which grpc-go clients require);
	// PlainText then says which client addresses may still speak plain text on the
	// same port (nil: none), told apart by their first byte, as the Apache proxy
	// does. The Go client always dials TLS; the Node client dials plain text unless
	// told otherwise.
	TLS       *tls.Config
	PlainText func(net.Addr) bool

	ready    chan net.Addr
	lim      Limits
	clients  *registry
	renewals renewals
	memory   *membudget.Shares
	// stopping ends when the server stops, and with it long polls and Telemetry
	// streams.
	stopping context.Context
	stop     context.CancelFunc
}

// NewServer returns a server of b on addr, advertising advertise.
func NewServer(addr, advertise string, b Broker, log logr.Logger) *Server {
	return &Server{Addr: addr, Advertise: advertise, Broker: b, Log: log, ready: make(chan net.Addr, 1)}
}

// NeedLeaderElection reports false: the data plane serves on every replica.
func (s *Server) NeedLeaderElection() bool { return false }

// Listening yields the bound address once the server listens.
func (s *Server) Listening() <-chan net.Addr { return s.ready }

// Connections reports the server's open connections and those refused past its
// caps, for metrics.
func (s *Server) Connections() connlimit.Stats { return s.listener.Load().Stats() }

// Start listens and serves until ctx ends, then stops gracefully.
func (s *Server) Start(ctx context.Context) error {
	ln := s.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.Addr); err != nil {
			return fmt.Errorf("failed to listen for gRPC on %s: %w", s.Addr, err)
		}
	}
	if s.Advertise == "" {
		s.Advertise = ln.Addr().String()
	}
	if _, _, err := splitAdvertise(s.Advertise); err != nil {
		_ = ln.Close()
		return err
	}
	s.lim = s.Limits.withDefaults()
	s.memory = membudget.NewShares(s.lim.Memory, s.lim.InstanceMemory)
	s.clients = newRegistry()
	s.stopping, s.stop = context.WithCancel(context.Background())
	defer s.stop()
	capped := connlimit.Wrap(ln, s.lim.MaxConns, s.lim.MaxConnsPerHost, refuse)
	s.listener.Store(capped)
	ln = wiretls.Listen(capped, withH2(s.TLS), s.PlainText)
	srv := grpc.NewServer(append(s.admissionOptions(),
		grpc.MaxRecvMsgSize(maxRecvMessage),
		grpc.MaxConcurrentStreams(uint32(s.lim.MaxStreams)),
		// Neither client sends keepalive pings (1.4); a dead peer is found by TCP.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	srv.RegisterService(s.budgetedService(), &service{s: s})
	s.ready <- ln.Addr()
	s.Log.Info("Serving RocketMQ gRPC (apache.rocketmq.v2.MessagingService)", "address", ln.Addr().String(), "advertise", s.Advertise)

	var wg sync.WaitGroup
	hkCtx, stopHousekeeping := context.WithCancel(ctx)
	wg.Go(func() { s.housekeep(hkCtx) })
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("gRPC server failed: %w", err)
	case <-ctx.Done():
	}
	s.stop()
	stopHousekeeping()
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		srv.Stop()
		<-stopped
	}
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// withH2 returns cfg offering ALPN h2: grpc-go clients since 1.67 refuse a TLS
// server that negotiates none (1.2).
func withH2(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	cfg = cfg.Clone()
	if !slices.Contains(cfg.NextProtos, "h2") {
		cfg.NextProtos = append([]string{"h2"}, cfg.NextProtos...)
	}
	return cfg
}

// refuse closes a connection past the caps: gRPC has nothing to say before the
// client's preface.
func refuse(c net.Conn, _ string) { _ = c.Close() }

// housekeep forgets clients that went silent, pushes due check-backs and renews
// auto-renewed deliveries.
func (s *Server) housekeep(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.clients.expire(time.Now().Add(-s.lim.ClientExpiry))
			s.sendCheckBacks()
			s.renew()
		}
	}
}

// callContext is ctx, ended also when the server stops.
func (s *Server) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.stopping, cancel)
	return ctx, func() { stop(); cancel() }
}

// splitAdvertise parses the advertised host:port.
func splitAdvertise(advertise string) (string, int, error) {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil {
		return "", 0, fmt.Errorf("advertised gRPC address %q: %w", advertise, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return "", 0, fmt.Errorf("advertised gRPC address %q has no port", advertise)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return host, p, nil
}

// endpoints are the advertised address as routes carry it.
func (s *Server) endpoints() *pb.Endpoints {
	host, port, _ := splitAdvertise(s.Advertise)
	scheme := pb.AddressScheme_DOMAIN_NAME
	if ip, err := netip.ParseAddr(host); err == nil {
		scheme = pb.AddressScheme_IPv4
		if ip.Is6() && !ip.Is4In6() {
			scheme = pb.AddressScheme_IPv6
		}
	}
	return &pb.Endpoints{Scheme: scheme, Addresses: []*pb.Address{{Host: host, Port: int32(port)}}}
}
