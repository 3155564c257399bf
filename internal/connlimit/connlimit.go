// Package connlimit caps a listener's concurrent connections, in total and per
// client address, so that one client (or a crowd of slow ones) cannot hold every
// file descriptor and goroutine of a process every tenant shares. A connection past
// a cap is answered with the protocol's own refusal, then closed.
package connlimit

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults: each open connection costs a goroutine and its buffers (about 10 KiB
// idle); 8192 of them stay well inside the manager's memory limit, and one address
// (a node, a NAT gateway) may hold an eighth of them.
const (
	DefaultTotal   = 8192
	DefaultPerHost = 1024
)

// refuseTimeout bounds the write of a refusal to a client that does not read.
const refuseTimeout = time.Second

// Listener wraps a listener with the caps.
type Listener struct {
	net.Listener
	total, perHost int
	// refuse writes the refusal to a connection past a cap; nil closes it
	// without a word.
	refuse func(c net.Conn, reason string)

	mu      sync.Mutex
	open    int
	byHost  map[string]int
	refused atomic.Uint64
}

// Wrap caps ln at total connections and perHost per client address (zero: the
// defaults). refuse, if not nil, answers a refused connection before it closes.
func Wrap(ln net.Listener, total, perHost int, refuse func(c net.Conn, reason string)) *Listener {
	if total <= 0 {
		total = DefaultTotal
	}
	if perHost <= 0 {
		perHost = DefaultPerHost
	}
	return &Listener{Listener: ln, total: total, perHost: perHost, refuse: refuse, byHost: map[string]int{}}
}

// Accept returns the next connection within the caps; it refuses the others.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := HostOf(c.RemoteAddr())
		if reason := l.admit(host); reason != "" {
			l.refused.Add(1)
			go l.turnAway(c, reason)
			continue
		}
		return &conn{Conn: c, l: l, host: host}, nil
	}
}

// admit counts a connection from host in, or says why it cannot be.
func (l *Listener) admit(host string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.total:
		return "the server holds as many connections as it takes"
	case l.byHost[host] >= l.perHost:
		return "this address holds as many connections as one address may"
	}
	l.open++
	l.byHost[host]++
	return ""
}

func (l *Listener) release(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byHost[host]--; l.byHost[host] <= 0 {
		delete(l.byHost, host)
	}
}

// Open returns how many connections are open.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Stats are a listener's connections, for metrics.
type Stats struct {
	// Open connections now; Refused past a cap since the listener was made.
	Open    int
	Refused uint64
}

// Stats reports the listener's connections; a nil listener (a server not yet
// listening) has none.
func (l *Listener) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	return Stats{Open: l.Open(), Refused: l.refused.Load()}
}

func (l *Listener) turnAway(c net.Conn, reason string) {
	defer c.Close()
	if l.refuse != nil {
		_ = c.SetWriteDeadline(time.Now().Add(refuseTimeout))
		l.refuse(c, reason)
	}
}

// HostOf is the client address a connection counts against: its IP.
func HostOf(a net.Addr) string {
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// conn gives its slot back once, on its first Close.
type conn struct {
	net.Conn
	l    *Listener
	host string
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.l.release(c.host) })
	return c.Conn.Close()
}
