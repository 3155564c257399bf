package mqhttp

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// wireProbe follows every request on its connection: an unsigned consume whose
// answer names its own host, so that a second answer is known to be the probe's.
const wireProbe = "GET /topics/T/messages?consumer=G&numOfMessages=1 HTTP/1.1\r\nHost: probe.invalid\r\n\r\n"

// wireLimits are the server's limits in FuzzWire, short so that a request the
// server waits on ends fast.
var wireLimits = Limits{ReadHeaderTimeout: 300 * time.Millisecond, ReadTimeout: 600 * time.Millisecond,
	WriteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second}

// netHTTPStatuses are the answers net/http gives itself, before any handler, to
// a request it cannot read as HTTP/1.1.
var netHTTPStatuses = []int{http.StatusBadRequest, http.StatusExpectationFailed, http.StatusRequestHeaderFieldsTooLarge,
	http.StatusNotImplemented, http.StatusHTTPVersionNotSupported}

// FuzzWire sends raw bytes to the real server on loopback, with short limits:
// a request head (in which $DATE, $LEN and $MD5 stand for the current date, the
// body's length and its Content-MD5; with sign set, the harness adds the
// Authorization a correct key would), then, unless the server already answered,
// the body, then a probe request. It asserts:
//   - an answer always comes, within the server's deadlines;
//   - an answer is the handler's, one the SDKs read with a code and status of the
//     protocol's, or net/http's own refusal of what is not HTTP, closing the
//     connection;
//   - a request that is not authenticated is answered before any of its body is
//     sent, and reaches the broker not at all;
//   - the body is read up to its Content-Length and not past it: the probe that
//     follows is answered as the probe.
func FuzzWire(f *testing.F) {
	s := fuzzSpy(f)
	srv := NewServer("127.0.0.1:0", s, logr.Discard())
	srv.Limits = wireLimits
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	f.Cleanup(func() { cancel(); <-done })
	addr := (<-srv.Listening()).String()

	// Heads as the Go SDK (fasthttp) writes them.
	sdkHead := func(method, target string) string {
		return method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: $LEN\r\nUser-Agent: mq-go-sdk/1.0.1(fasthttp)\r\n" +
			"Content-Type: text/xml;charset=utf-8\r\nContent-Md5: $MD5\r\nDate: $DATE\r\nX-Mq-Version: 2015-06-06\r\n"
	}
	for _, sign := range []bool{true, false} {
		f.Add(sdkHead("POST", "/topics/T/messages?ns=MQ_INST_f"), fuzzPublishBody, sign)
		f.Add(sdkHead("GET", "/topics/T/messages?consumer=G&ns=MQ_INST_f&numOfMessages=3&waitseconds=3"), []byte{}, sign)
		f.Add(sdkHead("GET", "/topics/O/messages?consumer=G&trans=order&numOfMessages=16"), []byte{}, sign)
		f.Add(sdkHead("DELETE", "/topics/T/messages?consumer=G&ns=MQ_INST_f"), fuzzAckBody, sign)
		f.Add(sdkHead("DELETE", "/topics/X/messages?consumer=&trans=rollback"), fuzzAckBody, sign)
		f.Add("POST /topics/T/messages HTTP/1.1\r\nHost: x\r\nDate: $DATE\r\nTransfer-Encoding: chunked\r\n", []byte("5\r\nhello\r\n0\r\n\r\n"), sign)
		f.Add("POST /topics/T/messages HTTP/1.1\r\nHost: x\r\nDate: $DATE\r\nContent-Length: 20971520\r\n", []byte{}, sign)
		f.Add("POST /topics/T/messages HTTP/1.1\r\nHost: x\r\nDate: $DATE\r\nContent-Length: 100\r\n", []byte("<Message>"), sign)
		f.Add("POST /topics/T/messages HTTP/1.1\r\nHost: x\r\nDate: $DATE\r\nContent-Length: 3\r\nContent-Length: 4\r\n", []byte("abcd"), sign)
		f.Add("POST /topics/T/messages HTTP/1.1\r\nHost: x\r\nDate: $DATE\r\nContent-Length: $LEN\r\nExpect: 100-continue\r\n", fuzzPublishBody, sign)
		f.Add("POST /topics/T/messages HTTP/1.0\r\nDate: $DATE\r\nContent-Length: $LEN\r\n", fuzzPublishBody, sign)
	}
	f.Add("GET /topics/T/messages HTTP/1.1\r\nHost: x\r\nAuthorization: MQ nobody:AAAA\r\nDate: $DATE\r\n", []byte{}, false)
	f.Add("GET /topics/T/messages HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", maxHeaderBytes+8192)+"\r\n", []byte{}, false)
	f.Add("GARBAGE\r\n", []byte("more garbage"), false)
	f.Add("GET /topics/T/messages HTTP/9.9\r\nHost: x\r\n", []byte{}, false)

	f.Fuzz(func(t *testing.T, head string, body []byte, signed bool) {
		now := time.Now()
		head = strings.NewReplacer("$DATE", now.UTC().Format(http.TimeFormat), "$LEN", strconv.Itoa(len(body)), "$MD5", sdkMD5(body)).Replace(head)
		head = strings.TrimRight(head, "\r\n") + "\r\n"
		req, perr := readHead(head + "\r\n")
		if perr == nil && signed {
			head += "Authorization: MQ ak:" + encodeSignature(sign(fuzzSecret, stringToSign(req))) + "\r\n"
			req, perr = readHead(head + "\r\n")
		}
		head += "\r\n"
		if errors.Is(perr, errExtra) {
			return // the head holds a second request: its framing is the fuzzer's
		}
		authenticated := false
		if perr == nil {
			_, e := authenticate(req, s.Broker, time.Now())
			authenticated = e == nil
		}
		// A body of a length the harness knows, and not too large, is sent
		// exactly, then the probe; any other as it is.
		framed := perr == nil && req.ContentLength >= 0 && req.ContentLength <= maxPostHandlerRead && len(req.TransferEncoding) == 0
		if framed {
			body = append(body, make([]byte, max(0, int(req.ContentLength)-len(body)))...)[:req.ContentLength]
		}
		probe := framed
		before := s.snapshot()

		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT left behind by thousands of runs
		defer c.Close()
		start := time.Now()
		_ = c.SetDeadline(start.Add(wireLimits.ReadTimeout + wireLimits.WriteTimeout + time.Second))
		br := bufio.NewReader(c)
		if _, err := io.WriteString(c, head); err != nil {
			t.Fatal(err)
		}
		var first *http.Response
		var firstBody []byte
		if perr == nil && !authenticated && req.ContentLength != 0 {
			// Nothing of the body is needed to refuse the request: the answer
			// comes before it is sent, well before the server would give up
			// waiting for it.
			_ = c.SetReadDeadline(start.Add(wireLimits.ReadTimeout / 2))
			first, firstBody, err = readAnswer(br, req)
			_ = c.SetReadDeadline(start.Add(wireLimits.ReadTimeout + wireLimits.WriteTimeout + time.Second))
			if err != nil {
				t.Fatalf("a request that is not authenticated, declaring %d bytes of body, had no answer before the body: %v after %v", req.ContentLength, err, time.Since(start))
			}
		}
		if first == nil || !first.Close {
			send := body
			if probe {
				send = append(send, wireProbe...)
			}
			_, _ = c.Write(send) // the server may have closed the connection already
		}
		if first == nil {
			first, firstBody, err = readAnswer(br, req)
			switch {
			case isTimeout(err):
				t.Fatalf("no answer within %v: the server hung", time.Since(start))
			case err != nil && perr == nil:
				t.Fatalf("no answer to a request net/http reads: %v (head %.200q)", err, head)
			case err != nil:
				return // the connection closed on something that is not HTTP
			}
		}
		if !authenticated && s.snapshot().effects != before.effects {
			t.Fatalf("a request that is not authenticated reached the broker: %d %s", first.StatusCode, firstBody)
		}
		if _, ok := first.Header["X-Mq-Request-Id"]; !ok {
			// net/http's own refusal, before any handler.
			if !containsInt(netHTTPStatuses, first.StatusCode) || !first.Close {
				t.Fatalf("an answer not from the handler: %d %v %q", first.StatusCode, first.Header, firstBody)
			}
			// Even correctly signed: it may be HTTP/1.1 without a Host, or of
			// a version net/http does not serve.
			if s.snapshot().effects != before.effects {
				t.Fatalf("net/http refused (%d %q) a request that reached the broker", first.StatusCode, firstBody)
			}
			return
		}
		// ReadResponse canonicalizes the header; the handler wrote it lowercase.
		first.Header["x-mq-request-id"] = first.Header["X-Mq-Request-Id"]
		code := checkAnswer(t, first.StatusCode, first.Header, firstBody).code()
		if !authenticated && !authCodes[code] && code != "InvalidRequestURL" {
			t.Fatalf("a request that is not authenticated answered %d %s", first.StatusCode, firstBody)
		}
		if !probe || first.Close {
			return
		}
		second, secondBody, err := readAnswer(br, nil)
		if err != nil {
			t.Fatalf("no answer to the probe after a %d: %v", first.StatusCode, err)
		}
		if second.StatusCode != http.StatusForbidden || !strings.Contains(string(secondBody), "<HostId>http://probe.invalid</HostId>") {
			t.Fatalf("the probe after %d bytes of body was read as something else: %d %s", len(body), second.StatusCode, secondBody)
		}
	})
}

// maxPostHandlerRead is how much of an unread body net/http reads away to keep
// a connection (net/http's maxPostHandlerReadBytes); past it, it closes.
const maxPostHandlerRead = 256 << 10

var errExtra = errors.New("bytes after the head")

// readHead parses a request head as the server would.
func readHead(head string) (*http.Request, error) {
	br := bufio.NewReader(strings.NewReader(head))
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	if br.Buffered() > 0 {
		return nil, errExtra
	}
	return req, nil
}

// readAnswer reads one final answer (skipping 100 Continue) and its body.
//
// net/http's own refusals end their body by closing the connection. It half-closes
// it first where the connection can (CloseWrite), but the listener's wrappers
// (connlimit, wiretls's plain-text path) cannot, so when the client sent more than
// the server read the body ends in a reset rather than EOF: that is accepted for
// these answers, whose status and headers have arrived.
func readAnswer(br *bufio.Reader, req *http.Request) (*http.Response, []byte, error) {
	for {
		res, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, nil, err
		}
		if res.StatusCode == http.StatusContinue {
			continue
		}
		body, err := io.ReadAll(res.Body)
		if _, ours := res.Header["X-Mq-Request-Id"]; !ours && res.ContentLength < 0 && errors.Is(err, syscall.ECONNRESET) {
			err = nil
		}
		return res, body, err
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
