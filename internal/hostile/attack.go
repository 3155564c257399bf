package hostile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/orderly-dev/orderly/internal/mqhttp"
	"github.com/orderly-dev/orderly/internal/remoting"
)

// Key is a tenant's credentials, as its connection Secret gives them.
type Key struct {
	InstanceID, AccessKeyID, AccessKeySecret string
}

// Plan says who attacks and how hard. Counts of slow connections are connections
// held at once; each reconnects when the server closes it.
type Plan struct {
	// HTTP and TCP are the endpoints, host:port.
	HTTP, TCP string
	// Sources are the loopback addresses attackers connect from, in turn: other
	// hosts, as far as the per-address connection cap is concerned. CrowdSource is
	// the one address the crowds connect from.
	Sources     []net.IP
	CrowdSource net.IP

	// HTTPSlowBody: unsigned POSTs announcing a 24 MiB body, trickled 1 KiB a second.
	HTTPSlowBody int
	// HTTPSlowHeaders: headers trickled a few bytes a second, never ended.
	HTTPSlowHeaders int
	// HTTPSilent, TCPSilent: connect and say nothing.
	HTTPSilent, TCPSilent int
	// HTTPHeldBodies and CarelessHeldBodies: the greedy and the careless tenant's
	// signed POSTs announcing a 24 MiB body and sending all of it but the last
	// bytes: what a tenant's slow uploads can make the server hold.
	HTTPHeldBodies, CarelessHeldBodies int
	// TCPHeldFrames: frames announcing 15 MiB, sent whole but their last bytes.
	TCPHeldFrames int
	// TCPTrickle: frames announcing 15 MiB, trickled 16 bytes a second.
	TCPTrickle int
	// Crowd: silent connections to each endpoint from CrowdSource alone, more
	// than one address may hold.
	Crowd int

	// MalformedEvery is how often each kind of malformed request is sent, each on
	// a connection of its own: garbage, oversized and truncated frames and
	// requests, bad signatures.
	MalformedEvery time.Duration

	// Greedy is a tenant with small limits; it publishes GreedyRate messages a
	// second over each protocol to GreedyTopic, far over its quota.
	Greedy      Key
	GreedyTopic string
	GreedyRate  int

	// Careless is a tenant whose NonReaders producers of CarelessTopic (a
	// transactional topic) each register NonReaderGroups producer groups by
	// heartbeat, send HalfMessages half messages of HalfBody bytes per group, and
	// never read their sockets: the broker's check-backs pile up.
	Careless                                  Key
	CarelessTopic                             string
	NonReaders, NonReaderGroups, HalfMessages int
	HalfBody                                  int
}

// Stat counts what one kind of attacker did and what the server answered.
type Stat struct {
	Name string
	// Conns counts connections made, DialFailures those that could not be,
	// ClosedByServer those the server closed before the attacker did; Requests
	// counts the publishes of the tenants' attackers.
	Conns, DialFailures, ClosedByServer, Requests atomic.Int64

	mu      sync.Mutex
	answers map[string]int
	// longest is the longest time the server held a connection it closed.
	longest time.Duration
	// unread is the most the server had sent that the attacker left unread.
	unread int
}

func (s *Stat) answer(a string) {
	if a == "" {
		return
	}
	s.mu.Lock()
	s.answers[a]++
	s.mu.Unlock()
}

func (s *Stat) closed(held time.Duration) {
	s.ClosedByServer.Add(1)
	s.mu.Lock()
	s.longest = max(s.longest, held)
	s.mu.Unlock()
}

// Answers returns how often each answer came.
func (s *Stat) Answers() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.answers))
	for k, v := range s.answers {
		out[k] = v
	}
	return out
}

func (s *Stat) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d connections", s.Name, s.Conns.Load())
	if n := s.Requests.Load(); n > 0 {
		fmt.Fprintf(&b, ", %d publishes", n)
	}
	if n := s.DialFailures.Load(); n > 0 {
		fmt.Fprintf(&b, " (%d failed to connect)", n)
	}
	if n := s.ClosedByServer.Load(); n > 0 {
		fmt.Fprintf(&b, ", %d closed by the server (the longest after %s)", n, s.longest.Round(100*time.Millisecond))
	}
	if s.unread > 0 {
		fmt.Fprintf(&b, ", up to %d KiB sent to it unread", s.unread>>10)
	}
	if len(s.answers) > 0 {
		keys := make([]string, 0, len(s.answers))
		for k := range s.answers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b.WriteString("; answers:")
		for _, k := range keys {
			fmt.Fprintf(&b, " %q×%d", k, s.answers[k])
		}
	}
	return b.String()
}

// Attack is a running set of attackers.
type Attack struct {
	p     Plan
	stats []*Stat
	wg    sync.WaitGroup
	next  atomic.Uint32
	// heldFrame is the 15 MiB frame the held-frame attackers send all but the end of.
	heldFrame []byte
	// heldBody is the 24 MiB body the held-body attackers send all but the end of.
	heldBody []byte
}

// Sizes the slow attackers announce.
const (
	announcedFrame = 15 << 20
	announcedBody  = 24 << 20
	// heldBack is what the held attackers never send.
	heldBack = 64
)

// Start starts the attackers; they run until ctx ends. Wait then waits for them
// to have closed every connection.
func Start(ctx context.Context, p Plan) *Attack {
	a := &Attack{p: p}
	// The careless producers first: their half messages must be stored before
	// the held frames take the memory larger frames are read into, or there is
	// nothing to check back.
	halves := make(chan struct{}, p.NonReaders)
	for i := range p.NonReaders {
		a.nonReader(ctx, i, halves)
	}
	ready := time.NewTimer(30 * time.Second)
	for range p.NonReaders {
		select {
		case <-halves:
		case <-ready.C:
		case <-ctx.Done():
		}
	}
	ready.Stop()
	a.heldFrame = frameAnnouncing(announcedFrame)
	a.heldBody = bytes.Repeat([]byte("x"), announcedBody)
	// Each slow attacker connects again a second after the server closed its
	// connection: slow, not a flood of connections.
	hold := func(name string, n int, src func() net.IP, addr string, talk func(context.Context, net.Conn) error, answer func(*bufio.Reader) string) {
		st := a.stat(name)
		for range n {
			a.wg.Go(func() {
				for ctx.Err() == nil {
					a.session(ctx, st, src(), addr, true, talk, answer)
					sleep(ctx, time.Second)
				}
			})
		}
	}
	crowd := func() net.IP { return p.CrowdSource }
	hold("http slow body (unsigned, 24 MiB announced)", p.HTTPSlowBody, a.source, p.HTTP, a.httpSlowBody, httpAnswer)
	hold("http slow headers", p.HTTPSlowHeaders, a.source, p.HTTP, httpSlowHeaders, httpAnswer)
	hold("http silent", p.HTTPSilent, a.source, p.HTTP, silent, httpAnswer)
	hold("http held body (greedy tenant, signed, 24 MiB less 64 B)", p.HTTPHeldBodies, a.source, p.HTTP, a.httpHeldBody(p.Greedy, p.GreedyTopic), httpAnswer)
	hold("http held body (careless tenant, signed, 24 MiB less 64 B)", p.CarelessHeldBodies, a.source, p.HTTP, a.httpHeldBody(p.Careless, p.CarelessTopic), httpAnswer)
	hold("http crowd from one address", p.Crowd, crowd, p.HTTP, silent, httpAnswer)
	hold("tcp held frame (15 MiB less 64 B)", p.TCPHeldFrames, a.source, p.TCP, a.tcpHeldFrame, nil)
	hold("tcp trickled frame (15 MiB announced)", p.TCPTrickle, a.source, p.TCP, a.tcpTrickle, nil)
	hold("tcp silent", p.TCPSilent, a.source, p.TCP, silent, nil)
	hold("tcp crowd from one address", p.Crowd, crowd, p.TCP, silent, tcpClosedAtOnce)

	if p.MalformedEvery > 0 {
		for _, m := range a.malformed() {
			st := a.stat(m.name)
			a.wg.Go(func() {
				t := time.NewTicker(p.MalformedEvery)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					a.session(ctx, st, a.source(), m.addr, false, m.talk, m.answer)
				}
			})
		}
	}
	if p.GreedyRate > 0 {
		a.greedyHTTP(ctx)
		a.greedyTCP(ctx)
	}
	return a
}

// Wait waits for every attacker to end; the context given to Start must end.
func (a *Attack) Wait() { a.wg.Wait() }

// Stats returns the attackers' counts, one per kind.
func (a *Attack) Stats() []*Stat { return a.stats }

func (a *Attack) stat(name string) *Stat {
	s := &Stat{Name: name, answers: map[string]int{}}
	a.stats = append(a.stats, s)
	return s
}

// source returns the next attacker address.
func (a *Attack) source() net.IP {
	return a.p.Sources[int(a.next.Add(1))%len(a.p.Sources)]
}

func dial(ctx context.Context, src net.IP, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src}}
	return d.DialContext(ctx, "tcp", addr)
}

// errHangUp, from a talk function, closes the connection at once, without
// waiting for an answer: a request cut short.
var errHangUp = errors.New("hang up")

// session makes one connection from src to addr and runs talk on it, which
// writes what the attacker sends, while another goroutine reads what the server
// says (answer, if not nil, parses the first answer from it). With hold, the
// connection is then held until the server closes it or ctx ends; without, it is
// closed once the answer came (or after 5 s without one).
func (a *Attack) session(ctx context.Context, st *Stat, src net.IP, addr string, hold bool,
	talk func(context.Context, net.Conn) error, answer func(*bufio.Reader) string) {
	c, err := dial(ctx, src, addr)
	if err != nil {
		if ctx.Err() == nil {
			st.DialFailures.Add(1)
		}
		return
	}
	st.Conns.Add(1)
	start := time.Now()
	var byUs atomic.Bool
	hangUp := func() {
		byUs.Store(true)
		_ = c.Close()
	}
	stop := context.AfterFunc(ctx, hangUp)
	defer stop()
	var got string
	answered := make(chan struct{}) // closed once got is set
	ended := make(chan struct{})    // closed once the server closed, or we did
	go func() {
		defer close(ended)
		br := bufio.NewReader(c)
		if answer != nil {
			got = answer(br)
			close(answered)
		}
		_, _ = io.Copy(io.Discard, br)
	}()
	if err := talk(ctx, c); errors.Is(err, errHangUp) {
		hangUp()
	}
	if hold {
		select {
		case <-ended:
		case <-ctx.Done():
		}
	} else {
		t := time.NewTimer(5 * time.Second)
		select {
		case <-ended:
		case <-answered:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	select {
	case <-ended:
		if !byUs.Load() {
			st.closed(time.Since(start))
		}
	default:
	}
	hangUp()
	<-ended
	if answer != nil {
		st.answer(got)
	}
}

// sleep sleeps for d or until ctx ends: the attackers' pacing.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// writeAll writes b within ctx, however slowly the server reads.
func writeAll(ctx context.Context, c net.Conn, b []byte) error {
	for len(b) > 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := c.Write(b[:min(len(b), 256<<10)])
		b = b[n:]
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return err
		}
	}
	return nil
}

// trickle writes b a few bytes at a time, every second.
func trickle(ctx context.Context, c net.Conn, b []byte, chunk int) error {
	for len(b) > 0 && ctx.Err() == nil {
		if err := writeAll(ctx, c, b[:min(chunk, len(b))]); err != nil {
			return err
		}
		b = b[min(chunk, len(b)):]
		sleep(ctx, time.Second)
	}
	return nil
}

func silent(context.Context, net.Conn) error { return nil }

// --- mq-http ---

// signedRequest returns the head of an mq-http request signed with secret as the
// SDKs sign (the same string to sign: method, Content-MD5, Content-Type, Date,
// the x-mq-* headers, the request target), announcing length bytes of body.
// extra header lines (each ending in CRLF) go unsigned.
func signedRequest(method, target string, keyID, secret string, length int64, extra string) []byte {
	date := time.Now().UTC().Format(http.TimeFormat)
	const ctype = "text/xml;charset=utf-8"
	toSign := method + "\n\n" + ctype + "\n" + date + "\nx-mq-version:2015-06-06\n" + target
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(toSign))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: orderly\r\nDate: %s\r\nContent-Type: %s\r\nx-mq-version: 2015-06-06\r\nAuthorization: MQ %s:%s\r\n",
		method, target, date, ctype, keyID, sig)
	if length >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", length)
	}
	b.WriteString(extra)
	b.WriteString("\r\n")
	return b.Bytes()
}

func publishTarget(k Key, topic string) string {
	return "/topics/" + url.PathEscape(topic) + "/messages?ns=" + url.QueryEscape(k.InstanceID)
}

// httpAnswer reads one HTTP answer: its status and the error document's code.
func httpAnswer(br *bufio.Reader) string {
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	var doc struct {
		Code string `xml:"Code"`
	}
	_ = xml.Unmarshal(body, &doc)
	return strings.TrimSpace(strconv.Itoa(res.StatusCode) + " " + doc.Code)
}

// randomKey is an AccessKey pair no instance has.
var randomKey = Key{InstanceID: "MQ_INST_nobody", AccessKeyID: "LTAI-nobody", AccessKeySecret: "not-a-secret"}

func (a *Attack) httpSlowBody(ctx context.Context, c net.Conn) error {
	head := signedRequest(http.MethodPost, publishTarget(a.p.Greedy, a.p.GreedyTopic), randomKey.AccessKeyID, randomKey.AccessKeySecret, announcedBody, "")
	if err := writeAll(ctx, c, head); err != nil {
		return err
	}
	return trickle(ctx, c, a.heldBody, 1<<10)
}

func httpSlowHeaders(ctx context.Context, c net.Conn) error {
	head := []byte("POST /topics/T/messages HTTP/1.1\r\nHost: orderly\r\nX-Slow: " + strings.Repeat("s", 60<<10))
	return trickle(ctx, c, head, 8)
}

func (a *Attack) httpHeldBody(k Key, topic string) func(context.Context, net.Conn) error {
	return func(ctx context.Context, c net.Conn) error {
		head := signedRequest(http.MethodPost, publishTarget(k, topic), k.AccessKeyID, k.AccessKeySecret, announcedBody, "")
		if err := writeAll(ctx, c, head); err != nil {
			return err
		}
		return writeAll(ctx, c, a.heldBody[:announcedBody-heldBack])
	}
}

// --- remoting ---

// frameAnnouncing returns a frame of size bytes after its length prefix: an
// unsigned SEND_MESSAGE header and a body of zeros.
func frameAnnouncing(size int) []byte {
	f, err := remoting.AppendFrame(nil, &remoting.Command{Code: 10, Language: "GO", Version: 317, Opaque: 1,
		ExtFields: map[string]string{"topic": "T", "queueId": "0"}, Body: make([]byte, size)})
	if err != nil {
		panic(err)
	}
	// Trim the body so that the frame is size bytes after the prefix.
	f = f[:4+size]
	binary.BigEndian.PutUint32(f, uint32(size))
	return f
}

func (a *Attack) tcpHeldFrame(ctx context.Context, c net.Conn) error {
	return writeAll(ctx, c, a.heldFrame[:len(a.heldFrame)-heldBack])
}

func (a *Attack) tcpTrickle(ctx context.Context, c net.Conn) error {
	f := a.heldFrame
	hdr := int(binary.BigEndian.Uint32(f[4:]) & 0xFFFFFF)
	if err := writeAll(ctx, c, f[:8+hdr]); err != nil {
		return err
	}
	return trickle(ctx, c, f[8+hdr:], 16)
}

// tcpClosedAtOnce waits for the server to close a silent connection: at once
// (within a second) is the connection caps' refusal, remoting having no message
// a server sends first.
func tcpClosedAtOnce(br *bufio.Reader) string {
	start := time.Now()
	_, err := br.ReadByte()
	switch {
	case err == nil:
		return "a byte"
	case time.Since(start) < time.Second:
		return "closed at once"
	default:
		return ""
	}
}

// tcpAnswer reads one remoting answer: its code.
func tcpAnswer(br *bufio.Reader) string {
	cmd, err := remoting.ReadCommand(br)
	if err != nil {
		return ""
	}
	return responseCode(cmd.Code)
}

func responseCode(code int16) string {
	switch code {
	case 0:
		return "SUCCESS"
	case 1:
		return "SYSTEM_ERROR"
	case 2:
		return "SYSTEM_BUSY"
	case 3:
		return "REQUEST_CODE_NOT_SUPPORTED"
	case 13:
		return "MESSAGE_ILLEGAL"
	case 16:
		return "NO_PERMISSION"
	case 17:
		return "TOPIC_NOT_EXIST"
	}
	return "code " + strconv.Itoa(int(code))
}

// sendCommand is a SEND_MESSAGE of body to topic, signed with k's pair (secret
// may be wrong on purpose); an empty key id leaves it unsigned.
func sendCommand(opaque int32, topic, group string, props map[string]string, body []byte, keyID, secret string) *remoting.Command {
	var p strings.Builder
	for _, k := range slices.Sorted(mapsKeys(props)) {
		p.WriteString(k + "\x01" + props[k] + "\x02")
	}
	cmd := &remoting.Command{Code: 10, Language: "GO", Version: 317, Opaque: opaque, Body: body, ExtFields: map[string]string{
		"producerGroup": group, "topic": topic, "defaultTopic": "TBW102", "defaultTopicQueueNums": "4", "queueId": "-1",
		"sysFlag": "0", "bornTimestamp": strconv.FormatInt(time.Now().UnixMilli(), 10), "flag": "0", "properties": p.String(),
		"reconsumeTimes": "0", "unitMode": "false", "batch": "false",
	}}
	if props["TRAN_MSG"] == "true" {
		cmd.ExtFields["sysFlag"] = "4"
	}
	if keyID != "" {
		remoting.Sign(cmd, keyID, secret)
	}
	return cmd
}

func mapsKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func frame(cmd *remoting.Command) []byte {
	f, err := remoting.AppendFrame(nil, cmd)
	if err != nil {
		panic(err)
	}
	return f
}

// --- malformed requests ---

type malformed struct {
	name   string
	addr   string
	talk   func(context.Context, net.Conn) error
	answer func(*bufio.Reader) string
}

// malformed lists the malformed requests of both endpoints.
func (a *Attack) malformed() []malformed {
	g := a.p.Greedy
	target := publishTarget(g, a.p.GreedyTopic)
	write := func(b []byte) func(context.Context, net.Conn) error {
		return func(ctx context.Context, c net.Conn) error { return writeAll(ctx, c, b) }
	}
	writeFn := func(f func() []byte) func(context.Context, net.Conn) error {
		return func(ctx context.Context, c net.Conn) error { return writeAll(ctx, c, f()) }
	}
	cut := func(f func() []byte, n int) func(context.Context, net.Conn) error {
		return func(ctx context.Context, c net.Conn) error {
			b := f()
			if err := writeAll(ctx, c, b[:min(n, len(b))]); err != nil {
				return err
			}
			return errHangUp
		}
	}
	garbage := func() []byte {
		b := make([]byte, 4<<10)
		_, _ = rand.Read(b)
		return b
	}
	publishXML := []byte(`<?xml version="1.0" encoding="UTF-8"?><Message xmlns="http://mq.aliyuncs.com/doc/v1/"><MessageBody>x</MessageBody></Message>`)
	withBody := func(head, body []byte) []byte { return append(slices.Clip(head), body...) }
	signed := func(keyID, secret string, body []byte) func() []byte {
		return func() []byte {
			return withBody(signedRequest(http.MethodPost, target, keyID, secret, int64(len(body)), ""), body)
		}
	}
	send := func(keyID, secret string) func() []byte {
		return func() []byte {
			return frame(sendCommand(7, a.p.GreedyTopic, "PID_greedy", map[string]string{"UNIQ_KEY": "x"}, []byte("hello"), keyID, secret))
		}
	}
	prefix := func(length, mark uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, length), mark)
	}
	rawJSON := func(header string) []byte {
		return append(prefix(uint32(4+len(header)), uint32(len(header))), header...)
	}
	batch := func() []byte {
		cmd := &remoting.Command{Code: 320, Language: "GO", Version: 317, Opaque: 9, Body: garbage(), ExtFields: map[string]string{
			"a": "PID_greedy", "b": a.p.GreedyTopic, "e": "-1", "f": "0", "i": ""}}
		remoting.Sign(cmd, g.AccessKeyID, g.AccessKeySecret)
		return frame(cmd)
	}
	return []malformed{
		{"http garbage", a.p.HTTP, writeFn(garbage), httpAnswer},
		{"http oversized headers (100 KiB)", a.p.HTTP, write([]byte("GET " + target + " HTTP/1.1\r\nHost: orderly\r\nX-Big: " + strings.Repeat("b", 100<<10) + "\r\n\r\n")), httpAnswer},
		{"http unsigned", a.p.HTTP, write(withBody([]byte("POST "+target+" HTTP/1.1\r\nHost: orderly\r\nContent-Length: "+strconv.Itoa(len(publishXML))+"\r\n\r\n"), publishXML)), httpAnswer},
		{"http bad signature", a.p.HTTP, writeFn(signed(g.AccessKeyID, "wrong-secret", publishXML)), httpAnswer},
		{"http unknown key", a.p.HTTP, writeFn(signed(randomKey.AccessKeyID, randomKey.AccessKeySecret, publishXML)), httpAnswer},
		{"http signed, 100 MiB announced", a.p.HTTP, writeFn(func() []byte {
			return signedRequest(http.MethodPost, target, g.AccessKeyID, g.AccessKeySecret, 100<<20, "")
		}), httpAnswer},
		{"http signed, chunked", a.p.HTTP, writeFn(func() []byte {
			return withBody(signedRequest(http.MethodPost, target, g.AccessKeyID, g.AccessKeySecret, -1, "Transfer-Encoding: chunked\r\n"),
				[]byte(strconv.FormatInt(int64(len(publishXML)), 16)+"\r\n"+string(publishXML)+"\r\n0\r\n\r\n"))
		}), httpAnswer},
		{"http signed, malformed XML", a.p.HTTP, writeFn(signed(g.AccessKeyID, g.AccessKeySecret, []byte("<Message><MessageBody>&bogus;<"))), httpAnswer},
		{"http signed, truncated body", a.p.HTTP, cut(func() []byte {
			return withBody(signedRequest(http.MethodPost, target, g.AccessKeyID, g.AccessKeySecret, 64<<10, ""), garbage())
		}, 2<<10), nil},
		{"tcp garbage", a.p.TCP, writeFn(garbage), tcpAnswer},
		{"tcp oversized frame (2 GiB announced)", a.p.TCP, write(prefix(0x7FFFFFFF, 10)), tcpAnswer},
		{"tcp header longer than its frame", a.p.TCP, write(append(prefix(100, 0xFFFFFF), make([]byte, 96)...)), tcpAnswer},
		{"tcp unknown serialize type", a.p.TCP, write(append(prefix(20, 7<<24|16), make([]byte, 16)...)), tcpAnswer},
		{"tcp malformed JSON header", a.p.TCP, write(rawJSON(`{"code":10,"extFields":{"topic":`)), tcpAnswer},
		{"tcp truncated frame", a.p.TCP, cut(send(g.AccessKeyID, g.AccessKeySecret), 40), nil},
		{"tcp unsigned", a.p.TCP, writeFn(send("", "")), tcpAnswer},
		{"tcp bad signature", a.p.TCP, writeFn(send(g.AccessKeyID, "wrong-secret")), tcpAnswer},
		{"tcp unknown key", a.p.TCP, writeFn(send(randomKey.AccessKeyID, randomKey.AccessKeySecret)), tcpAnswer},
		{"tcp signed, garbage batch", a.p.TCP, writeFn(batch), tcpAnswer},
	}
}

// --- the greedy tenant ---

// greedyHTTP publishes GreedyRate messages a second over mq-http, signed as the
// SDKs sign (internal/mqhttp's client, whose connections the attack can close
// when it ends, which the SDK's pool cannot); one in ten is larger than the
// tenant's maximum message size.
func (a *Attack) greedyHTTP(ctx context.Context) {
	const workers = 4
	st := a.stat("greedy tenant, mq-http publishes")
	k := a.p.Greedy
	transport := &http.Transport{MaxIdleConnsPerHost: workers,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, a.source(), addr) }}
	c := &mqhttp.Client{Endpoint: "http://" + a.p.HTTP, AccessKeyID: k.AccessKeyID, AccessKeySecret: k.AccessKeySecret,
		InstanceID: k.InstanceID, HTTP: &http.Client{Timeout: 10 * time.Second, Transport: transport}}
	big := strings.Repeat("g", 128<<10)
	var running sync.WaitGroup
	for w := range workers {
		running.Go(func() {
			t := time.NewTicker(time.Second * workers / time.Duration(a.p.GreedyRate))
			defer t.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				body := "greedy " + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if i%10 == 9 {
					body = big
				}
				st.Requests.Add(1)
				_, err := c.Publish(ctx, a.p.GreedyTopic, body, "", "")
				st.answer(publishAnswer(err))
			}
		})
	}
	a.wg.Go(func() {
		running.Wait()
		transport.CloseIdleConnections()
	})
}

// publishAnswer is a publish error's status and code, or "201" for none.
func publishAnswer(err error) string {
	var e *mqhttp.APIError
	switch {
	case err == nil:
		return "201"
	case errors.As(err, &e):
		return strconv.Itoa(e.Status) + " " + e.Code
	case errors.Is(err, context.Canceled):
		return ""
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "connection error"
}

// greedyTCP publishes GreedyRate messages a second over one remoting connection,
// reading the answers as they come.
func (a *Attack) greedyTCP(ctx context.Context) {
	st := a.stat("greedy tenant, remoting sends")
	k := a.p.Greedy
	a.wg.Go(func() {
		for ctx.Err() == nil {
			c, err := dial(ctx, a.source(), a.p.TCP)
			if err != nil {
				st.DialFailures.Add(1)
				sleep(ctx, time.Second)
				continue
			}
			st.Conns.Add(1)
			start := time.Now()
			stop := context.AfterFunc(ctx, func() { _ = c.Close() })
			done := make(chan struct{})
			go func() {
				defer close(done)
				br := bufio.NewReader(c)
				for {
					cmd, err := remoting.ReadCommand(br)
					if err != nil {
						return
					}
					st.answer(responseCode(cmd.Code))
				}
			}()
			t := time.NewTicker(time.Second / time.Duration(a.p.GreedyRate))
			body := make([]byte, 1<<10)
			big := make([]byte, 128<<10)
		send:
			for i := int32(0); ; i++ {
				select {
				case <-ctx.Done():
					break send
				case <-done:
					st.closed(time.Since(start))
					break send
				case <-t.C:
				}
				b := body
				if i%10 == 9 {
					b = big
				}
				st.Requests.Add(1)
				if writeAll(ctx, c, frame(sendCommand(i, a.p.GreedyTopic, "PID_greedy", map[string]string{"UNIQ_KEY": fmt.Sprint("g", i)}, b, k.AccessKeyID, k.AccessKeySecret))) != nil {
					break send
				}
			}
			t.Stop()
			stop()
			_ = c.Close()
			<-done
			sleep(ctx, 100*time.Millisecond) // a client's reconnect delay
		}
	})
}

// --- the careless tenant ---

// nonReader is a transactional producer that never reads its socket: it
// registers its producer groups by heartbeat, sends its half messages once (on
// its first connection; then it tells halvesSent), and then only heartbeats,
// every 2 s, until a write fails because the server closed the connection; then
// it connects again.
func (a *Attack) nonReader(ctx context.Context, id int, halvesSent chan<- struct{}) {
	st := a.stat(fmt.Sprintf("tcp producer %d that never reads (careless tenant)", id))
	k := a.p.Careless
	groups := make([]string, a.p.NonReaderGroups)
	for g := range groups {
		groups[g] = fmt.Sprintf("PID_careless_%d_%d", id, g)
	}
	a.wg.Go(func() {
		sentHalves := false
		for opaque := int32(1); ctx.Err() == nil; {
			c, err := dial(ctx, a.source(), a.p.TCP)
			if err != nil {
				st.DialFailures.Add(1)
				sleep(ctx, time.Second)
				continue
			}
			st.Conns.Add(1)
			start := time.Now()
			heartbeat := func() error {
				type group struct {
					GroupName string `json:"groupName"`
				}
				hb := struct {
					ClientID     string  `json:"clientID"`
					ProducerData []group `json:"producerDataSet"`
					ConsumerData []group `json:"consumerDataSet"`
				}{ClientID: fmt.Sprintf("careless-%d@%d", id, os.Getpid()), ConsumerData: []group{}}
				for _, g := range groups {
					hb.ProducerData = append(hb.ProducerData, group{g})
				}
				body, _ := json.Marshal(hb)
				cmd := &remoting.Command{Code: 34, Language: "GO", Version: 317, Opaque: opaque, Body: body}
				opaque++
				remoting.Sign(cmd, k.AccessKeyID, k.AccessKeySecret)
				return writeAll(ctx, c, frame(cmd))
			}
			err = heartbeat()
			if err == nil && !sentHalves {
				body := make([]byte, a.p.HalfBody)
			halves:
				for _, g := range groups {
					for i := range a.p.HalfMessages {
						props := map[string]string{"TRAN_MSG": "true", "PGROUP": g, "CHECK_IMMUNITY_TIME_IN_SECONDS": "1",
							"UNIQ_KEY": fmt.Sprintf("%s-%d", g, i)}
						if err = writeAll(ctx, c, frame(sendCommand(opaque, a.p.CarelessTopic, g, props, body, k.AccessKeyID, k.AccessKeySecret))); err != nil {
							break halves
						}
						opaque++
					}
				}
				if sentHalves = err == nil; sentHalves {
					halvesSent <- struct{}{}
				}
			}
			for err == nil && ctx.Err() == nil {
				sleep(ctx, 2*time.Second)
				if n, ok := unreadBytes(c); ok {
					st.mu.Lock()
					st.unread = max(st.unread, n)
					st.mu.Unlock()
				}
				err = heartbeat()
			}
			if ctx.Err() == nil {
				st.closed(time.Since(start))
			}
			_ = c.Close()
		}
	})
}

// unreadBytes is what c's socket has received and not been read (FIONREAD).
func unreadBytes(c net.Conn) (int, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	n, cerr := 0, error(nil)
	err = raw.Control(func(fd uintptr) {
		n, cerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n, err == nil && cerr == nil
}
