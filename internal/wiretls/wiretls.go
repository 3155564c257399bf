// Package wiretls serves TLS and, where allowed, plain text on one listener, told
// apart by the first byte a client sends (a TLS record starts with 0x16, which
// neither an HTTP request nor a remoting frame of a sane size does), as the Apache
// RocketMQ proxy does. Certificates are read from a directory, the way a mounted
// kubernetes.io/tls Secret presents them (tls.crt, tls.key, ca.crt), and read again
// when the files change, so a certificate cert-manager renews is served without a
// restart.
package wiretls

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File names of a kubernetes.io/tls Secret mounted as a directory.
const (
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	CAFile   = "ca.crt"
)

// handshakeTimeout bounds the sniff and the TLS handshake of a connection, so a
// client that connects and sends nothing gives its connection up.
const handshakeTimeout = 10 * time.Second

// Certs serves the key pair in a directory, reloading it when it changes.
type Certs struct {
	dir string

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time
	checked time.Time
}

// LoadCerts reads the key pair in dir; it fails if there is none.
func LoadCerts(dir string) (*Certs, error) {
	c := &Certs{dir: dir}
	if _, err := c.get(time.Now()); err != nil {
		return nil, err
	}
	return c, nil
}

// Config returns a server configuration serving c.
func (c *Certs) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.get(time.Now())
		},
	}
}

// CA returns the PEM of the CA that signed the certificate, if the directory has
// one (cert-manager writes it), for clients to trust.
func (c *Certs) CA() ([]byte, error) {
	raw, err := os.ReadFile(filepath.Join(c.dir, CAFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return raw, err
}

// get returns the current key pair, looking at the files at most once a second.
func (c *Certs) get(now time.Time) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && now.Sub(c.checked) < time.Second {
		return c.cert, nil
	}
	c.checked = now
	info, err := os.Stat(filepath.Join(c.dir, CertFile))
	if err != nil {
		if c.cert != nil {
			return c.cert, nil // mid-rotation: keep serving the last good pair
		}
		return nil, fmt.Errorf("no TLS certificate in %s: %w", c.dir, err)
	}
	if c.cert != nil && info.ModTime().Equal(c.modTime) {
		return c.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(c.dir, CertFile), filepath.Join(c.dir, KeyFile))
	if err != nil {
		if c.cert != nil {
			return c.cert, nil
		}
		return nil, fmt.Errorf("failed to load the TLS key pair in %s: %w", c.dir, err)
	}
	c.cert, c.modTime = &pair, info.ModTime()
	return c.cert, nil
}

// Loopback allows plain text from loopback addresses only: dev mode's clients.
func Loopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// Listen wraps ln: a connection whose first byte starts a TLS handshake is served
// TLS with cfg; any other is served plain text if plain allows its address, and
// closed otherwise. With cfg nil every connection is plain text. The sniff happens
// on the connection's first read, in its own goroutine, so a silent client never
// holds up Accept.
func Listen(ln net.Listener, cfg *tls.Config, plain func(net.Addr) bool) net.Listener {
	if cfg == nil {
		return ln
	}
	return &listener{Listener: ln, cfg: cfg, plain: plain}
}

type listener struct {
	net.Listener
	cfg   *tls.Config
	plain func(net.Addr) bool
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, l: l}, nil
}

// sniffConn decides, at its first read or write, whether it is TLS.
type sniffConn struct {
	net.Conn
	l    *listener
	once sync.Once
	use  net.Conn // the TLS connection, or the buffered plain one
	err  error

	mu           sync.Mutex
	readDeadline time.Time // the caller's, restored after the sniff
}

// SetReadDeadline remembers the caller's deadline, which the sniff restores.
func (c *sniffConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *sniffConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDeadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

// restoreDeadline puts the caller's read deadline back after the sniff's.
func (c *sniffConn) restoreDeadline() {
	c.mu.Lock()
	t := c.readDeadline
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(t)
}

func (c *sniffConn) decide() {
	c.once.Do(func() {
		c.mu.Lock()
		limit := time.Now().Add(handshakeTimeout)
		if !c.readDeadline.IsZero() && c.readDeadline.Before(limit) {
			limit = c.readDeadline
		}
		c.mu.Unlock()
		_ = c.Conn.SetReadDeadline(limit)
		br := bufio.NewReaderSize(c.Conn, 512)
		first, err := br.Peek(1)
		if err != nil {
			c.err = err
			return
		}
		buffered := &peekedConn{Conn: c.Conn, r: br}
		if first[0] == 0x16 { // a TLS handshake record
			tc := tls.Server(buffered, c.l.cfg)
			if err := tc.Handshake(); err != nil {
				c.err = fmt.Errorf("TLS handshake: %w", err)
				return
			}
			c.restoreDeadline()
			c.setUse(tc)
			return
		}
		if c.l.plain == nil || !c.l.plain(c.Conn.RemoteAddr()) {
			c.err = errPlainRefused
			return
		}
		c.restoreDeadline()
		c.setUse(buffered)
	})
}

var errPlainRefused = errors.New("plain text is refused: connect with TLS")

func (c *sniffConn) Read(p []byte) (int, error) {
	c.decide()
	if c.err != nil {
		_ = c.Conn.Close()
		return 0, c.err
	}
	return c.use.Read(p)
}

func (c *sniffConn) Write(p []byte) (int, error) {
	c.decide()
	if c.err != nil {
		_ = c.Conn.Close()
		return 0, c.err
	}
	return c.use.Write(p)
}

// setUse records the connection decided on; Close may read it from another
// goroutine while a first read decides.
func (c *sniffConn) setUse(u net.Conn) {
	c.mu.Lock()
	c.use = u
	c.mu.Unlock()
}

func (c *sniffConn) Close() error {
	c.mu.Lock()
	u := c.use
	c.mu.Unlock()
	if u != nil {
		return u.Close()
	}
	return c.Conn.Close()
}

// IsTLS reports whether the connection was served TLS (after its first read).
func IsTLS(c net.Conn) bool {
	s, ok := c.(*sniffConn)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, tlsConn := s.use.(*tls.Conn)
	return tlsConn
}

// peekedConn reads through the reader that holds the sniffed byte.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
