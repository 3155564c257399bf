package remoting

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/clock"
)

// FuzzReadCommand: any bytes either decode to a command that encodes again, in its
// own serialize type, to the same command, or are refused with an error (answered,
// for a *RequestError); never a panic, never an allocation past the frame bound.
// The corpus holds the golden frames of testdata/frames.
func FuzzReadCommand(f *testing.F) {
	good, _ := AppendFrame(nil, &Command{Code: reqGetRouteInfo, Opaque: 1, ExtFields: map[string]string{"topic": "T"}, Body: []byte("b")})
	f.Add(good)
	bin, _ := AppendFrame(nil, &Command{Code: reqGetRouteInfo, Opaque: 1, ExtFields: map[string]string{"topic": "T"}, Body: []byte("b"), Serialize: SerializeRocketMQ})
	f.Add(bin)
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<30))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 9), 0, 0, 0, 5, '{', '"', 'c', '"', ':'))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 6), 1, 0, 0, 2, '{', '}'))
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := ReadCommand(bufio.NewReader(bytes.NewReader(data)))
		var unusable *RequestError
		if errors.As(err, &unusable) {
			if unusable.Request == nil || unusable.Code != codeNotSupported || unusable.Remark == "" {
				t.Fatalf("request error without what its answer needs: %+v", unusable)
			}
			return
		}
		if err != nil {
			return
		}
		again, err := AppendFrame(nil, cmd)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", cmd, err)
		}
		back, err := ReadCommand(bufio.NewReader(bytes.NewReader(again)))
		if err != nil || !reflect.DeepEqual(normalizeExt(*back), normalizeExt(*cmd)) {
			t.Fatalf("re-encoding changed %+v into %+v (%v)", cmd, back, err)
		}
	})
}

// FuzzBinaryHeader: any bytes either decode as a ROCKETMQ header to a command that
// encodes again to the same command, in no more bytes than it came in (nothing is
// made up), or are refused; never a panic.
func FuzzBinaryHeader(f *testing.F) {
	for _, c := range []*Command{
		{Code: reqSendMessageV2, Language: "JAVA", Version: 409, Opaque: 12, ExtFields: map[string]string{"a": "PID", "b": "T1", "e": "0"}},
		{Code: codeSuccess, Opaque: 12, Flag: flagResponse, Remark: "caf\xc3\xa9", ExtFields: map[string]string{"": "", "k": "\xff"}},
		{Code: -1, Language: "RUST", Opaque: -1, Flag: -1},
	} {
		h, err := appendBinaryHeader(nil, c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(h)
	}
	f.Add([]byte{0, 10, 0, 1, 0x99, 0, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Command
		if err := decodeBinaryHeader(data, &c); err != nil {
			return
		}
		again, err := appendBinaryHeader(nil, &c)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", c, err)
		}
		if len(again) > len(data) {
			t.Fatalf("a %d-byte header decoded to %+v, which takes %d bytes", len(data), c, len(again))
		}
		var back Command
		if err := decodeBinaryHeader(again, &back); err != nil || !reflect.DeepEqual(normalizeExt(back), normalizeExt(c)) {
			t.Fatalf("re-encoding changed %+v into %+v (%v)", c, back, err)
		}
	})
}

// discardConn is a connection whose writes go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(b []byte) (int, error)      { return len(b), nil }
func (discardConn) Close() error                     { return nil }
func (discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandle: signed requests with any code, fields and body get an answer (or
// none, for one-way requests) and never panic the server.
func FuzzHandle(f *testing.F) {
	b, err := broker.Open(broker.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o", Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		f.Fatal(err)
	}
	if _, err := b.EnsureTopic(testInstance, broker.TopicConfig{Name: "T", Type: broker.Normal, Queues: 2, Owner: "o"}); err != nil {
		f.Fatal(err)
	}
	if _, err := b.EnsureGroup(testInstance, broker.GroupConfig{ID: "G", Protocol: broker.TCP, Owner: "o"}); err != nil {
		f.Fatal(err)
	}
	s := &Server{Broker: b, Log: logr.Discard(), Clock: clock.Real{}, Advertise: "127.0.0.1:9876", StoreAddr: "127.0.0.1:9876"}
	s.setup()
	c := newConn(s, discardConn{})

	for _, seed := range []struct {
		code   int16
		k1, v1 string
		k2, v2 string
		body   string
	}{
		{reqSendMessage, "topic", "T", "properties", "TAGS\x01a\x02KEYS\x01k\x02", "body"},
		{reqSendBatchMessage, "b", "T", "e", "0", "\x00\x00\x00\x16\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"},
		{reqSendMessage, "topic", "T", "sysFlag", "1", string(zlibBody([]byte("a zlib body")))},
		{reqSendMessage, "topic", "T", "sysFlag", "1", string(zlibBody(make([]byte, 8<<20)))},
		{reqSendMessage, "topic", "T", "sysFlag", "513", "\x28\xb5\x2f\xfd\x00\x58\x01\x00\x00x"},
		{reqPullMessage, "consumerGroup", "G", "topic", "T", ""},
		{reqViewMessageByID, "offset", "1", "", "", ""},
		{reqQueryMessage, "topic", "T", "key", "k", ""},
		{reqCheckClientConfig, "", "", "", "", `{"subscriptionData":{"subString":"a > 1 AND b IN ('x')","expressionType":"SQL92"}}`},
		{reqHeartbeat, "", "", "", "", `{"clientID":"x","consumerDataSet":[{"groupName":"G","subscriptionDataSet":[{"topic":"T","subString":"a||b"}]}]}`},
		{reqLockBatchMQ, "", "", "", "", `{"consumerGroup":"G","clientId":"x","mqSet":[{"topic":"T","brokerName":"orderly","queueId":1}]}`},
		{reqConsumerSendMsgBack, "group", "G", "offset", "1", ""},
		{reqEndTransaction, "commitLogOffset", "1", "commitOrRollback", "8", ""},
		{reqQueryConsumerOffset, "consumerGroup", "G", "topic", "%RETRY%G", ""},
		{reqGetRouteInfo, "topic", "%DLQ%G", "", "", ""},
	} {
		f.Add(seed.code, seed.k1, seed.v1, seed.k2, seed.v2, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, code int16, k1, v1, k2, v2 string, body []byte) {
		ext := map[string]string{k1: v1, k2: v2, "queueId": "0", "queueOffset": "0", "maxMsgNums": "4"}
		req := &Command{Code: code, Opaque: 7, ExtFields: ext, Body: body}
		Sign(req, testAK, testSK)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		mem := &frameMemory{c: c}
		res := s.handle(ctx, c, req, mem)
		mem.give()
		if used := s.tenantMemory.Of(testInstance).InUse(); used != 0 {
			t.Fatalf("the instance holds %d bytes after the request", used)
		}
		if res != nil {
			if _, err := AppendFrame(nil, res); err != nil {
				t.Fatalf("answer to code %d cannot be encoded: %v", code, err)
			}
		}
	})
}
