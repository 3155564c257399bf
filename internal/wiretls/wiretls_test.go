package wiretls

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// echoServer serves ln, echoing one line per connection.
func echoServer(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = io.WriteString(c, "echo "+line)
				}
			}()
		}
	}()
}

func devSetup(t *testing.T) (string, *Certs, *x509.CertPool) {
	dir := t.TempDir()
	if err := EnsureDevCerts(dir, []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	certs, err := LoadCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.CA()
	if err != nil || len(ca) == 0 {
		t.Fatalf("no CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return dir, certs, pool
}

func say(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestTLSAndPlainOnOnePort(t *testing.T) {
	_, certs, pool := devSetup(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, Listen(raw, certs.Config(), Loopback))
	tc, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS dial, trusting the dev CA: %v", err)
	}
	defer tc.Close()
	if got, err := say(t, tc); err != nil || got != "echo hi\n" {
		t.Fatalf("over TLS: %q %v", got, err)
	}
	pc, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got, err := say(t, pc); err != nil || got != "echo hi\n" {
		t.Fatalf("plain text from loopback: %q %v", got, err)
	}
}

func TestPlainTextRefusedWhereNotAllowed(t *testing.T) {
	_, certs, _ := devSetup(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, Listen(raw, certs.Config(), nil))
	pc, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if got, err := say(t, pc); err == nil || strings.HasPrefix(got, "echo") {
		t.Fatalf("plain text served where only TLS is allowed: %q %v", got, err)
	}
}

func TestARenewedCertificateIsServedWithoutARestart(t *testing.T) {
	dir, certs, _ := devSetup(t)
	first, err := certs.get(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// cert-manager renews: a new pair lands in the mounted directory.
	other := t.TempDir()
	if err := EnsureDevCerts(other, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{KeyFile, CertFile} {
		raw, err := os.ReadFile(filepath.Join(other, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(filepath.Join(dir, CertFile), later, later); err != nil {
		t.Fatal(err)
	}
	second, err := certs.get(later)
	if err != nil {
		t.Fatal(err)
	}
	if string(first.Certificate[0]) == string(second.Certificate[0]) {
		t.Fatal("the renewed certificate was not picked up")
	}
}

func TestASilentClientIsDroppedAfterTheHandshakeTimeout(t *testing.T) {
	_, certs, _ := devSetup(t)
	a, b := net.Pipe()
	defer b.Close()
	c := &sniffConn{Conn: a, l: &listener{cfg: certs.Config(), plain: Loopback}}
	// The caller's own read deadline wins when it is sooner.
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a read from a client that sent nothing succeeded")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the sniff ignored the caller's deadline")
	}
}
