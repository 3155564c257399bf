package remoting

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// Headers as clients send them, and the shapes the fast paths leave to
// encoding/json.
var headerSeeds = []string{
	`{"code":105,"language":"GO","version":317,"opaque":1,"flag":0,"remark":"","extFields":{"topic":"T1","Signature":"wR1VUsPNj/pKUO22igowYCwe5FA=","AccessKey":"AK_TEST"}}`,
	`{"code":10,"extFields":{"properties":"TAGS\u0001TagA\u0002KEYS\u0001k\u0002","a":"\"\\\/\b\f\n\r\t"},"serializeTypeCurrentRPC":"JSON"}`,
	`{ "code" : -3 , "flag":2, "x": true, "y": false, "z": 12, "remark": "caf\u00e9 ☕" }`,
	`{"Code":1}`, `{"extFields":{"a":"1"},"extFields":{"b":"2"}}`, `{"code":1e2}`, `{"code":70000}`,
	`{"opaque":01}`, `{"remark":"\ud83d\ude00"}`, `{"remark":"\xff"}`, `{"x":null}`, `{"x":[1]}`, `null`,
	`{}`, `{"code":1} x`, `{"extFields":{"a":1}}`, `{"language":"GO","language":"JAVA"}`, "{\"remark\":\"a\x01\"}",
}

// FuzzHeaderAgreement: the hand-written header decoder agrees with encoding/json on
// every input: the same error-or-not and the same command.
func FuzzHeaderAgreement(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast, std Command
		fastErr := decodeHeader(data, &fast)
		stdErr := json.Unmarshal(data, &std)
		if (fastErr == nil) != (stdErr == nil) {
			t.Fatalf("%q: decodeHeader error %v, encoding/json error %v", data, fastErr, stdErr)
		}
		if stdErr == nil && !reflect.DeepEqual(normalizeExt(fast), normalizeExt(std)) {
			t.Fatalf("%q: decodeHeader %+v, encoding/json %+v", data, fast, std)
		}
	})
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
