package remoting

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	rocketmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// rocketmq-client-go v2.1.2 has no TLS at all, so these tests speak TLS with
// crypto/tls and the frames the other tests build, signed as the Go client signs.
// (The Java client turns TLS on with -Dtls.enable=true.)

// tlsEnv serves the endpoint over TLS with a CA made for the test, plain text
// allowed from plain's addresses; it returns the pool that trusts the CA.
func tlsEnv(t *testing.T, plain func(net.Addr) bool) (*env, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	if err := wiretls.EnsureDevCerts(dir, []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	certs, err := wiretls.LoadCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.CA()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("no CA")
	}
	e := newEnvWith(t, broker.Limits{}, func(s *Server) { s.TLS, s.PlainText = certs.Config(), plain })
	e.topic("TopicA", broker.Normal, 1)
	return e, pool
}

func dialTLS(t *testing.T, addr string, pool *x509.CertPool) *rawClient {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, conn: c, r: bufio.NewReader(c)}
}

// plainRefused reports whether a plain-text connection from local gets no answer
// and is closed.
func plainRefused(t *testing.T, addr string, local net.IP) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from %s: %v", local, err)
	}
	defer c.Close()
	if _, err := c.Write(signedFrame(t, reqGetRouteInfo, 1, map[string]string{"topic": "TopicA"}, nil)); err != nil {
		return true
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := ReadCommand(bufio.NewReader(c))
	if err == nil && res.Code == codeSuccess {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("plain text from %s: neither answered nor closed", local)
	}
	return true
}

func TestTLS(t *testing.T) {
	e, pool := tlsEnv(t, nil)
	c := dialTLS(t, e.nameAddr, pool)
	if res := c.call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("route over TLS: %d %s", res.Code, res.Remark)
	}
	if res := c.call(reqSendMessage, sendExt("TopicA", "TAGS\x01a\x02"), []byte("over TLS"), testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("send over TLS: %d %s", res.Code, res.Remark)
	}
	e.group("GID_tls", broker.TCP, 16)
	if got := e.queueMessages(testInstance, "GID_tls", "TopicA", 0); len(got) != 1 || string(got[0].Body) != "over TLS" {
		t.Fatalf("stored %+v", got)
	}
	// Without PlainText, plain text is refused, the real (plain-text) client's
	// included.
	if !plainRefused(t, e.nameAddr, net.IPv4(127, 0, 0, 1)) {
		t.Fatal("plain text served on a TLS-only endpoint")
	}
	p, err := rocketmq.NewProducer(producer.WithNameServer([]string{e.nameAddr}), producer.WithCredentials(e.creds()),
		producer.WithNamespace(testInstance), producer.WithRetry(0), producer.WithSendMsgTimeout(2*time.Second), producer.WithInstanceName("plain"))
	if err != nil {
		t.Fatal(err)
	}
	if err = p.Start(); err == nil {
		_, err = p.SendSync(context.Background(), primitive.NewMessage("TopicA", []byte("plain")))
		_ = p.Shutdown()
	}
	if err == nil {
		t.Fatal("the Go client sent in plain text to a TLS-only endpoint")
	}
	// A client that does not trust the certificate refuses it.
	if c, err := tls.Dial("tcp", e.nameAddr, &tls.Config{ServerName: "127.0.0.1", RootCAs: x509.NewCertPool()}); err == nil {
		c.Close()
		t.Fatal("a certificate from an unknown CA was accepted")
	}
}

func TestPlainTextOnlyWherePlainTextAllowsIt(t *testing.T) {
	// Loopback, as dev mode allows: TLS and plain text on one port, the real client
	// in plain text.
	e, pool := tlsEnv(t, wiretls.Loopback)
	if res := dialTLS(t, e.nameAddr, pool).call(reqGetRouteInfo, map[string]string{"topic": "TopicA"}, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("route over TLS: %d", res.Code)
	}
	if plainRefused(t, e.nameAddr, net.IPv4(127, 0, 0, 1)) {
		t.Fatal("plain text from loopback refused")
	}
	p := e.producer(producer.WithGroupName("PID_plain"))
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("TopicA", []byte("plain"))); err != nil {
		t.Fatalf("the Go client in plain text from loopback: %v", err)
	}
	// One address only: plain text from the others is refused.
	only := net.IPv4(127, 0, 0, 2)
	e2, _ := tlsEnv(t, func(a net.Addr) bool { return a.(*net.TCPAddr).IP.Equal(only) })
	if plainRefused(t, e2.nameAddr, only) {
		t.Fatal("plain text from the allowed address refused")
	}
	if !plainRefused(t, e2.nameAddr, net.IPv4(127, 0, 0, 1)) {
		t.Fatal("plain text from an address PlainText does not allow was served")
	}
}
