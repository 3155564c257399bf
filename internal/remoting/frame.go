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
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("request %d cannot be served: %s", e.Request.Opaque, e.Remark)
}

// ReadCommand reads one frame. A frame that cannot be read is an error wrapping
// ErrFrame; one that can be read but not served as sent is a *RequestError.
func ReadCommand(r *bufio.Reader) (*Command, error) {
	var prefix [8]byte
	if _, err := io.ReadFull(r, prefix[:4]); err != nil {
		return nil, err
	}
	length := binary.BigEndian.Uint32(prefix[:4])
	if length < 4 || length > maxFrame {
		return nil, fmt.Errorf("%w: frame length %d outside 4..%d", ErrFrame, length, maxFrame)
	}
	if _, err := io.ReadFull(r, prefix[4:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	mark := binary.BigEndian.Uint32(prefix[4:])
	serType, headerLen := byte(mark>>24), mark&0xFFFFFF
	if serType != SerializeJSON && serType != SerializeRocketMQ {
		return nil, fmt.Errorf("%w: serialize type %d is neither JSON (0) nor ROCKETMQ (1)", ErrFrame, serType)
	}
	if headerLen > length-4 || headerLen > maxHeader {
		return nil, fmt.Errorf("%w: header length %d in a frame of %d", ErrFrame, headerLen, length)
	}
	buf := make([]byte, length-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	cmd := &Command{}
	var err error
	if serType == SerializeRocketMQ {
		err = decodeBinaryHeader(buf[:headerLen], cmd)
	} else {
		err = decodeHeader(buf[:headerLen], cmd)
	}
	cmd.Serialize = serType
	if len(buf) > int(headerLen) {
		cmd.Body = buf[headerLen:]
	}
	var unusable *fieldError
	switch {
	case errors.As(err, &unusable):
		return nil, &RequestError{Request: cmd, Code: codeNotSupported, Remark: unusable.Error()}
	case err != nil:
		return nil, fmt.Errorf("%w: header: %v", ErrFrame, err)
	}
	return cmd, nil
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
	codeNotSupported        = 3
	codeMessageIllegal      = 13
	codeNoPermission        = 16
	codeTopicNotExist       = 17
	codePullNotFound        = 19
	codePullRetryImmediate  = 20
	codePullOffsetMoved     = 21
	codeQueryNotFound       = 22
	codeSubscriptionMissing = 24
	codeGroupNotExist       = 26
)

// Request codes (3.0).
const (
	reqSendMessage          = 10
	reqUpdateAndCreateTopic = 17
	reqPullMessage          = 11
	reqQueryConsumerOffset  = 14
	reqUpdateConsumerOffset = 15
	reqSearchOffsetByTime   = 29
	reqGetMaxOffset         = 30
	reqGetMinOffset         = 31
	reqHeartbeat            = 34
	reqUnregisterClient     = 35
	reqConsumerSendMsgBack  = 36
	reqEndTransaction       = 37
	reqGetConsumerList      = 38
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
