// Package remoting serves RocketMQ 4.x's remoting protocol, the TCP protocol of the
// open-source RocketMQ clients, from the embedded broker: a name server and a broker
// on one listener. docs/remoting.md says which header encodings and signatures it
// accepts and names the sources those facts come from; section numbers in comments,
// such as (3.5), are those of the RocketMQ remoting protocol notes it names. Every
// message semantic lives in internal/broker; this package maps frames onto it and
// keeps what only TCP clients have: connections, client ids, group membership and
// heartbeats.
package remoting

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame limits. A frame's length is checked against maxFrame before anything is
// allocated for it.
const (
	// maxFrame bounds a whole frame: a batch of 4 MiB bodies with their headers.
	// RocketMQ's own server allows 16 MiB.
	maxFrame = 16 << 20
	// maxHeader bounds a header, JSON or binary.
	maxHeader = 64 << 10
)

// Flag bits.
const (
	flagResponse = 1
	flagOneway   = 2
)

// Serialize types: how a frame's header is written, the top byte of the frame's
// second int32 (1.1; docs/remoting.md, "Header encodings").
const (
	// SerializeJSON is a JSON header, what every client sends by default.
	SerializeJSON byte = 0
	// SerializeRocketMQ is RocketMQ's binary header, which the Java clients send
	// when rocketmq.serialize.type=ROCKETMQ is set.
	SerializeRocketMQ byte = 1
)

// Command is one remoting frame: a request or a response. Version is 32 bits, as in
// Java's JSON: the ONS clients send versions above 16 bits (docs/remoting.md).
type Command struct {
	Code      int16             `json:"code"`
	Language  string            `json:"language,omitempty"`
	Version   int32             `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int32             `json:"flag"`
	Remark    string            `json:"remark,omitempty"`
	ExtFields map[string]string `json:"extFields,omitempty"`
	Body      []byte            `json:"-"`
	// Serialize is the header's serialize type. A request is answered in the type
	// it was sent in, as RocketMQ's Java remoting answers.
	Serialize byte `json:"-"`
}

// IsResponse reports whether the frame answers a request.
func (c *Command) IsResponse() bool { return c.Flag&flagResponse != 0 }

// IsOneway reports whether the sender of a request waits for no answer: RocketMQ
// answers none (1.4).
func (c *Command) IsOneway() bool { return c.Flag&flagOneway != 0 }

// ErrFrame is a frame that cannot be decoded; the connection it came on is closed.
// A frame cut short (the connection ended, or its deadline passed) is not one: its
// error wraps the I/O error.
var ErrFrame = errors.New("malformed remoting frame")

// RequestError is a frame read whole whose header names a request, its opaque at
// least, but holds a value this server cannot use: a request code beyond 16 bits, a
// flag that is not a number, an extFields value that is an object. It is answered
// with Code and Remark and the connection goes on; only a frame that cannot be read
// at all closes it.
type RequestError struct {
	// Request is the frame as far as it could be decoded: its opaque, flag, serialize
	// type and body at least.
	Request *Command
	Code    int16
	Remark  string
	// BodyUnread: the frame's body is still on the wire, so the connection ends
	// once the answer is written.
	BodyUnread bool
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("request %d cannot be served: %s", e.Request.Opaque, e.Remark)
}

// ReadCommand reads one frame. A frame that cannot be read is an error wrapping
// ErrFrame; one that can be read but not served as sent is a *RequestError.
func ReadCommand(r *bufio.Reader) (*Command, error) {
	cmd, _, err := readChunked(r, nil, nil)
	return cmd, err
}

// smallFrame is the size up to which a frame's buffer is allocated at once: what
// the connection's reader buffers anyway. Larger frames grow as their bytes arrive,
// and their growth is taken from the memory budgets.
const smallFrame = 4 << 10

// admitBody decides, from a frame's decoded header, whether its body of n bytes
// may be read, and returns what its growth is taken from (nil: nothing).
type admitBody func(cmd *Command, n int) (take func(n, held int) error, err error)

// readChunked reads one frame: its header first, then, once admit (if not nil) has
// seen the header, its body. Each buffer starts at what has arrived (at least
// smallFrame, at most its part) and doubles each time it fills, so it never holds
// more than twice what the client sent: a length prefix announcing 16 MiB costs
// 4 KiB until the bytes come. Before each growth past smallFrame, take (for the
// header; for the body, what admit returned) is asked for the bytes added (and told
// what the frame holds already) and may refuse them with an error, which
// readChunked returns. charged is what take granted, to be given back by the
// caller once the frame is served (or at once, with an error); what admit's
// function granted is the caller's to account for.
//
// admit's refusal is returned as a *RequestError with BodyUnread set: the body is
// still on the wire, so the connection cannot go on past the answer. This is how a
// frame announcing a large body is refused before the server holds any of it when
// its header names no known AccessKey.
//
//	+--------------+-----------+------------------+--------+------+
//	| length int32 | type int8 | header len int24 | header | body |
//	+--------------+-----------+------------------+--------+------+
//	  length counts what follows it: 4 + header len + body
func readChunked(r *bufio.Reader, take func(n, held int) error, admit admitBody) (cmd *Command, charged int, err error) {
	var prefix [8]byte
	if _, err := io.ReadFull(r, prefix[:4]); err != nil {
		return nil, 0, err
	}
	length := binary.BigEndian.Uint32(prefix[:4])
	if length < 4 || length > maxFrame {
		return nil, 0, fmt.Errorf("%w: frame length %d outside 4..%d", ErrFrame, length, maxFrame)
	}
	if _, err := io.ReadFull(r, prefix[4:]); err != nil {
		return nil, 0, fmt.Errorf("frame cut short in its prefix: %w", err)
	}
	mark := binary.BigEndian.Uint32(prefix[4:])
	serType, headerLen := byte(mark>>24), mark&0xFFFFFF
	if serType != SerializeJSON && serType != SerializeRocketMQ {
		return nil, 0, fmt.Errorf("%w: serialize type %d is neither JSON (0) nor ROCKETMQ (1)", ErrFrame, serType)
	}
	if headerLen > length-4 || headerLen > maxHeader {
		return nil, 0, fmt.Errorf("%w: header length %d in a frame of %d", ErrFrame, headerLen, length)
	}
	bodyLen := int(length - 4 - headerLen)
	header, charged, err := readGrowing(r, int(headerLen), take, 0)
	if err != nil {
		return nil, charged, fmt.Errorf("frame cut short in its header: %w", err)
	}
	cmd = &Command{}
	if serType == SerializeRocketMQ {
		err = decodeBinaryHeader(header, cmd)
	} else {
		err = decodeHeader(header, cmd)
	}
	cmd.Serialize = serType
	var unusable *fieldError
	switch {
	case errors.As(err, &unusable):
		// Answered, and the connection goes on: the body is passed over unread.
		if _, err := io.CopyN(io.Discard, r, int64(bodyLen)); err != nil {
			return nil, charged, fmt.Errorf("frame cut short in its body: %w", err)
		}
		return nil, charged, &RequestError{Request: cmd, Code: codeNotSupported, Remark: unusable.Error()}
	case err != nil:
		return nil, charged, fmt.Errorf("%w: header: %v", ErrFrame, err)
	}
	if bodyLen == 0 {
		return cmd, charged, nil
	}
	bodyTake := take
	if admit != nil {
		if bodyTake, err = admit(cmd, bodyLen); err != nil {
			var refused *RequestError
			if errors.As(err, &refused) {
				refused.BodyUnread = true
			}
			return nil, charged, err
		}
	}
	body, granted, err := readGrowing(r, bodyLen, bodyTake, charged)
	if admit == nil {
		charged += granted // from take too; else admit's function's, for its caller
	}
	if err != nil {
		return nil, charged, fmt.Errorf("frame of %d bytes cut short in its body: %w", length, err)
	}
	cmd.Body = body
	return cmd, charged, nil
}

// readGrowing reads n bytes into a buffer that starts at what has arrived (at
// least smallFrame, at most n) and doubles as it fills, asking take (if not nil)
// for each growth past smallFrame, telling it the frame holds held bytes besides.
// It returns what take granted.
func readGrowing(r *bufio.Reader, n int, take func(n, held int) error, held int) ([]byte, int, error) {
	if n == 0 {
		return nil, 0, nil
	}
	size := min(n, max(smallFrame, r.Buffered()))
	charged := 0
	if size > smallFrame && take != nil {
		if err := take(size, held); err != nil {
			return nil, 0, err
		}
		charged = size
	}
	buf := make([]byte, size)
	got := 0
	for {
		// A bufio.Reader reads a chunk larger than its buffer straight into it.
		m, err := io.ReadFull(r, buf[got:])
		got += m
		if err != nil {
			return nil, charged, fmt.Errorf("%d of %d bytes: %w", got, n, err)
		}
		if got == n {
			return buf, charged, nil
		}
		next := min(n, 2*len(buf))
		if take != nil {
			add := next
			if len(buf) > smallFrame {
				add = next - len(buf)
			}
			if err := take(add, held+charged); err != nil {
				return nil, charged, fmt.Errorf("%d of %d bytes read: %w", got, n, err)
			}
			charged += add
		}
		grown := make([]byte, next)
		copy(grown, buf[:got])
		buf = grown
	}
}

// AppendFrame appends c's frame to b, its header in c's serialize type. A JSON
// header has every extFields value a string, which is what the Go and C++ clients'
// decoders demand (1.2).
func AppendFrame(b []byte, c *Command) ([]byte, error) {
	start := len(b)
	b = append(b, make([]byte, 8)...) // lengths, once the header is written
	var err error
	switch c.Serialize {
	case SerializeJSON:
		b, err = appendHeader(b, c)
	case SerializeRocketMQ:
		b, err = appendBinaryHeader(b, c)
	default:
		err = fmt.Errorf("serialize type %d", c.Serialize)
	}
	if err != nil {
		return b[:start], err
	}
	header := len(b) - start - 8
	if header > 0xFFFFFF {
		return b[:start], fmt.Errorf("header of %d bytes", header)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(4+header+len(c.Body)))
	binary.BigEndian.PutUint32(b[start+4:], uint32(c.Serialize)<<24|uint32(header))
	return append(b, c.Body...), nil
}

// Response codes the clients understand (1.6).
const (
	codeSuccess             = 0
	codeSystemError         = 1
	codeSystemBusy          = 2
	codeNotSupported        = 3
	codeMessageIllegal      = 13
	codeNoPermission        = 16
	codeTopicNotExist       = 17
	codePullNotFound        = 19
	codePullRetryImmediate  = 20
	codePullOffsetMoved     = 21
	codeQueryNotFound       = 22
	codeSubscriptionParse   = 23 // SUBSCRIPTION_PARSE_FAILED
	codeSubscriptionMissing = 24
	codeGroupNotExist       = 26
)

// Request codes (3.0).
const (
	reqSendMessage          = 10
	reqUpdateAndCreateTopic = 17
	reqPullMessage          = 11
	reqQueryMessage         = 12
	reqQueryConsumerOffset  = 14
	reqUpdateConsumerOffset = 15
	reqSearchOffsetByTime   = 29
	reqGetMaxOffset         = 30
	reqGetMinOffset         = 31
	reqViewMessageByID      = 33
	reqHeartbeat            = 34
	reqUnregisterClient     = 35
	reqConsumerSendMsgBack  = 36
	reqEndTransaction       = 37
	reqGetConsumerList      = 38
	reqCheckClientConfig    = 46
	reqCheckTransaction     = 39
	reqNotifyConsumerIDs    = 40
	reqLockBatchMQ          = 41
	reqUnlockBatchMQ        = 42
	reqGetRouteInfo         = 105
	reqGetAllTopicList      = 206
	reqDeleteTopicInBroker  = 215
	reqDeleteTopicInNamesrv = 216
	reqSendMessageV2        = 310
	reqSendBatchMessage     = 320
)

// response returns the answer to req with code and remark.
func response(req *Command, code int16, remark string) *Command {
	return &Command{Code: code, Opaque: req.Opaque, Flag: flagResponse, Remark: remark}
}
