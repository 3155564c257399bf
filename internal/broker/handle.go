package broker

import (
	"encoding/binary"
	"encoding/hex"
)

// A handle names one delivery of a message to a consumer, and the period it is
// good for: the receipt handle of a pop, which acknowledges it or changes its
// invisibility, and the transaction handle of a half message, which commits or
// rolls it back. It carries its own expiry, so that an expired handle is told from
// an unknown one without any state, and a random token, so that handles are
// unguessable and unique per delivery. It is text: a kind letter, then the
// upper-case hex of
//
//	receipt ("1"):     topic(4) queue(4) offset(8) token(8) visibleAt(8)
//	transaction ("T"): topic(4) seq(8) token(8) expiry(8)
//
// Both forms are what earlier versions handed out, so handles in flight across
// an upgrade stay good.
type handle struct {
	kind   byte
	topic  uint32
	queue  int    // receipt handles only
	pos    uint64 // the queue offset (receipt) or the half message's seq (transaction)
	token  uint64
	expiry int64 // ms: the end of the invisibility (receipt) or of the check-back period
}

const (
	receiptHandle     = '1'
	transactionHandle = 'T'
)

// size is the number of bytes the kind encodes.
func handleSize(kind byte) int {
	if kind == receiptHandle {
		return 32
	}
	return 28
}

func (h handle) String() string {
	var b [32]byte
	p := binary.BigEndian.AppendUint32(b[:0], h.topic)
	if h.kind == receiptHandle {
		p = binary.BigEndian.AppendUint32(p, uint32(h.queue))
	}
	p = binary.BigEndian.AppendUint64(p, h.pos)
	p = binary.BigEndian.AppendUint64(p, h.token)
	p = binary.BigEndian.AppendUint64(p, uint64(h.expiry))
	return upperHex(string(h.kind), p)
}

// parseHandle decodes a handle of the kind; anything else is not one.
func parseHandle(s string, kind byte) (handle, bool) {
	n := handleSize(kind)
	if len(s) != 1+2*n || s[0] != kind {
		return handle{}, false
	}
	var b [32]byte
	raw := b[:n]
	if _, err := hex.Decode(raw, []byte(s[1:])); err != nil {
		return handle{}, false
	}
	h := handle{kind: kind, topic: binary.BigEndian.Uint32(raw)}
	raw = raw[4:]
	if kind == receiptHandle {
		h.queue = int(binary.BigEndian.Uint32(raw))
		raw = raw[4:]
	}
	h.pos = binary.BigEndian.Uint64(raw)
	h.token = binary.BigEndian.Uint64(raw[8:])
	h.expiry = int64(binary.BigEndian.Uint64(raw[16:]))
	return h, true
}
