package mqhttp

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
)

// These tests speak raw HTTP/1.1 over TCP, as a hostile client would.

func limitedServer(t *testing.T, lim Limits) string {
	t.Helper()
	addr, _ := limitedTenantServer(t, lim, broker.Limits{})
	return addr
}

func limitedTenantServer(t *testing.T, lim Limits, tenant broker.Limits) (string, *broker.Broker) {
	t.Helper()
	return startServer(t, tenant, func(s *Server) { s.Limits = lim })
}

// startServer runs the endpoint on loopback over a broker holding one instance
// (with the tenant limits), topic "t" and HTTP group "GID_http"; configure sets the
// server up before it starts.
func startServer(t *testing.T, tenant broker.Limits, configure func(*Server)) (string, *broker.Broker) {
	t.Helper()
	b, err := broker.Open(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Limits: tenant,
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureTopic(testInstance, broker.TopicConfig{Name: "t", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureGroup(testInstance, broker.GroupConfig{ID: "GID_http", Protocol: broker.HTTP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer("127.0.0.1:0", b, testr.New(t))
	configure(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return (<-srv.Listening()).String(), b
}

// signedHead returns the head of a signed publish request declaring length bytes
// of body, with extra headers.
func signedHead(t *testing.T, addr string, length int, extra string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/t/messages", nil)
	req.Header.Set("Content-Type", "text/xml;charset=utf-8")
	req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	req.Header.Set("X-Mq-Version", "2015-06-06")
	req.RequestURI = "/topics/t/messages"
	sig := encodeSignature(sign(testSK, stringToSign(req)))
	head := fmt.Sprintf("POST /topics/t/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml;charset=utf-8\r\nDate: %s\r\nx-mq-version: 2015-06-06\r\nAuthorization: MQ %s:%s\r\n",
		addr, req.Header.Get("Date"), testAK, sig)
	if length >= 0 {
		head += fmt.Sprintf("Content-Length: %d\r\n", length)
	}
	return head + extra + "\r\n"
}

func roundTrip(t *testing.T, addr, raw string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

func TestNoBodyIsReadBeforeAuthentication(t *testing.T) {
	addr := limitedServer(t, Limits{})
	// An unsigned request declaring 20 MiB, sending none of it, is answered at
	// once: the server waits for no body it would have to hold.
	status, body := roundTrip(t, addr, "POST /topics/t/messages HTTP/1.1\r\nHost: x\r\nDate: "+
		time.Now().UTC().Format(http.TimeFormat)+"\r\nAuthorization: MQ nobody:AAAA\r\nContent-Length: 20971520\r\n\r\n")
	if status != http.StatusForbidden || !strings.Contains(body, "<Code>") {
		t.Fatalf("unsigned 20 MiB request: %d %s", status, body)
	}
	// Signed but declaring more than the limit: refused before reading.
	status, body = roundTrip(t, addr, signedHead(t, addr, maxRequestBytes+1, ""))
	if status != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized declared body: %d %s", status, body)
	}
	// Signed, chunked: no size to bound, so no.
	status, body = roundTrip(t, addr, signedHead(t, addr, -1, "Transfer-Encoding: chunked\r\n")+"5\r\nhello\r\n0\r\n\r\n")
	if status != http.StatusLengthRequired || !strings.Contains(body, "MissingContentLength") {
		t.Fatalf("chunked body: %d %s", status, body)
	}
}

// Found by FuzzWire: below 256 KiB, net/http reads an unread body away before it
// writes the answer, unless the answer closes the connection.
func TestASmallUnreadBodyIsNotWaitedFor(t *testing.T) {
	addr := limitedServer(t, Limits{ReadTimeout: 5 * time.Second})
	for name, head := range map[string]string{
		"unsigned": "POST /topics/t/messages HTTP/1.1\r\nHost: x\r\nDate: " + time.Now().UTC().Format(http.TimeFormat) +
			"\r\nAuthorization: MQ nobody:AAAA\r\nContent-Length: 100\r\n\r\n",
		"no such resource": "POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
		"chunked":          signedHead(t, addr, -1, "Transfer-Encoding: chunked\r\n"),
	} {
		start := time.Now()
		status, body := roundTrip(t, addr, head)
		if status < 400 || !strings.Contains(body, "<Code>") {
			t.Errorf("%s: %d %s", name, status, body)
		}
		if waited := time.Since(start); waited > 2*time.Second {
			t.Errorf("%s: answered after %v, once the server gave up waiting for the body", name, waited)
		}
	}
}

func TestASlowClientLosesItsConnection(t *testing.T) {
	addr := limitedServer(t, Limits{ReadHeaderTimeout: 200 * time.Millisecond, ReadTimeout: 400 * time.Millisecond})
	for name, raw := range map[string]string{
		"headers never finished": "POST /topics/t/messages HTTP/1.1\r\nHost: x\r\n",
		"body never finished":    "", // filled below
	} {
		if raw == "" {
			raw = signedHead(t, addr, 100, "") + "<Message>"
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		// The server gives up on it: the connection ends (with or without an
		// answer) long before the client's own 10 s deadline.
		start := time.Now()
		_, _ = io.ReadAll(c)
		if waited := time.Since(start); waited > 5*time.Second {
			t.Errorf("%s: the connection was held %v", name, waited)
		}
		c.Close()
	}
}

func TestConnectionsPastTheCapAreRefusedInTheProtocolsTerms(t *testing.T) {
	addr := limitedServer(t, Limits{MaxConns: 2, MaxConnsPerHost: 2})
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Let the server accept both before the third arrives.
	status, body := 0, ""
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		status, body = roundTrip(t, addr, "GET /topics/t/messages HTTP/1.1\r\nHost: x\r\n\r\n")
		if status == http.StatusServiceUnavailable {
			break
		}
	}
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "TooManyConnections") {
		t.Fatalf("third connection: %d %s", status, body)
	}
}

func TestATenantsConnectionQuotaCountsItsRequestsInProgress(t *testing.T) {
	addr, b := limitedTenantServer(t, Limits{}, broker.Limits{Connections: 1})
	c := &Client{Endpoint: "http://" + addr, AccessKeyID: testAK, AccessKeySecret: testSK}
	ctx := context.Background()
	poll := make(chan int, 1)
	go func() {
		status, _, err := c.Do(ctx, http.MethodGet, "/topics/t/messages?consumer=GID_http&numOfMessages=1&waitseconds=3", nil, nil)
		if err != nil {
			t.Error(err)
		}
		poll <- status
	}()
	// Once the long poll holds the tenant's one connection, its next request is
	// throttled.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if u, _ := b.Usage(testInstance); u.Connections == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the long poll never started")
		}
		runtime.Gosched()
	}
	status, body, err := c.Do(ctx, http.MethodGet, "/topics/t/messages?consumer=GID_http&numOfMessages=1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), "Throttling") {
		t.Fatalf("a second request while the first polls: %d %s", status, body)
	}
	if got := <-poll; got != http.StatusNotFound {
		t.Fatalf("the long poll ended with %d, want 404 MessageNotExist", got)
	}
	// Once it ended, requests go through again.
	if status, body, _ := c.Do(ctx, http.MethodGet, "/topics/t/messages?consumer=GID_http&numOfMessages=1", nil, nil); status != http.StatusNotFound {
		t.Fatalf("after the poll: %d %s", status, body)
	}
}

func TestReadBodyGrowsAsTheBodyArrives(t *testing.T) {
	budgets := membudget.NewShares(DefaultMemory, maxRequestBytes)
	var h handler
	readBody := func(r io.Reader, n int64) ([]byte, error) {
		mem := budgets.Hold(testInstance, time.Now().Add(time.Second), nil)
		defer mem.Release()
		return h.readBody(context.Background(), r, n, mem)
	}
	want := bytes.Repeat([]byte("0123456789"), 30000) // 300 KB: past the initial buffer
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(want),
		"one byte": iotest.OneByteReader(bytes.NewReader(want)),
		"with EOF": iotest.DataErrReader(bytes.NewReader(want)),
	} {
		got, err := readBody(r, int64(len(want)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	if _, err := readBody(bytes.NewReader(want[:10]), 11); err != io.ErrUnexpectedEOF {
		t.Errorf("a short body: %v", err)
	}
	// Declaring the limit and sending 10 bytes takes the initial buffer, not the limit.
	a0 := allocated()
	if _, err := readBody(bytes.NewReader(want[:10]), maxRequestBytes); err != io.ErrUnexpectedEOF {
		t.Errorf("a short body: %v", err)
	}
	if got := allocated() - a0; got > 4<<20 {
		t.Errorf("allocated %d bytes for a body of 10 declared %d", got, maxRequestBytes)
	}
}
