package fsyncfloor

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Every acknowledged record is in the file, once, and concurrent appends share syncs.
func TestAppendIsDurableAndGrouped(t *testing.T) {
	for name, open := range map[string]func(path string) (*Log, error){
		"pre-written": func(path string) (*Log, error) { return Open(path, 4<<20) },
		"growing":     OpenGrowing,
	} {
		t.Run(name, func(t *testing.T) { testAppendIsDurableAndGrouped(t, open) })
	}
}

func testAppendIsDurableAndGrouped(t *testing.T, open func(path string) (*Log, error)) {
	path := filepath.Join(t.TempDir(), "floor")
	l, err := open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const writers, each = 32, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := l.Append(fmt.Appendf(nil, "<%02d:%02d>", w, i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	records, syncs, _ := l.Stats()
	if records != writers*each {
		t.Fatalf("records = %d, want %d", records, writers*each)
	}
	if syncs == 0 || syncs >= records {
		t.Fatalf("%d syncs for %d records: appends did not share syncs", syncs, records)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for w := range writers {
		for i := range each {
			if n := bytes.Count(data, fmt.Appendf(nil, "<%02d:%02d>", w, i)); n != 1 {
				t.Fatalf("record %d:%d found %d times", w, i, n)
			}
		}
	}
}

// A batch that does not fit before the end wraps to the start instead of growing
// the file.
func TestWrapsWithinSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "floor")
	l, err := Open(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rec := bytes.Repeat([]byte{1}, 300<<10)
	for range 5 {
		if err := l.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != 1<<20 {
		t.Fatalf("size %d, want %d", info.Size(), 1<<20)
	}
}

// A growing floor never wraps: the file holds every batch, in order.
func TestGrowingKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "floor")
	l, err := OpenGrowing(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var want []byte
	for i := range 5 {
		rec := bytes.Repeat([]byte{byte('a' + i)}, 300<<10)
		if err := l.Append(rec); err != nil {
			t.Fatal(err)
		}
		want = append(want, rec...)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, want) {
		t.Fatalf("file holds %d bytes, want the %d appended, in order", len(data), len(want))
	}
}
