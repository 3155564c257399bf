// Package compression inflates the compressed message bodies clients send, so
// that the broker stores every body plain and every wire delivers it as it was
// sent (docs/compression.md).
//
// The RocketMQ 4.x clients compress a body past 4 KiB (zlib, or with the 5.x
// remoting client's setting LZ4 or zstd) and mark it in the send's sysFlag; the
// 5.x gRPC clients may mark a body GZIP, which the Go client decodes as gzip or
// zlib. Whatever the format, a compressed body is input from the network: a few
// kilobytes can inflate to gigabytes. Decompress never writes past its limit,
// and asks its caller's memory budget before each allocation it makes, decoders'
// windows included, so that what a request inflates is held to that request's
// share of memory.
package compression

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Format is a compression format.
type Format int

const (
	Zlib Format = iota // RFC 1950: java.util.zip.Deflater's and Go's compress/zlib
	Gzip               // RFC 1952, members concatenated or not
	LZ4                // the LZ4 frame format (lz4-java's LZ4FrameOutputStream)
	Zstd               // RFC 8878 frames
)

func (f Format) String() string {
	switch f {
	case Zlib:
		return "zlib"
	case Gzip:
		return "gzip"
	case LZ4:
		return "lz4"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Format(%d)", int(f))
}

var (
	// ErrTooLarge is returned for a body that inflates past the limit.
	ErrTooLarge = errors.New("the body decompresses past the limit")
	// ErrCorrupt is wrapped by the error for a body that is not in its format.
	ErrCorrupt = errors.New("the body does not decompress")
)

// Budget is the memory a decompression takes from: Take is asked for n bytes
// before they are allocated (its error ends the decompression with that error,
// and a Take that fails holds nothing), Give gets back bytes no longer needed.
type Budget interface {
	Take(n int) error
	Give(n int)
}

// zlibState is what a zlib or gzip reader allocates besides its output: the
// 32 KiB window and the Huffman tables, rounded up.
const zlibState = 64 << 10

// maxZstdWindow bounds the window a zstd frame may ask for: 8 MiB is what the
// format asks every decoder to support (RFC 8878, 3.1.1.1.2), and what zstd's
// levels up to 19 write.
const maxZstdWindow = 8 << 20

// zstdState is what the decoder allocates for a window: twice the window below
// 2 MiB, the window and 1 MiB above (klauspost/compress's history buffer), and
// its block buffers.
func zstdState(window int) int {
	if window < 2<<20 {
		return 2*window + 512<<10
	}
	return window + 1<<20 + 512<<10
}

// Decompress returns src inflated from format f: at most limit bytes, or
// ErrTooLarge. It takes from budget before each allocation, decoders' state
// included, and gives back what it no longer needs: on success the caller holds
// cap(out) of budget, to give back once it drops the result; on an error,
// nothing.
func Decompress(f Format, src []byte, limit int, budget Budget) (out []byte, err error) {
	t := &taker{b: budget}
	defer func() {
		keep := 0
		if err == nil {
			keep = cap(out)
		}
		t.give(t.held - keep)
	}()
	var r io.Reader
	switch f {
	case Zlib, Gzip:
		if err := t.take(zlibState); err != nil {
			return nil, err
		}
		var rc io.ReadCloser
		var err error
		if f == Zlib {
			rc, err = zlib.NewReader(bytes.NewReader(src))
		} else {
			rc, err = gzip.NewReader(bytes.NewReader(src))
		}
		if err != nil {
			return nil, fmt.Errorf("%w as %s: %v", ErrCorrupt, f, err)
		}
		defer rc.Close()
		r = rc
	case LZ4:
		if len(src) < 4 || binary.LittleEndian.Uint32(src) != lz4FrameMagic {
			return nil, fmt.Errorf("%w as lz4: no frame magic", ErrCorrupt)
		}
		// The reader holds a block as read and as inflated, and a body's later
		// frames may declare any block size, the legacy format's 8 MiB included:
		// reserve the most it can hold.
		if err := t.take(2 * lz4MaxBlock); err != nil {
			return nil, err
		}
		r = lz4.NewReader(bytes.NewReader(src))
	case Zstd:
		var h zstd.Header
		if err := h.Decode(src); err != nil {
			return nil, fmt.Errorf("%w as zstd: %v", ErrCorrupt, err)
		}
		window := h.WindowSize
		if h.SingleSegment {
			window = h.FrameContentSize
		}
		if window > maxZstdWindow || h.Skippable {
			return nil, fmt.Errorf("%w as zstd: a window of %d bytes (at most %d), or a skippable frame first", ErrCorrupt, window, maxZstdWindow)
		}
		// What is reserved is for the first frame's window: a later frame may ask
		// for no more (WithDecoderMaxWindow).
		window = max(window, zstdMinWindow)
		if err := t.take(zstdState(int(window))); err != nil {
			return nil, err
		}
		d, err := zstd.NewReader(bytes.NewReader(src), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			// The decoder compares windows with its memory bound as well: the
			// output is bounded by readWithin.
			zstd.WithDecoderMaxWindow(window), zstd.WithDecoderMaxMemory(max(uint64(limit)+1, maxZstdWindow)))
		if err != nil {
			return nil, fmt.Errorf("%w as zstd: %v", ErrCorrupt, err)
		}
		defer d.Close()
		r = d
	default:
		return nil, fmt.Errorf("%w: unknown format %d", ErrCorrupt, int(f))
	}
	out, err = readWithin(r, len(src), limit, t)
	if err != nil && !errors.Is(err, ErrTooLarge) {
		var refused reserveError
		if errors.As(err, &refused) {
			return nil, refused.err
		}
		return nil, fmt.Errorf("%w as %s: %v", ErrCorrupt, f, err)
	}
	return out, err
}

// zstdMinWindow is the least window a zstd frame has (RFC 8878, 3.1.1.1.2).
const zstdMinWindow = 1 << 10

// taker counts what a decompression holds of its budget.
type taker struct {
	b    Budget
	held int
}

func (t *taker) take(n int) error {
	if err := t.b.Take(n); err != nil {
		return err
	}
	t.held += n
	return nil
}

func (t *taker) give(n int) {
	if n > 0 {
		t.b.Give(n)
		t.held -= n
	}
}

// reserveError carries reserve's refusal through readWithin unchanged.
type reserveError struct{ err error }

func (e reserveError) Error() string { return e.err.Error() }

// readWithin reads r to its end into a buffer it grows by doubling, within limit
// bytes and what t is granted. A grown buffer is taken whole before the old one
// is copied and given back.
func readWithin(r io.Reader, srcLen, limit int, t *taker) ([]byte, error) {
	first := min(limit, max(4*srcLen, 4<<10))
	if err := t.take(first); err != nil {
		return nil, reserveError{err}
	}
	buf := make([]byte, 0, first)
	idle := 0
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				// Full: the body fits only if nothing is left.
				var one [1]byte
				n, err := io.ReadFull(r, one[:])
				switch {
				case n > 0:
					return nil, fmt.Errorf("%w of %d bytes", ErrTooLarge, limit)
				case err == io.EOF:
					return buf, nil
				default:
					return nil, err
				}
			}
			grown := min(2*cap(buf), limit)
			if err := t.take(grown); err != nil {
				return nil, reserveError{err}
			}
			old := cap(buf)
			buf = append(make([]byte, 0, grown), buf...)
			t.give(old)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		case n == 0:
			if idle++; idle > 100 {
				return nil, io.ErrNoProgress
			}
		default:
			idle = 0
		}
	}
}

// lz4FrameMagic opens an LZ4 frame; lz4MaxBlock is the largest block a frame
// of the body may hold: 8 MiB, the legacy format's, which the reader takes
// after a first modern frame.
const (
	lz4FrameMagic = 0x184D2204
	lz4MaxBlock   = 8 << 20
)
