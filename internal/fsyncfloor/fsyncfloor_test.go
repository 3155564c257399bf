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
	path := filepath.Join(t.TempDir(), "floor")
	l, err := Open(path, 4<<20)
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
