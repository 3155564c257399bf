package remoting

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// Headers as clients send them, and the shapes the fast path leaves to the
// tolerant decoder.
var headerSeeds = []string{
	`{"code":105,"language":"GO","version":317,"opaque":1,"flag":0,"remark":"","extFields":{"topic":"T1","Signature":"wR1VUsPNj/pKUO22igowYCwe5FA=","AccessKey":"AK_TEST"}}`,
	`{"code":10,"extFields":{"properties":"TAGS\u0001TagA\u0002KEYS\u0001k\u0002","a":"\"\\\/\b\f\n\r\t"},"serializeTypeCurrentRPC":"JSON"}`,
	`{ "code" : -3 , "flag":2, "x": true, "y": false, "z": 12, "remark": "caf\u00e9 ☕" }`,
	`{"Code":1}`, `{"extFields":{"a":"1"},"extFields":{"b":"2"}}`, `{"code":1e2}`, `{"code":70000}`,
	`{"opaque":01}`, `{"remark":"\ud83d\ude00"}`, `{"remark":"\xff"}`, `{"x":null}`, `{"x":[1]}`, `null`,
	`{}`, `{"code":1} x`, `{"extFields":{"a":1}}`, `{"language":"GO","language":"JAVA"}`, "{\"remark\":\"a\x01\"}",
	// The C++ client (jsoncpp, keys sorted, a newline after).
	`{"code":10,"extFields":{"AccessKey":"AK","OnsChannel":"ALIYUN","Signature":"s","batch":"false","defaultTopicQueueNums":4,"flag":0,"queueId":0,"sysFlag":0},"flag":0,"language":"CPP","opaque":3,"remark":"","version":0}` + "\n",
	// The Node client (JSON.stringify): numbers and booleans, no remark.
	`{"code":310,"language":"JAVA","opaque":5,"flag":0,"version":121,"extFields":{"a":"PID","e":0,"f":0,"g":1795255626715,"k":false,"l":16,"Signature":"s","AccessKey":"AK","OnsChannel":"ALIYUN"}}`,
	// What the tolerant decoder takes and the fast one leaves to it.
	`{"code":"10","opaque":"7","flag":"0","version":"317","language":9,"remark":null,"extFields":{"n":null,"d":1.5,"e":-2E+3,"t":true}}`,
	`{"code":10.0,"opaque":7,"extFields":null}`, `{"extFields":{"a":null,"a":"x"},"remark":"r","remark":null}`,
	// And what it answers without serving, or cannot read.
	`{"opaque":7,"extFields":{"a":{"b":1}}}`, `{"opaque":7,"extFields":"x"}`, `{"opaque":7,"code":1.5}`, `{"opaque":"x"}`, `[1]`,
}

// strictHeader is the header as the decoder took it before extFields values could
// be other than strings: encoding/json into this shape.
type strictHeader struct {
	Code      int16             `json:"code"`
	Language  string            `json:"language"`
	Version   int16             `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int32             `json:"flag"`
	Remark    string            `json:"remark"`
	ExtFields map[string]string `json:"extFields"`
}

// FuzzHeaderAgreement: wherever the fast decoder decodes a header, the tolerant one
// decodes it to the same command; decodeHeader is one or the other; and every
// header the strict all-string decoding took, the tolerant decoder takes to the
// same command (so nothing served before is served differently), nulls aside,
// which now mean an absent value.
func FuzzHeaderAgreement(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, tolerant, both Command
		fastOK := fastDecodeHeader(data, &fast)
		tolErr := decodeHeaderTolerant(data, &tolerant)
		if fastOK && (tolErr != nil || !reflect.DeepEqual(normalizeExt(fast), normalizeExt(tolerant))) {
			t.Fatalf("%q: fast %+v, tolerant %+v (%v)", data, fast, tolerant, tolErr)
		}
		if err := decodeHeader(data, &both); (err == nil) != (tolErr == nil) || (err == nil && !reflect.DeepEqual(normalizeExt(both), normalizeExt(tolerant))) {
			t.Fatalf("%q: decodeHeader %+v (%v), tolerant %+v (%v)", data, both, err, tolerant, tolErr)
		}
		var strict strictHeader
		if json.Unmarshal(data, &strict) != nil || bytes.Contains(data, []byte("null")) {
			return
		}
		want := Command{Code: strict.Code, Language: strict.Language, Version: int32(strict.Version), Opaque: strict.Opaque,
			Flag: strict.Flag, Remark: strict.Remark, ExtFields: strict.ExtFields}
		if tolErr != nil || !reflect.DeepEqual(normalizeExt(tolerant), normalizeExt(want)) {
			t.Fatalf("%q: strict %+v, tolerant %+v (%v)", data, want, tolerant, tolErr)
		}
	})
}

// The tolerant decoder's reading of values, against what each means on the wire.
func TestTolerantHeaderValues(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   Command
	}{
		{`{"code":10,"opaque":1,"extFields":{"queueId":0,"sysFlag":0,"batch":false,"unitMode":true,"g":1795255626715,"d":1.50,"e":-2E+3,"n":null,"s":"x"}}`,
			Command{Code: 10, Opaque: 1, ExtFields: map[string]string{"queueId": "0", "sysFlag": "0", "batch": "false", "unitMode": "true",
				"g": "1795255626715", "d": "1.50", "e": "-2E+3", "s": "x"}}},
		{`{"code":"10","version":"317","opaque":"-7","flag":"2","language":"GO","remark":null}`,
			Command{Code: 10, Version: 317, Opaque: -7, Flag: 2, Language: "GO"}},
		{`{"code":10.0,"opaque":1e2,"language":1}`, Command{Code: 10, Opaque: 100, Language: "CPP"}},
		{`{"language":9,"remark":12}`, Command{Language: "GO", Remark: "12"}},
		{`{"language":99}`, Command{Language: "OTHER"}},
		// The ONS clients' version: Integer.MAX_VALUE less the digits of their own.
		{`{"version":2147483459,"opaque":2}`, Command{Version: 2147483459, Opaque: 2}},
		{`{"opaque":3,"unknown":{"nested":[1,{"x":null}]},"serializeTypeCurrentRPC":"JSON","extFields":null}`, Command{Opaque: 3}},
		{`{"extFields":{"a":"1","a":null,"b":null,"b":2}}`, Command{ExtFields: map[string]string{"b": "2"}}},
	} {
		var got Command
		if err := decodeHeader([]byte(tc.header), &got); err != nil || !reflect.DeepEqual(normalizeExt(got), normalizeExt(tc.want)) {
			t.Errorf("%s: got %+v (%v), want %+v", tc.header, got, err, tc.want)
		}
	}
	// Answered with a reason, not served: the opaque and flag are known.
	for _, header := range []string{
		`{"opaque":7,"flag":2,"code":70000}`, `{"opaque":7,"flag":2,"code":1.5}`, `{"opaque":7,"flag":2,"code":true}`,
		`{"opaque":7,"flag":2,"extFields":{"a":{"b":"c"}}}`, `{"opaque":7,"flag":2,"extFields":["a"]}`,
		`{"opaque":7,"flag":2,"remark":{}}`, `{"opaque":7,"flag":2,"language":true}`, `{"opaque":7,"flag":2,"version":"v3"}`,
	} {
		var got Command
		err := decodeHeader([]byte(header), &got)
		var fe *fieldError
		if !errors.As(err, &fe) || got.Opaque != 7 || got.Flag != 2 {
			t.Errorf("%s: %+v, %v; want a field error with the opaque and flag", header, got, err)
		}
	}
	// Not a request at all: nothing to answer.
	for _, header := range []string{`{"opaque":"seven"}`, `{"opaque":4294967296}`, `[1]`, `"x"`, `{"code":1`, `{'code':1}`} {
		var got Command
		err := decodeHeader([]byte(header), &got)
		var fe *fieldError
		if err == nil || errors.As(err, &fe) {
			t.Errorf("%s: %v; want an error that is not a field error", header, err)
		}
	}
}

// FuzzHeaderEncoding: the hand-written encoder writes what json.Marshal writes.
func FuzzHeaderEncoding(f *testing.F) {
	f.Add(int16(105), "GO", int32(7), int32(1), "remark <&> \u2028 \x01\b\f\n\r\t\"\\", "topic", "T1\x01\x02")
	f.Add(int16(0), "", int32(0), int32(0), "", "", "")
	f.Add(int16(-1), "\xff", int32(-5), int32(3), "caf\xc3\xa9", "k\xfe", "v")
	f.Fuzz(func(t *testing.T, code int16, lang string, opaque, flag int32, remark, k, v string) {
		c := &Command{Code: code, Language: lang, Version: 317, Opaque: opaque, Flag: flag, Remark: remark}
		if k != "" || v != "" {
			c.ExtFields = map[string]string{k: v, "Signature": "x", "AccessKey": k + v}
		}
		got, err := appendHeader(nil, c)
		want, werr := json.Marshal(c)
		if err != nil || werr != nil || !bytes.Equal(got, want) {
			t.Fatalf("appendHeader = %s (%v), json.Marshal = %s (%v)", got, err, want, werr)
		}
	})
}

func normalizeExt(c Command) Command {
	if len(c.ExtFields) == 0 {
		c.ExtFields = nil
	}
	return c
}

func BenchmarkHeaderDecode(b *testing.B) {
	data := []byte(headerSeeds[1])
	b.ReportAllocs()
	for b.Loop() {
		var c Command
		if err := decodeHeader(data, &c); err != nil {
			b.Fatal(err)
		}
	}
}

// goSendHeader is a SEND_MESSAGE header as rocketmq-client-go v2.1.2 writes it:
// every extFields value a string, the keys in the order its map gave them.
const goSendHeader = `{"code":10,"language":"GO","version":317,"opaque":28,"flag":0,"remark":"","extFields":{"reconsumeTimes":"0","topic":"T1","flag":"0","unitMode":"false","defaultTopic":"TBW102","defaultTopicQueueNums":"4","AccessKey":"AK_TEST","producerGroup":"pg1","queueId":"1","sysFlag":"0","bornTimestamp":"1795255626715","Signature":"SblTTn6d8JOrzeRDrAI06XyWf7E=","maxReconsumeTimes":"0","batch":"false","properties":"TAGS\u0001TagA\u0002KEYS\u0001K1 K1b\u0002myProp\u0001v1\u0002UNIQ_KEY\u0001C000020239AB00000000692b01100001\u0002"}}`

// BenchmarkHeaderDecodeGoSend: the hot path, the Go client's all-string SEND header.
func BenchmarkHeaderDecodeGoSend(b *testing.B) {
	data := []byte(goSendHeader)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var c Command
		if err := decodeHeader(data, &c); err != nil {
			b.Fatal(err)
		}
	}
}

// The headers the clients send stay on the fast path, the C++ and Node clients'
// numbers and booleans included; only the golden header written to exercise the
// tolerant decoder leaves it.
func TestClientHeadersTakeTheFastPath(t *testing.T) {
	for _, g := range goldenFrames {
		frame := g.build()
		mark := binary.BigEndian.Uint32(frame[4:])
		if mark>>24 != uint32(SerializeJSON) {
			continue
		}
		var c Command
		if fast := fastDecodeHeader(frame[8:8+mark&0xFFFFFF], &c); fast != (g.name != "scalars-null") {
			t.Errorf("%s: fast path %v", g.name, fast)
		}
	}
}

// BenchmarkHeaderDecodeCppSend: the C++ client's SEND header, numbers among its
// extFields, on the fast path too.
func BenchmarkHeaderDecodeCppSend(b *testing.B) {
	var frame []byte
	for _, g := range goldenFrames {
		if g.name == "cpp-send" {
			frame = g.build()
		}
	}
	data := frame[8 : 8+binary.BigEndian.Uint32(frame[4:])&0xFFFFFF]
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var c Command
		if err := decodeHeader(data, &c); err != nil {
			b.Fatal(err)
		}
	}
}
