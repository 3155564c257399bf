//go:build !race

package broker

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
)

// Not under the race detector: with it, Pebble puts its memory in the Go heap in
// half of the processes, at random, to check its own accounting.

// StoreHeapBytes says whether the store's memory is in the Go heap, as the build
// decides: with cgo Pebble's memtables live outside it, without cgo inside. The
// manager's soft memory limit adds it, so a wrong answer either way means a
// collector running back to back or a limit past the pod's memory. `make test`
// runs it both ways.
func TestStoreHeapBytesFollowsWhereTheStoreAllocates(t *testing.T) {
	s, err := openStore(t.TempDir(), false) // on disk: a file system in memory is heap too
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	value := bytes.Repeat([]byte("v"), 4096)
	// 96 MiB of writes: memtables grow to their full size and stay allocated.
	for b := range 96 {
		w := s.newBatch()
		for i := range 256 {
			w.set(contractKey(fmt.Sprintf("b%03d-", b), i), value)
		}
		if err := s.commitNoSync(w); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	inHeap := ms.HeapAlloc >= memTableSize
	if inHeap != (StoreHeapBytes() > 0) {
		t.Fatalf("the Go heap holds %d MiB after writing to the store, yet StoreHeapBytes says %d", ms.HeapAlloc>>20, StoreHeapBytes())
	}
	t.Logf("heap %d MiB, StoreHeapBytes %d MiB", ms.HeapAlloc>>20, StoreHeapBytes()>>20)
}
