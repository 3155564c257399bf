// Package mqhttp serves the mq-http protocol of ApsaraMQ for RocketMQ's HTTP access
// on top of the broker, so the public mq-http SDKs work against Orderly unchanged.
package mqhttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
)

// shutdownGrace bounds how long Start waits for in-flight requests (long polls
// included, which end early when the broker closes) after its context ends.
const shutdownGrace = 35 * time.Second

// Server serves the mq-http endpoint. It is a manager.Runnable.
type Server struct {
	// Addr is the listen address, host:port.
	Addr   string
	Broker Broker
	Log    logr.Logger
	// Now is the clock requests' Date headers are checked against.
	Now func() time.Time

	ready chan net.Addr
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

// Start listens and serves until ctx ends, then shuts down gracefully.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("failed to listen for mq-http on %s: %w", s.Addr, err)
	}
	// Long polls end when the server stops, rather than holding shutdown up to 30 s.
	baseCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := &http.Server{
		Handler:           &handler{broker: s.Broker, now: s.Now},
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
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
