package remoting

import (
	"encoding/binary"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/orderly-dev/orderly/internal/broker"
)

// encodeBatch writes msgs as a SEND_BATCH_MESSAGE body, their fields back among the
// properties as messageFromWire reads them.
func encodeBatch(msgs []broker.Message) []byte {
	var b []byte
	for _, m := range msgs {
		props := maps.Clone(m.Properties)
		if props == nil {
			props = map[string]string{}
		}
		if m.Tag != "" {
			props[propTags] = m.Tag
		}
		if len(m.Keys) > 0 {
			props[propKeys] = strings.Join(m.Keys, " ")
		}
		if m.DelayLevel > 0 {
			props[propDelay] = strconv.Itoa(m.DelayLevel)
		}
		if m.ShardingKey != "" {
			props[propShardingKey] = m.ShardingKey
		}
		p := appendProperties(nil, props)
		b = binary.BigEndian.AppendUint32(b, uint32(22+len(m.Body)+len(p)))
		b = append(b, make([]byte, 8)...)
		b = binary.BigEndian.AppendUint32(b, uint32(m.Flag))
		b = binary.BigEndian.AppendUint32(b, uint32(len(m.Body)))
		b = append(b, m.Body...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	return b
}

// FuzzDecodeBatch: any body either decodes to at most broker.MaxBatchMessages
// messages of at most broker.MaxBatchBytes of bodies, each with properties within
// the bound, that encode again to the same messages, or is refused; never a panic.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(batchBody([2]string{"a", "TAGS\x01t\x02KEYS\x01k1 k2\x02"}, [2]string{"", "DELAY\x013\x02x\x01y\x02"}))
	f.Add(batchBody([2]string{"b", "SHARDING_KEY\x01s\x02\x01\x02k\x01v\x01w\x02"}))
	f.Add([]byte{0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 21})
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := decodeBatch(body)
		if err != nil {
			return
		}
		bodies := 0
		for _, m := range msgs {
			bodies += len(m.Body)
		}
		if len(msgs) > broker.MaxBatchMessages || bodies > broker.MaxBatchBytes {
			t.Fatalf("%d messages of %d bytes taken", len(msgs), bodies)
		}
		again, err := decodeBatch(encodeBatch(msgs))
		for _, ms := range [][]broker.Message{msgs, again} {
			for i := range ms {
				if len(ms[i].Keys) == 0 {
					ms[i].Keys = nil // "KEYS" of blanks is no key, as none is
				}
			}
		}
		if err != nil || !reflect.DeepEqual(again, msgs) {
			t.Fatalf("re-encoding changed %+v into %+v (%v)", msgs, again, err)
		}
	})
}
