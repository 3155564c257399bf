package remoting

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

// prefix returns the first bytes of a frame announcing length bytes after its
// length field, with a JSON header of 16 bytes, followed by extra zero bytes.
func prefix(length uint32, extra int) []byte {
	b := make([]byte, 8+extra)
	binary.BigEndian.PutUint32(b, length)
	binary.BigEndian.PutUint32(b[4:], 16)
	return b
}

// pieces reads data in pieces of 1 to 65026 bytes, their sizes drawn from step
// (whole reads without one), as a slow client's bytes arrive.
type pieces struct {
	data []byte
	step []byte
	i    int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := len(b)
	if len(p.step) > 0 {
		k := int(p.step[p.i%len(p.step)])
		n = 1 + k*k
		p.i++
	}
	n = min(n, len(b), len(p.data))
	copy(b, p.data[:n])
	p.data = p.data[n:]
	return n, nil
}

// FuzzReadChunked: a frame read in pieces, through the smallest buffer and a memory
// budget, decodes as it does read whole; the memory asked for never passes twice
// what arrived (at least smallFrame); a refusal of memory ends the read with that
// refusal, having charged no more than was granted.
func FuzzReadChunked(f *testing.F) {
	good, _ := AppendFrame(nil, &Command{Code: reqGetRouteInfo, Opaque: 1, ExtFields: map[string]string{"topic": "T"}, Body: []byte("b")})
	f.Add(good, []byte{1}, uint32(1<<20))
	big, _ := AppendFrame(nil, &Command{Code: reqSendMessage, Opaque: 2, ExtFields: map[string]string{"topic": "T"}, Body: make([]byte, 9000)})
	f.Add(big, []byte{63, 1}, uint32(1<<20))
	f.Add(big, []byte{0, 90}, uint32(8<<10))
	f.Add(prefix(15<<20, 5000), []byte{0}, uint32(1<<20))
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<30), []byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, data, step []byte, limit uint32) {
		whole, wholeErr := ReadCommand(bufio.NewReader(bytes.NewReader(data)))
		src := &pieces{data: data, step: step}
		r := bufio.NewReaderSize(src, 16)
		granted := 0
		refused := errors.New("refused")
		cmd, charged, err := readChunked(r, func(n, held int) error {
			if held != granted {
				t.Fatalf("take told %d held, %d granted", held, granted)
			}
			if granted+n > int(limit) {
				return refused
			}
			granted += n
			return nil
		}, nil)
		if charged != granted {
			t.Fatalf("charged %d, granted %d", charged, granted)
		}
		if arrived := len(data) - len(src.data); charged > max(2*arrived, smallFrame) {
			t.Fatalf("charged %d for %d bytes arrived", charged, arrived)
		}
		if errors.Is(err, refused) {
			return // the whole read may have succeeded: memory is what differs
		}
		if (err == nil) != (wholeErr == nil) {
			t.Fatalf("in pieces: %v; whole: %v", err, wholeErr)
		}
		if err == nil && !reflect.DeepEqual(normalizeExt(*cmd), normalizeExt(*whole)) {
			t.Fatalf("in pieces %+v; whole %+v", cmd, whole)
		}
	})
}
