package mqhttp

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Fuzz targets of what the handler decodes before it reaches the broker: the
// authentication headers, the Content-Length and Content-MD5 of the body. They
// drive the real handler over a real (in-memory) broker behind a spy.

const fuzzSecret = "sk"

// sdkRequest builds a request as the Go SDK sends it (Date, x-mq-version,
// Content-Type, Content-MD5 when md5 is non-empty), signed by AccessKey "ak" with
// secret, without a body. It returns nil for a method or request-target net/http
// would never hand a handler.
func sdkRequest(method, target, md5, secret string, date time.Time) *http.Request {
	if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n\t#") {
		return nil
	}
	r, err := http.NewRequest(method, "http://mq.local"+target, nil)
	if err != nil {
		return nil
	}
	r.RequestURI = target
	r.Header.Set("Date", date.UTC().Format(http.TimeFormat))
	r.Header.Set("x-mq-version", "2015-06-06")
	r.Header.Set("Content-Type", "text/xml;charset=utf-8")
	if md5 != "" {
		r.Header.Set("Content-MD5", md5)
	}
	r.Header.Set("Authorization", "MQ ak:"+encodeSignature(sign(secret, stringToSign(r))))
	return r
}

var (
	fuzzPublishBody = []byte(`<?xml version="1.0" encoding="UTF-8"?><Message><MessageBody>hello mq! &lt;&amp;&gt; 0</MessageBody><MessageTag>TagA</MessageTag><Properties>a:0|KEYS:MessageKey0|</Properties></Message>`)
	fuzzAckBody     = []byte(`<?xml version="1.0" encoding="UTF-8"?><ReceiptHandles><ReceiptHandle>1000000010000000000000000000000010123456789ABCDEF00000194B1F1C4A0</ReceiptHandle></ReceiptHandles>`)
)

// FuzzRequestLimits fuzzes a request's method, target and body together with how
// it is authenticated (mode bits 0-1: signed, unsigned, signed with another
// secret, signed 30 minutes ago), its Content-MD5 (bits 2-3: none, the SDKs' form,
// of other bytes, RFC 1864's form) and its Content-Length (bits 4-5: the body's,
// the body's plus delta, chunked, over the limit by delta; bit 6: delta counts
// 64 KiB, as the fuzzer moves an integer by at most 100 at a time). It asserts:
//   - a request that fails authentication, or names no resource, reads nothing of
//     the body and reaches the broker not at all;
//   - nothing is read past the Content-Length, nor at all when it is missing or
//     over the limit, which answer 411 and 413;
//   - a truncated body or a wrong digest reaches no broker operation;
//   - memory allocated is bounded by what the client sent, not what it declared;
//   - every answer is one the SDKs read, with a code of the protocol's and its
//     status; a connection slot taken is given back; the handler returns promptly.
func FuzzRequestLimits(f *testing.F) {
	s := fuzzSpy(f)
	h := newHandler(s, time.Now, Limits{}.withDefaults())
	for _, mode := range []uint8{0x04, 0x00, 0x01, 0x02, 0x03, 0x08, 0x0c, 0x14, 0x24, 0x34, 0x11, 0x25} {
		f.Add(mode, "POST", "/topics/T/messages?ns=MQ_INST_f", fuzzPublishBody, int32(0))
	}
	f.Add(uint8(0x14), "POST", "/topics/T/messages", fuzzPublishBody, int32(-20))
	f.Add(uint8(0x14), "POST", "/topics/T/messages", fuzzPublishBody, int32(20))
	// Issue 15's attack, signed: declare 15 MiB, send a little, hold back the rest.
	f.Add(uint8(0x50), "POST", "/topics/T/messages", fuzzPublishBody, int32(240))
	f.Add(uint8(0x04), "GET", "/topics/T/messages?consumer=G&numOfMessages=3&waitseconds=3", []byte{}, int32(0))
	f.Add(uint8(0x04), "GET", "/topics/O/messages?consumer=G&trans=order&numOfMessages=16", []byte{}, int32(0))
	f.Add(uint8(0x04), "DELETE", "/topics/T/messages?consumer=G", fuzzAckBody, int32(0))
	f.Add(uint8(0x04), "DELETE", "/topics/X/messages?consumer=G&trans=commit", fuzzAckBody, int32(0))
	f.Add(uint8(0x00), "POST", "/topics/T/other", fuzzPublishBody, int32(0))
	f.Fuzz(func(t *testing.T, mode uint8, method, target string, body []byte, delta int32) {
		authMode, md5Mode, lenMode := mode&3, mode>>2&3, mode>>4&3
		if mode&0x40 != 0 {
			delta <<= 16
		}
		date, secret := time.Now(), fuzzSecret
		switch authMode {
		case 2:
			secret = "not the secret"
		case 3:
			date = date.Add(-2 * MaxClockSkew)
		}
		var digest string
		switch md5Mode {
		case 1:
			digest = sdkMD5(body)
		case 2:
			digest = sdkMD5(append(bytes.Clone(body), 'x'))
		case 3:
			sum := md5.Sum(body)
			digest = base64.StdEncoding.EncodeToString(sum[:])
		}
		r := sdkRequest(method, target, digest, secret, date)
		if r == nil {
			return
		}
		if authMode == 1 {
			r.Header.Del("Authorization")
		}
		var cl int64
		switch lenMode {
		case 0:
			cl = int64(len(body))
		case 1:
			cl = min(max(int64(len(body))+int64(delta), 0), maxRequestBytes)
		case 2:
			cl = -1
			r.TransferEncoding = []string{"chunked"}
		case 3:
			cl = maxRequestBytes + 1 + int64(uint32(delta))
		}
		rd := &countingReader{r: bytes.NewReader(body)}
		r.Body, r.ContentLength = rd, cl
		// Long polls end fast: a cancelled one must still answer well-formed.
		ctx, cancel := context.WithTimeout(r.Context(), 50*time.Millisecond)
		defer cancel()
		r = r.WithContext(ctx)
		before := s.snapshot()
		w := httptest.NewRecorder()

		a0, start := allocated(), time.Now()
		h.ServeHTTP(w, r)
		elapsed, alloc := time.Since(start), allocated()-a0

		code := checkAnswer(t, w.Code, w.Header(), w.Body.Bytes()).code()
		after := s.snapshot()
		if held := s.held.Load(); held != 0 {
			t.Fatalf("%d connection slots held after the request", held)
		}
		if elapsed > 2*time.Second {
			t.Fatalf("the handler took %v", elapsed)
		}
		if rd.n > max(cl, 0) {
			t.Fatalf("read %d bytes of a body declared %d", rd.n, cl)
		}
		if limit := 4<<20 + 8*uint64(rd.n); alloc > limit {
			t.Fatalf("allocated %d bytes for a request that sent %d (declared %d): more than %d", alloc, rd.n, cl, limit)
		}
		refusedEarly := authCodes[code] || code == "InvalidRequestURL"
		if refusedEarly && (rd.n != 0 || after != before) {
			t.Fatalf("%s after reading %d bytes and %d broker calls", code, rd.n, after.calls-before.calls)
		}
		if authMode != 0 && !refusedEarly {
			t.Fatalf("authentication mode %d answered %d %q", authMode, w.Code, code)
		}
		if authMode == 0 && authCodes[code] {
			t.Fatalf("a correctly signed request answered %s", code)
		}
		if refusedEarly {
			return
		}
		noEffect := func(why string) {
			t.Helper()
			if after.effects != before.effects {
				t.Fatalf("%s, yet it reached the broker", why)
			}
		}
		switch {
		case lenMode == 3:
			if w.Code != http.StatusRequestEntityTooLarge || rd.n != 0 {
				t.Fatalf("declared %d bytes: %d %s after reading %d", cl, w.Code, code, rd.n)
			}
			noEffect("too large")
		case lenMode == 2:
			if code != "MissingContentLength" || rd.n != 0 {
				t.Fatalf("chunked: %d %s after reading %d", w.Code, code, rd.n)
			}
			noEffect("chunked")
		case cl > int64(len(body)):
			if code != "InvalidArgument" {
				t.Fatalf("a body of %d bytes declared %d: %d %q", len(body), cl, w.Code, code)
			}
			noEffect("truncated")
		case md5Mode >= 2 || md5Mode == 1 && cl != int64(len(body)):
			if code != "InvalidDigest" {
				t.Fatalf("a wrong Content-MD5: %d %q", w.Code, code)
			}
			noEffect("wrong digest")
		}
	})
}

// FuzzSignatureTamper signs a publish, then changes one thing the signature
// covers (field: method, request-target, Date, Content-MD5, Content-Type,
// x-mq-version, an added x-mq-* header, the AccessKey id, the signature, the whole
// Authorization header) to value. A change fails authentication with no body read
// and no broker call; a value the signature reads the same way (the same text, an
// x-mq-* value up to surrounding white space, a signature of the same bytes) still
// publishes.
func FuzzSignatureTamper(f *testing.F) {
	s := fuzzSpy(f)
	h := newHandler(s, time.Now, Limits{}.withDefaults())
	const target = "/topics/T/messages?ns=MQ_INST_f"
	for field, value := range []string{"GET", "/topics/T/messages?ns=MQ_INST_g", "Sat, 21 Nov 2026 09:44:30 GMT",
		sdkMD5([]byte("x")), "text/xml", "2015-06-07", "x-mq-extra", "ak2", "AAAA", "MQ ak:AAAA"} {
		f.Add(uint8(field), value)
	}
	f.Add(uint8(1), target)
	f.Add(uint8(3), "")
	f.Add(uint8(5), " 2015-06-06\t")
	f.Add(uint8(7), "ak:x")
	f.Fuzz(func(t *testing.T, field uint8, value string) {
		field %= 10
		if strings.ContainsAny(value, "\r\n\x00") {
			return // no header or request line carries these
		}
		if field >= 2 {
			value = strings.Trim(value, " \t") // what net/http hands a handler
		}
		r := sdkRequest(http.MethodPost, target, sdkMD5(fuzzPublishBody), fuzzSecret, time.Now())
		auth := r.Header.Get("Authorization")
		sig, _ := base64.StdEncoding.DecodeString(auth[len("MQ ak:"):])
		same := false
		switch field {
		case 0:
			if !validToken(value) {
				return
			}
			r.Method, same = value, value == http.MethodPost
		case 1:
			if !strings.HasPrefix(value, "/") || strings.ContainsAny(value, " \t#") {
				return
			}
			u, err := r.URL.Parse(value)
			if err != nil {
				return
			}
			r.URL, r.RequestURI, same = u, value, value == target
		case 2, 3, 4:
			name := [...]string{2: "Date", 3: "Content-MD5", 4: "Content-Type"}[field]
			same = value == r.Header.Get(name)
			r.Header.Set(name, value)
		case 5:
			same = strings.TrimSpace(value) == "2015-06-06"
			r.Header.Set("x-mq-version", value)
		case 6:
			if !validToken(value) {
				return
			}
			r.Header.Set("x-mq-"+value, "1")
		case 7:
			same = value == "ak"
			r.Header.Set("Authorization", "MQ "+value+auth[len("MQ ak"):])
		case 8:
			got, err := base64.StdEncoding.DecodeString(value)
			same = err == nil && bytes.Equal(got, sig)
			r.Header.Set("Authorization", "MQ ak:"+value)
		case 9:
			rest, ok := strings.CutPrefix(value, "MQ ")
			i := strings.LastIndexByte(rest, ':')
			if ok && i > 0 {
				got, err := base64.StdEncoding.DecodeString(rest[i+1:])
				same = rest[:i] == "ak" && err == nil && bytes.Equal(got, sig)
			}
			r.Header.Set("Authorization", value)
		}
		rd := &countingReader{r: bytes.NewReader(fuzzPublishBody)}
		r.Body, r.ContentLength = rd, int64(len(fuzzPublishBody))
		before := s.snapshot()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		code := checkAnswer(t, w.Code, w.Header(), w.Body.Bytes()).code()
		if same {
			if w.Code != http.StatusCreated && code != "Throttling" {
				t.Fatalf("an untampered request (field %d = %q) answered %d %s", field, value, w.Code, w.Body.Bytes())
			}
			return
		}
		if !authCodes[code] && code != "InvalidRequestURL" {
			t.Fatalf("field %d tampered to %q answered %d %s", field, value, w.Code, w.Body.Bytes())
		}
		if rd.n != 0 || s.snapshot() != before {
			t.Fatalf("field %d tampered: %s after reading %d bytes and reaching the broker", field, code, rd.n)
		}
	})
}

// validToken reports whether s is an HTTP token, what a method or header name is.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
