// Package console is Orderly's web console: plain HTML and a little JavaScript,
// embedded in the binary, over a JSON API under /api/. It shows instances, topics
// with their publish rates, groups with their backlog, messages looked up by id,
// key or time, and dead letters; it re-drives dead letters and resets a group's
// consumption to a time.
//
// It holds no semantic of its own: every figure and every change is a call on the
// broker. Nor does it hold credentials: callers send a Kubernetes bearer token,
// which the apiserver reviews (TokenReview), and each request is allowed only if
// the apiserver says the token's user may get (reads) or update (writes) the
// Kubernetes objects behind what it shows (SubjectAccessReview).
package console

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/connlimit"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

//go:embed static
var static embed.FS

// Broker is what the console reads and changes of the broker.
type Broker interface {
	Instances() []broker.InstanceInfo
	Topics(instanceID string) ([]broker.TopicInfo, error)
	Groups(instanceID string) ([]broker.GroupInfo, error)
	Group(instanceID, id string) (broker.GroupInfo, error)
	GroupStats(instanceID, groupID string) (broker.GroupStats, error)
	MessageState(instanceID, id string) (broker.MessageState, error)
	MessagesByKey(ctx context.Context, instanceID, topicName string, q broker.KeyQuery) ([]broker.StoredMessage, error)
	MessagesBetween(instanceID, topicName string, from, to time.Time, max int) (broker.RangeResult, error)
	DeadLetters(instanceID, groupID string, offset int64, max int) ([]broker.StoredMessage, int64, error)
	Redrive(ctx context.Context, instanceID, groupID string, ids []string) (int, error)
	ResetOffsets(instanceID, groupID, topicName string, ts time.Time) ([]int64, error)
}

// Server limits.
const (
	maxConns        = 256
	maxConnsPerHost = 64
	maxHeaderBytes  = 32 << 10
	// requestTimeout bounds one API request, reviews and broker calls included.
	requestTimeout = 15 * time.Second
	shutdownGrace  = 5 * time.Second
)

// Server serves the console. It is a manager.Runnable.
type Server struct {
	// Addr is the listen address, host:port.
	Addr   string
	Broker Broker
	// Objects reads the Instances and ConsumerGroups behind the broker's
	// instances and groups (the manager's cached client).
	Objects  client.Reader
	Reviewer Reviewer
	Log      logr.Logger
	// TLS, when set, serves HTTPS; PlainText then says which client addresses may
	// still speak plain HTTP on the same port (nil: none).
	TLS       *tls.Config
	PlainText func(net.Addr) bool
	// Now is the clock of the review cache; time.Now when nil.
	Now func() time.Time

	ready chan net.Addr
}

// NewServer returns a console for b on addr.
func NewServer(addr string, b Broker, objects client.Reader, reviewer Reviewer, log logr.Logger) *Server {
	return &Server{Addr: addr, Broker: b, Objects: objects, Reviewer: reviewer, Log: log, ready: make(chan net.Addr, 1)}
}

// NeedLeaderElection reports false: the console reads the broker every replica
// embeds, as the protocol endpoints serve it.
func (s *Server) NeedLeaderElection() bool { return false }

// Listening returns a channel that yields the bound address once the server listens.
func (s *Server) Listening() <-chan net.Addr { return s.ready }

// Handler returns the console's HTTP handler: the API and the embedded pages.
func (s *Server) Handler() http.Handler {
	now := s.Now
	if now == nil {
		now = time.Now
	}
	a := &api{b: s.Broker, objects: s.Objects, reviews: newCachingReviewer(s.Reviewer, now), log: s.Log,
		reads: make(chan struct{}, maxMessageReads)}
	mux := http.NewServeMux()
	a.routes(mux)
	files, _ := fs.Sub(static, "static")
	pages := http.FileServerFS(files)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		pages.ServeHTTP(w, r)
	})
	return securityHeaders(mux)
}

// securityHeaders sets what every answer carries: the pages load nothing from
// anywhere but the console, run no inline script, and are framed by no one.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// Start listens and serves until ctx ends, then shuts down.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("failed to listen for the console on %s: %w", s.Addr, err)
	}
	ln = wiretls.Listen(connlimit.Wrap(ln, maxConns, maxConnsPerHost, func(c net.Conn, _ string) { _ = c.Close() }), s.TLS, s.PlainText)
	srv := &http.Server{
		Handler: http.TimeoutHandler(s.Handler(), requestTimeout, `{"code":"Timeout","message":"the request took too long"}`),
		// Every phase of a request has a deadline.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      requestTimeout + 5*time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s.ready <- ln.Addr()
	s.Log.Info("Serving the web console", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("console server failed: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("failed to shut down the console: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
