// Package mqhttp serves the mq-http protocol of ApsaraMQ for RocketMQ's HTTP access
// on top of the broker, so the public mq-http SDKs work against Orderly unchanged.
// The facts about the wire it relies on (operations, signature, documents, codes,
// and where the SDKs differ) are written down in docs/mqhttp.md.
package mqhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/connlimit"
	"github.com/orderly-dev/orderly/internal/membudget"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// shutdownGrace bounds how long Start waits for in-flight requests (long polls
// included, which end early when the broker closes) after its context ends.
const shutdownGrace = 35 * time.Second

// Limits bound what connections may hold.
type Limits struct {
	// ReadHeaderTimeout: a request's headers must arrive within it (default 10 s);
	// ReadTimeout: the whole request (default 60 s, 24 MiB at 400 KiB/s);
	// WriteTimeout: the answer, a long poll's 30 s included (default 45 s);
	// IdleTimeout: a kept-alive connection between requests (default 120 s).
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// MaxConns and MaxConnsPerHost cap concurrent connections in total and per
	// client address (defaults: connlimit's).
	MaxConns, MaxConnsPerHost int
	// Memory bounds the bodies and answers all requests in progress hold at once
	// (default 128 MiB), InstanceMemory one instance's (default 32 MiB: a 4 MiB body
	// escaped is at most 24 MiB, so one always fits).
	Memory, InstanceMemory int
}

func (l Limits) withDefaults() Limits {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&l.ReadHeaderTimeout, 10 * time.Second}, {&l.ReadTimeout, 60 * time.Second},
		{&l.WriteTimeout, maxWait + 15*time.Second}, {&l.IdleTimeout, 120 * time.Second}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if l.Memory <= 0 {
		l.Memory = DefaultMemory
	}
	if l.InstanceMemory <= 0 {
		l.InstanceMemory = DefaultInstanceMemory
	}
	return l
}

const maxHeaderBytes = 64 << 10

// refuseConnection answers a connection past the caps with the protocol's error
// document, as a 503 the SDKs report with its code.
func refuseConnection(c net.Conn, reason string) {
	body := errorDocument("TooManyConnections", "Connection refused: "+reason+".", newRequestID(), "")
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml;charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// Server serves the mq-http endpoint. It is a manager.Runnable.
type Server struct {
	// Addr is the listen address, host:port.
	Addr string
	// listener is the capped listener once serving, for Connections.
	listener atomic.Pointer[connlimit.Listener]
	Broker   Broker
	Log      logr.Logger
	// Now is the clock requests' Date headers are checked against.
	Now func() time.Time
	// Limits bound connections; zero fields take the defaults.
	Limits Limits
	// TLS, when set, serves HTTPS; PlainText then says which client addresses may
	// still speak plain HTTP on the same port (nil: none), told apart by their
	// first byte.
	TLS       *tls.Config
	PlainText func(net.Addr) bool

	ready chan net.Addr
	// memory is what requests hold, set by Start.
	memory *membudget.Shares
}

// NewServer returns a server for b on addr.
func NewServer(addr string, b Broker, log logr.Logger) *Server {
	return &Server{Addr: addr, Broker: b, Log: log, Now: time.Now, ready: make(chan net.Addr, 1)}
}

// NeedLeaderElection reports false: the data plane serves on every replica, whether
// or not it leads the controllers.
func (s *Server) NeedLeaderElection() bool { return false }

// Listening returns a channel that yields the bound address once the server listens.
func (s *Server) Listening() <-chan net.Addr { return s.ready }

// Connections reports the server's open connections and those refused past its
// caps, for metrics.
func (s *Server) Connections() connlimit.Stats { return s.listener.Load().Stats() }

// Start listens and serves until ctx ends, then shuts down gracefully.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("failed to listen for mq-http on %s: %w", s.Addr, err)
	}
	// Long polls end when the server stops, rather than holding shutdown up to 30 s.
	baseCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lim := s.Limits.withDefaults()
	h := newHandler(s.Broker, s.Now, lim)
	s.memory = h.memory
	capped := connlimit.Wrap(ln, lim.MaxConns, lim.MaxConnsPerHost, refuseConnection)
	s.listener.Store(capped)
	ln = wiretls.Listen(capped, s.TLS, s.PlainText)
	srv := &http.Server{
		Handler:     h,
		BaseContext: func(net.Listener) context.Context { return baseCtx },
		// Every phase of a request has a deadline, so a client that sends its
		// request slowly, or never its last byte, gives its connection up.
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s.ready <- ln.Addr()
	s.Log.Info("Serving mq-http", "address", ln.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("mq-http server failed: %w", err)
	case <-ctx.Done():
	}
	cancel()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("failed to shut down mq-http server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
