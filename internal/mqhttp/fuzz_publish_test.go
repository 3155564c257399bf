package mqhttp

import (
	"encoding/xml"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// sdkPublish is the <Message> the SDKs send, marshalled as the Go SDK marshals
// its request.
type sdkPublish struct {
	XMLName    xml.Name `xml:"Message"`
	Body       string   `xml:"MessageBody"`
	Tag        string   `xml:"MessageTag,omitempty"`
	Properties string   `xml:"Properties,omitempty"`
}

// specProperties reads "k:v|k:v|" by the protocol's rule, independently of the
// handler: items split on '|'; an item counts when it has exactly one ':' with
// text on both sides; a later item wins.
func specProperties(s string) map[string]string {
	out := map[string]string{}
	for _, item := range strings.Split(s, "|") {
		if strings.Count(item, ":") != 1 {
			continue
		}
		k, v, _ := strings.Cut(item, ":")
		if k != "" && v != "" {
			out[k] = v
		}
	}
	return out
}

// FuzzPublishRoundTrip publishes a body, a tag and a properties text (props
// repeated 1+repeat<<(scale%16) times, with each '#' replaced by the
// repetition's number: the fuzzer moves an integer by at most 100 a step, and
// large texts must be within its reach) the way the SDKs write them, and asserts:
//   - parsing allocates no more than a small multiple of the document: properties
//     are bounded before they are parsed;
//   - the message is refused exactly for an empty body, a __STARTDELIVERTIME that
//     is not a time in milliseconds, a __TransCheckT outside 10 to 300 seconds,
//     or properties over the broker's 16 KiB;
//   - an accepted message carries the body, the tag and the properties the
//     protocol's rule reads, the four reserved ones as message fields;
//   - delivered (encoded as a consume answer, which the SDKs decode) and published
//     again, it is the same message.
func FuzzPublishRoundTrip(f *testing.F) {
	f.Add("hello mq! <&> 0", "TagA", "a:0|KEYS:MessageKey0|", uint8(0), uint8(0))
	f.Add("b2", "", "a:1|KEYS:key1|__STARTDELIVERTIME:1609826458000|__SHARDINGKEY:sk1|", uint8(0), uint8(0))
	f.Add("order", "TagB", "__SHARDINGKEY:user-1|", uint8(0), uint8(0))
	f.Add("half", "", "__TransCheckT:10|a:b|", uint8(0), uint8(0))
	f.Add("half", "", "__TransCheckT:301|", uint8(0), uint8(0))
	f.Add("timer", "", "__STARTDELIVERTIME:-1|", uint8(0), uint8(0))
	f.Add("line\r\nbreak\ttab \u00e9\u4e2d", " spaced tag ", "k:v with space|x:|:y|a:b:c|KEYS:  k1 \u00a0k2 |", uint8(0), uint8(0))
	f.Add("", "TagA", "", uint8(0), uint8(0))
	f.Add("many", "", "p:1|", uint8(100), uint8(4))
	f.Add("many keys", "", "p#:1|", uint8(100), uint8(4))
	f.Add("big", "", "KEYS:"+strings.Repeat("k", 1000)+" |", uint8(2), uint8(4))
	f.Fuzz(func(t *testing.T, body, tag, props string, repeat, scale uint8) {
		count := 1 + int(repeat)<<(scale%16)
		// Up to about 2 MiB: past the 16 KiB properties may take, and a
		// hundred times more than a bounded parse would allocate for them.
		if len(props) > 0 && count > (2<<20)/len(props) {
			count = (2 << 20) / len(props)
		}
		text := props
		if count > 1 && strings.Contains(props, "#") {
			var b strings.Builder
			for i := range count {
				b.WriteString(strings.ReplaceAll(props, "#", strconv.Itoa(i)))
			}
			text = b.String()
		} else {
			text = strings.Repeat(props, count)
		}
		doc, err := xml.Marshal(sdkPublish{Body: body, Tag: tag, Properties: text})
		if err != nil || len(doc) > maxRequestBytes {
			return
		}
		// The oracle: encoding/xml's reading of the document (which replaces
		// what XML cannot carry), and the protocol's rules.
		var sent sdkPublish
		if err := xml.Unmarshal(doc, &sent); err != nil {
			t.Fatalf("the SDK's document does not parse: %v", err)
		}
		want := specProperties(sent.Properties)
		var refusals []string
		if sent.Body == "" {
			refusals = append(refusals, "empty body")
		}
		if v, ok := want[propStartDeliver]; ok {
			if ms, err := strconv.ParseInt(v, 10, 64); err != nil || ms < 0 {
				refusals = append(refusals, "delivery time")
			}
		}
		if v, ok := want[propTransCheckTime]; ok {
			if s, err := strconv.ParseInt(v, 10, 64); err != nil || s < 10 || s > 300 {
				refusals = append(refusals, "check time")
			}
		}
		now := time.Now()
		a0 := allocated()
		m, e := parsePublish(doc, now)
		// Reading a document costs up to about 4 times its size (encoding/xml,
		// with the text copied out); a map of properties some 10 times theirs.
		if alloc, limit := allocated()-a0, 2<<20+6*uint64(len(doc)); alloc > limit {
			t.Fatalf("parsing a %d-byte document (%d of properties) allocated %d bytes, more than %d", len(doc), len(sent.Properties), alloc, limit)
		}
		if e != nil {
			if e.Status != 400 || e.Code != "InvalidArgument" {
				t.Fatalf("refused with %+v", e)
			}
			if len(refusals) == 0 && len(sent.Properties) <= broker.MaxPropertiesSize {
				t.Fatalf("refused %q: %s", doc, e.Message)
			}
			return
		}
		if len(refusals) > 0 {
			t.Fatalf("accepted despite %v: %q", refusals, doc)
		}
		if string(m.Body) != sent.Body || m.Tag != sent.Tag || !m.BornAt.Equal(now) || m.Queue != broker.AnyQueue {
			t.Fatalf("decoded %+v from %q", m, doc)
		}
		wantKeys := strings.Fields(want[propKeys])
		wantShard := want[propShardingKey]
		var wantAt time.Time
		if v, ok := want[propStartDeliver]; ok {
			if ms, _ := strconv.ParseInt(v, 10, 64); ms > 0 {
				wantAt = time.UnixMilli(ms)
			}
		}
		check, txn := want[propTransCheckTime]
		for _, k := range []string{propKeys, propShardingKey, propStartDeliver, propTransCheckTime} {
			delete(want, k)
		}
		secs, _ := strconv.Atoi(check)
		if !slices.Equal(m.Keys, wantKeys) || m.ShardingKey != wantShard || !m.DeliverAt.Equal(wantAt) ||
			m.Transactional != txn || m.CheckImmunity != time.Duration(secs)*time.Second || !maps.Equal(m.Properties, want) {
			t.Fatalf("decoded %+v, want keys %q sharding key %q delivery %v check %q properties %v", m, wantKeys, wantShard, wantAt, check, want)
		}

		// Delivered, decoded as the SDKs do, and published again.
		answer := appendMessages(nil, []broker.Delivery{{StoredMessage: broker.StoredMessage{Message: m, ID: "ID", BodyMD5: "MD5",
			StoreTime: now}, Handle: "H", ConsumedTimes: 1, FirstConsumeTime: now, NextConsumeTime: now}})
		var got consumedMessages
		if err := xml.Unmarshal(answer, &got); err != nil || len(got.Messages) != 1 {
			t.Fatalf("the consume answer does not parse (%v): %q", err, answer)
		}
		c := got.Messages[0]
		again, err := xml.Marshal(sdkPublish{Body: c.MessageBody, Tag: c.MessageTag, Properties: c.Properties})
		if err != nil {
			t.Fatal(err)
		}
		m2, e := parsePublish(again, now)
		if e != nil {
			t.Fatalf("the delivered message does not publish again: %v\n%s", e, again)
		}
		if !slices.Equal(m2.Body, m.Body) || m2.Tag != m.Tag || !slices.Equal(m2.Keys, m.Keys) || m2.ShardingKey != m.ShardingKey ||
			!m2.DeliverAt.Equal(m.DeliverAt) || m2.Transactional != m.Transactional || m2.CheckImmunity != m.CheckImmunity ||
			!maps.Equal(m2.Properties, m.Properties) {
			t.Fatalf("published %+v, delivered and published again %+v\nanswer %s", m, m2, answer)
		}
	})
}
