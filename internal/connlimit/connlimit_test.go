package connlimit

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"
)

func TestCapsPerHostAndInTotal(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(raw, 3, 2, func(c net.Conn, reason string) { _, _ = c.Write([]byte("refused: " + reason + "\n")) })
	defer l.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(local string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	refusal := func(c net.Conn) string {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	dial("127.0.0.1")
	dial("127.0.0.1")
	server1 := <-accepted
	<-accepted
	if got := refusal(dial("127.0.0.1")); !strings.Contains(got, "this address") {
		t.Fatalf("third connection from one address: %q", got)
	}
	dial("127.0.0.2")
	<-accepted
	if got := refusal(dial("127.0.0.3")); !strings.Contains(got, "as many connections as it takes") {
		t.Fatalf("fourth connection in all: %q", got)
	}
	if n := l.Open(); n != 3 {
		t.Fatalf("%d open, want 3", n)
	}
	// Closing one, twice, frees one slot.
	server1.Close()
	server1.Close()
	if n := l.Open(); n != 2 {
		t.Fatalf("%d open after a close, want 2", n)
	}
	dial("127.0.0.1")
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection within the caps was not accepted")
	}
}
