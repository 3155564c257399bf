package compression

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

func compress(t testing.TB, f Format, plain []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	}
	switch f {
	case Zlib:
		w, _ = zlib.NewWriterLevel(&b, 5) // the Go and Java clients' level
	case Gzip:
		w = gzip.NewWriter(&b)
	case LZ4:
		lw := lz4.NewWriter(&b)
		if err := lw.Apply(lz4.BlockSizeOption(lz4.Block4Mb)); err != nil { // lz4-java's default
			t.Fatal(err)
		}
		w = lw
	case Zstd:
		zw, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// meter is a Budget that counts what is held and its peak, and refuses past a
// cap.
type meter struct {
	held, peak, cap int
}

func (m *meter) Take(n int) error {
	if m.cap > 0 && m.held+n > m.cap {
		return fmt.Errorf("no memory for %d more bytes", n)
	}
	m.held += n
	m.peak = max(m.peak, m.held)
	return nil
}

func (m *meter) Give(n int) { m.held -= n }

var formats = []Format{Zlib, Gzip, LZ4, Zstd}

func text(n int) []byte {
	var sb strings.Builder
	for sb.Len() < n {
		fmt.Fprintf(&sb, "line %d of a body that compresses; ", sb.Len())
	}
	return []byte(sb.String()[:n])
}

func TestRoundTrips(t *testing.T) {
	for _, f := range formats {
		for _, n := range []int{0, 1, 4096, 100 << 10, 4 << 20} {
			t.Run(fmt.Sprintf("%s/%d", f, n), func(t *testing.T) {
				plain := text(n)
				var m meter
				got, err := Decompress(f, compress(t, f, plain), 4<<20, &m)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, plain) {
					t.Fatalf("got %d bytes back, sent %d", len(got), len(plain))
				}
				if m.held != cap(got) || m.peak < cap(got) {
					t.Fatalf("holds %d bytes (peak %d) for an output of capacity %d", m.held, m.peak, cap(got))
				}
			})
		}
	}
}

func TestConcatenatedGzipMembers(t *testing.T) {
	src := append(compress(t, Gzip, []byte("one ")), compress(t, Gzip, []byte("two"))...)
	var m meter
	got, err := Decompress(Gzip, src, 1<<20, &m)
	if err != nil || string(got) != "one two" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestBombsStopAtTheLimit inflates 64 MiB of zeros (a few kilobytes compressed)
// with a 1 MiB limit: ErrTooLarge, having reserved about the limit, not the bomb.
func TestBombsStopAtTheLimit(t *testing.T) {
	bomb := make([]byte, 64<<20)
	for _, f := range formats {
		t.Run(f.String(), func(t *testing.T) {
			src := compress(t, f, bomb)
			var m meter
			_, err := Decompress(f, src, 1<<20, &m)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("a %d-byte bomb: %v, want ErrTooLarge", len(src), err)
			}
			if m.peak > 2<<20+zstdState(maxZstdWindow)+2*lz4MaxBlock || m.held != 0 {
				t.Fatalf("peaked at %d bytes for a 1 MiB limit, and holds %d after the refusal", m.peak, m.held)
			}
		})
	}
}

func TestExactlyTheLimitFits(t *testing.T) {
	for _, f := range formats {
		plain := text(64 << 10)
		var m meter
		got, err := Decompress(f, compress(t, f, plain), len(plain), &m)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("%s: a body of exactly the limit: %d bytes, %v", f, len(got), err)
		}
		if _, err := Decompress(f, compress(t, f, plain), len(plain)-1, &m); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: a body one byte over the limit: %v, want ErrTooLarge", f, err)
		}
	}
}

func TestCorruptBodies(t *testing.T) {
	for _, f := range formats {
		good := compress(t, f, text(10<<10))
		for name, src := range map[string][]byte{
			"empty":     {},
			"truncated": good[:len(good)/2],
			"plain":     text(100),
			"flipped":   append(append([]byte{}, good[:len(good)-8]...), 1, 2, 3, 4, 5, 6, 7, 8),
		} {
			var m meter
			if _, err := Decompress(f, src, 1<<20, &m); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s, %s: %v, want ErrCorrupt", f, name, err)
			}
		}
	}
	var m meter
	if _, err := Decompress(Format(9), []byte("x"), 1<<20, &m); !errors.Is(err, ErrCorrupt) {
		t.Errorf("an unknown format: %v, want ErrCorrupt", err)
	}
}

// TestAZstdWindowPastTheBoundIsRefused hand-builds a frame header that asks for
// a 1 GiB window: refused before the decoder allocates it.
func TestAZstdWindowPastTheBoundIsRefused(t *testing.T) {
	// Magic, a descriptor with no single segment and no content size, and a
	// window descriptor of exponent 20: 2^(10+20) bytes.
	src := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0, 0, 0, 0}
	var m meter
	if _, err := Decompress(Zstd, src, 4<<20, &m); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%v, want ErrCorrupt", err)
	}
	if m.peak != 0 {
		t.Fatalf("took %d bytes for a refused frame", m.peak)
	}
}

func TestAReserveRefusalIsReturned(t *testing.T) {
	for _, f := range formats {
		src := compress(t, f, text(1<<20))
		// Room for the decoder's state, not for the output.
		m := meter{cap: zlibState + 128<<10}
		switch f {
		case LZ4:
			m.cap = 2*lz4MaxBlock + 128<<10
		case Zstd:
			var h zstd.Header
			if err := h.Decode(src); err != nil {
				t.Fatal(err)
			}
			m.cap = zstdState(int(max(h.WindowSize, h.FrameContentSize))) + 128<<10
		}
		_, err := Decompress(f, src, 4<<20, &m)
		if err == nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "no memory") {
			t.Errorf("%s: %v, want the reserve's refusal", f, err)
		}
		if m.peak > m.cap || m.held != 0 {
			t.Errorf("%s: peaked at %d past the cap %d, or holds %d after the refusal", f, m.peak, m.cap, m.held)
		}
	}
}

// FuzzDecompress: any input, any format, ends in a result within the limit or
// an error, with no more memory used than was reserved.
func FuzzDecompress(f *testing.F) {
	for _, fm := range formats {
		f.Add(int(fm), compress(f, fm, text(5000)))
		f.Add(int(fm), compress(f, fm, make([]byte, 1<<20)))
	}
	f.Fuzz(func(t *testing.T, format int, src []byte) {
		const limit = 256 << 10
		var m meter
		out, err := Decompress(Format(format&3), src, limit, &m)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("an error of neither kind: %v", err)
			}
			if m.held != 0 {
				t.Fatalf("holds %d bytes after an error", m.held)
			}
			return
		}
		if len(out) > limit || cap(out) != m.held {
			t.Fatalf("%d bytes out (capacity %d) for a limit of %d, holding %d", len(out), cap(out), limit, m.held)
		}
	})
}

// TestZstdLaterFrameMayNotAskMore: what is taken for a zstd body is sized by its
// first frame's window, so a later frame of the same body that declares a larger
// one is refused rather than decoded past what was taken.
func TestZstdLaterFrameMayNotAskMore(t *testing.T) {
	small := compress(t, Zstd, text(100))
	large := compress(t, Zstd, text(1<<20))
	var h zstd.Header
	if err := h.Decode(small); err != nil || h.WindowSize >= 1<<20 {
		t.Fatalf("the first frame's window is %d (%v); the test wants a small one", h.WindowSize, err)
	}
	var m meter
	m.cap = 64 << 20
	out, err := Decompress(Zstd, append(small, large...), 8<<20, &m)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a later frame with a larger window: %d bytes, %v; want ErrCorrupt", len(out), err)
	}
	if m.held != 0 {
		t.Fatalf("holds %d bytes after the refusal", m.held)
	}
	// Each frame alone decodes.
	for _, src := range [][]byte{small, large} {
		m = meter{cap: 64 << 20}
		if _, err := Decompress(Zstd, src, 8<<20, &m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLZ4LegacyFrameAfterAModernOne: the reader takes a legacy frame (8 MiB
// blocks) after a modern one, which is why 2 × 8 MiB is taken for LZ4; the body
// decodes whole, and what is held after is the result's capacity.
func TestLZ4LegacyFrameAfterAModernOne(t *testing.T) {
	modern := compress(t, LZ4, text(5000))
	var legacy bytes.Buffer
	lw := lz4.NewWriter(&legacy)
	if err := lw.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	second := text(300 << 10)
	if _, err := lw.Write(second); err != nil {
		t.Fatal(err)
	}
	if err := lw.Close(); err != nil {
		t.Fatal(err)
	}
	var m meter
	out, err := Decompress(LZ4, append(modern, legacy.Bytes()...), 1<<20, &m)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(text(5000), second...); !bytes.Equal(out, want) {
		t.Fatalf("%d bytes out, want %d", len(out), len(want))
	}
	if m.peak < 2*lz4MaxBlock || m.held != cap(out) {
		t.Fatalf("peaked at %d (want at least %d taken for the reader), holds %d for a result of capacity %d", m.peak, 2*lz4MaxBlock, m.held, cap(out))
	}
}
