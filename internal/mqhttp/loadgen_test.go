package mqhttp

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// loadConn is the benchmarks' client: HTTP/1.1 on one keep-alive connection with
// nothing but a buffered reader and writer, in the manner of wrk. Go's net/http
// client costs about as much CPU per request as the server it measures (with it,
// even a handler that only reads the body tops out near 17,000 requests/s on two
// cores), so the benchmarks would measure the client. Requests carry everything an
// SDK sends and are signed the same way, each with its own Content-MD5 and
// signature, so the server does its full work.
type loadConn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	host string
	body []byte
}

func dialLoad(addr string) (*loadConn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &loadConn{conn: conn, r: bufio.NewReaderSize(conn, 32<<10), w: bufio.NewWriterSize(conn, 8<<10), host: addr}, nil
}

func (c *loadConn) close() { _ = c.conn.Close() }

// benchDate caches the Date header, which changes once a second.
var benchDate struct {
	sync.Mutex
	sec  int64
	text string
}

func dateHeader() string {
	now := time.Now()
	benchDate.Lock()
	defer benchDate.Unlock()
	if now.Unix() != benchDate.sec {
		benchDate.sec, benchDate.text = now.Unix(), now.UTC().Format(http.TimeFormat)
	}
	return benchDate.text
}

// do sends one signed request and returns the status and body; the body is valid
// until the next call.
func (c *loadConn) do(method, target string, body []byte) (int, []byte, error) {
	sum := md5.Sum(body)
	contentMD5 := base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum[:])))
	date := dateHeader()
	const contentType, version = "text/xml;charset=utf-8", "2015-06-06"
	sig := encodeSignature(sign(testSK, method+"\n"+contentMD5+"\n"+contentType+"\n"+date+"\nx-mq-version:"+version+"\n"+target))
	w := c.w
	for _, s := range []string{method, " ", target, " HTTP/1.1\r\nHost: ", c.host,
		"\r\nContent-Type: ", contentType, "\r\nContent-MD5: ", contentMD5, "\r\nDate: ", date,
		"\r\nX-Mq-Version: ", version, "\r\nAuthorization: MQ ", testAK, ":", sig,
		"\r\nContent-Length: ", strconv.Itoa(len(body)), "\r\n\r\n"} {
		_, _ = w.WriteString(s)
	}
	_, _ = w.Write(body)
	if err := w.Flush(); err != nil {
		return 0, nil, err
	}
	return c.readResponse()
}

func (c *loadConn) readResponse() (int, []byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	// "HTTP/1.1 201 Created\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	length := 0
	for {
		h, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, nil, fmt.Errorf("bad header %q", h)
		}
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil {
				return 0, nil, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return 0, nil, errors.New("chunked responses are not expected from the endpoint")
		}
	}
	if cap(c.body) < length {
		c.body = make([]byte, length)
	}
	c.body = c.body[:length]
	if _, err := io.ReadFull(c.r, c.body); err != nil {
		return 0, nil, err
	}
	return status, c.body, nil
}

// receiptHandles appends the receipt handles of a consume answer to dst.
func receiptHandles(dst []string, answer []byte) []string {
	const open, end = "<ReceiptHandle>", "</ReceiptHandle>"
	for {
		i := bytes.Index(answer, []byte(open))
		if i < 0 {
			return dst
		}
		answer = answer[i+len(open):]
		j := bytes.Index(answer, []byte(end))
		if j < 0 {
			return dst
		}
		dst = append(dst, string(answer[:j]))
		answer = answer[j+len(end):]
	}
}
