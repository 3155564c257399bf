// Package remoting serves RocketMQ 4.x's remoting protocol, the TCP protocol of the
// open-source RocketMQ clients, from the embedded broker: a name server and a broker
// on one listener. The byte-level contract is
// ../shared/specs/rocketmq-remoting-protocol.md; section numbers in comments refer
// to it. Every message semantic lives in internal/broker; this package maps frames
// onto it and keeps what only TCP clients have: connections, client ids, group
// membership and heartbeats.
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
	// maxHeader bounds the JSON header.
	maxHeader = 64 << 10
)

// Flag bits.
const (
	flagResponse = 1
	flagOneway   = 2
)

// Command is one remoting frame: a request or a response.
type Command struct {
	Code      int16             `json:"code"`
	Language  string            `json:"language,omitempty"`
	Version   int16             `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int32             `json:"flag"`
	Remark    string            `json:"remark,omitempty"`
	ExtFields map[string]string `json:"extFields,omitempty"`
	Body      []byte            `json:"-"`
}

// IsResponse reports whether the frame answers a request.
func (c *Command) IsResponse() bool { return c.Flag&flagResponse != 0 }

// ErrFrame is a frame that cannot be decoded; the connection it came on is closed.
var ErrFrame = errors.New("malformed remoting frame")

// ReadCommand reads one frame. Anything malformed is an error wrapping ErrFrame.
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
	if serType != 0 {
		// The Go client only sends JSON (1.3); so does everything this server answers.
		return nil, fmt.Errorf("%w: serialize type %d (only JSON is served)", ErrFrame, serType)
	}
	if headerLen > length-4 || headerLen > maxHeader {
		return nil, fmt.Errorf("%w: header length %d in a frame of %d", ErrFrame, headerLen, length)
	}
	buf := make([]byte, length-4)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	cmd := &Command{}
	if err := decodeHeader(buf[:headerLen], cmd); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFrame, err)
	}
	if len(buf) > int(headerLen) {
		cmd.Body = buf[headerLen:]
	}
	return cmd, nil
}

// AppendFrame appends c's frame to b. The header is JSON with every extFields
// value a string, which is what the Go client's decoder demands (1.2).
func AppendFrame(b []byte, c *Command) ([]byte, error) {
	start := len(b)
	b = append(b, make([]byte, 8)...) // lengths, once the header is written
	b, err := appendHeader(b, c)
	if err != nil {
		return b[:start], err
	}
	header := len(b) - start - 8
	if header > 0xFFFFFF {
		return b[:start], fmt.Errorf("header of %d bytes", header)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(4+header+len(c.Body)))
	binary.BigEndian.PutUint32(b[start+4:], uint32(header)) // serialize type 0: JSON
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
