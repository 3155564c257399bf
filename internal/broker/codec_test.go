package broker

import (
	"reflect"
	"testing"
	"time"
)

// Every stored encoding decodes to what was encoded: a layout slip here breaks
// recovery, so it must fail here first.
func TestStoredEncodingsRoundTrip(t *testing.T) {
	for _, group := range []string{"", "PG_orders"} {
		h := &halfState{seq: 1, topic: 2, queue: 3, tagHash: 4, store: 5, size: 6, dueAt: 7, producerGroup: group,
			checkAt: 8, deadline: 9, checks: 10, token: 11}
		got, ok := decodeHalfState(h.encode())
		if !ok || !reflect.DeepEqual(got, h) {
			t.Errorf("half state with group %q: %+v, %v", group, got, ok)
		}
	}
	for _, late := range []bool{false, true} {
		e := indexEntry{seq: 1, storeTime: 2, tagHash: 3, size: 4, late: late}
		if got, ok := decodeIndexEntry(e.encode()); !ok || got != e {
			t.Errorf("index entry: %+v, %v", got, ok)
		}
	}
	p := pendingEntry{topic: 1, queue: 2, tagHash: 3, store: 4, size: 5}
	if got, ok := decodePendingEntry(p.encode()); !ok || got != p {
		t.Errorf("pending entry: %+v, %v", got, ok)
	}
	m := &Message{
		Body: []byte("body"), Tag: "tag", Keys: []string{"k1", "k2"}, Properties: map[string]string{"a": "1", "": "x"},
		ShardingKey: "sk", DeliverAt: time.UnixMilli(5), CheckImmunity: 10 * time.Second, Transactional: true,
		ProducerGroup: "pg", BornAt: time.UnixMilli(6), BornHost: "h:1", Flag: 7, SysFlag: 8, ReconsumeTimes: 9,
	}
	r, err := decodeRecord(encodeRecord(record{topic: 1, queue: 2, storeTime: 3, md5: [16]byte{9}, msg: m}))
	if err != nil || r.topic != 1 || r.queue != 2 || r.storeTime != 3 || r.md5 != [16]byte{9} {
		t.Fatalf("record header: %+v, %v", r, err)
	}
	m.Queue = 0 // not stored: the record's queue is
	if !reflect.DeepEqual(r.msg, m) {
		t.Errorf("record message\n got %+v\nwant %+v", r.msg, m)
	}
	if h, err := decodeRecordHeader(encodeRecord(record{topic: 1, queue: 2, storeTime: 3, msg: m})); err != nil || h.topic != 1 || h.storeTime != 3 {
		t.Errorf("record header only: %+v, %v", h, err)
	}
}

// FuzzDecodeRecord feeds arbitrary bytes to the record decoder, which reads what the
// disk holds: it must return an error for garbage, never panic.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(record{topic: 1, msg: &Message{Body: []byte("x"), Keys: []string{"k"}, Properties: map[string]string{"a": "b"}}}))
	f.Add([]byte{recordVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err == nil && r.msg == nil {
			t.Fatal("no error and no message")
		}
	})
}
