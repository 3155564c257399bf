package broker

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The store's contract: what the broker relies on of its storage, and what any
// other engine behind the same methods (store, writeBatch, storeIter) must keep.
// testStoreContract takes the engine through a harness, so that the contract is
// written once and run against each engine; TestStoreContract runs it on Pebble.
//
//   - Durable on return: a batch that commit returned for, or whose applyAsync
//     wait returned nil, survives a machine crash (in the default, synced mode).
//   - Atomic: after a crash a batch is there whole or not at all, synced or not.
//   - In order: batches apply in the order they were handed over; a later write
//     of a key wins.
//   - One moment per view: an iterator, and every clone of it, reads the store as
//     of the moment the first was opened, whatever commits meanwhile.
//   - Ordered keys: iterators walk [lower, upper) in byte order both ways.
type storeHarness struct {
	// open returns a new, empty store, closed when the test ends.
	open func(t *testing.T) *store
	// crash stops s as a machine crash would, keeping what was synced and, at
	// random, some of what was not, and returns the store reopened over what is
	// left, closed when the test ends.
	crash func(t *testing.T, s *store) *store
}

func testStoreContract(t *testing.T, h storeHarness) {
	t.Run("a synced commit survives a crash", func(t *testing.T) {
		s := h.open(t)
		for i := range 100 {
			w := s.newBatch()
			w.set(contractKey("k", i), contractValue(i))
			if err := s.commit(w); err != nil {
				t.Fatal(err)
			}
		}
		s = h.crash(t, s)
		for i := range 100 {
			if v, err := s.get(contractKey("k", i)); err != nil || !bytes.Equal(v, contractValue(i)) {
				t.Fatalf("key %d after the crash: %q %v", i, v, err)
			}
		}
	})

	t.Run("an applied batch is durable once its wait returns, in order with the others", func(t *testing.T) {
		s := h.open(t)
		var waits []func() error
		for i := range 200 {
			w := s.newBatch()
			w.set(contractKey("k", i), contractValue(i))
			w.set([]byte("last"), contractValue(i)) // the later write wins
			wait, err := s.applyAsync(w)
			if err != nil {
				t.Fatal(err)
			}
			waits = append(waits, wait)
		}
		for _, wait := range waits {
			if err := wait(); err != nil {
				t.Fatal(err)
			}
		}
		s = h.crash(t, s)
		for i := range 200 {
			if v, err := s.get(contractKey("k", i)); err != nil || !bytes.Equal(v, contractValue(i)) {
				t.Fatalf("key %d after the crash: %q %v", i, v, err)
			}
		}
		if v, err := s.get([]byte("last")); err != nil || !bytes.Equal(v, contractValue(199)) {
			t.Fatalf("the key every batch wrote holds %q %v, want the last batch's", v, err)
		}
	})

	t.Run("a batch is whole or absent after a crash, synced or not", func(t *testing.T) {
		s := h.open(t)
		const batches, keys = 300, 8
		for b := range batches {
			w := s.newBatch()
			for k := range keys {
				w.set(contractKey(fmt.Sprintf("b%03d-", b), k), contractValue(b))
			}
			if err := s.commitNoSync(w); err != nil {
				t.Fatal(err)
			}
		}
		s = h.crash(t, s)
		for b := range batches {
			found := 0
			for k := range keys {
				v, err := s.get(contractKey(fmt.Sprintf("b%03d-", b), k))
				switch {
				case errors.Is(err, errNotFound):
				case err != nil:
					t.Fatal(err)
				case !bytes.Equal(v, contractValue(b)):
					t.Fatalf("batch %d key %d holds %q", b, k, v)
				default:
					found++
				}
			}
			if found != 0 && found != keys {
				t.Fatalf("batch %d has %d of its %d keys after the crash", b, found, keys)
			}
		}
	})

	t.Run("an iterator and its clones read one moment", func(t *testing.T) {
		s := h.open(t)
		w := s.newBatch()
		for i := range 50 {
			w.set(contractKey("k", i), contractValue(i))
		}
		if err := s.commit(w); err != nil {
			t.Fatal(err)
		}
		it, err := s.iter(contractKey("k", 0), contractKey("k", 1000))
		if err != nil {
			t.Fatal(err)
		}
		defer it.close()
		// Commits race the reads: new keys, deleted keys, overwritten keys.
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := 50; i < 150; i++ {
				w := s.newBatch()
				w.set(contractKey("k", i), contractValue(i))
				w.delete(contractKey("k", i-50))
				w.set(contractKey("k", (i+1)%50), []byte("overwritten"))
				if err := s.commit(w); err != nil {
					t.Error(err)
					return
				}
			}
		})
		clone, err := it.clone(contractKey("k", 0), contractKey("k", 1000))
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		defer clone.close()
		for _, view := range []storeIter{it, clone} {
			n := 0
			for ok := view.first(); ok; ok = view.next() {
				if !bytes.Equal(view.key(), contractKey("k", n)) || !bytes.Equal(view.value(), contractValue(n)) {
					t.Fatalf("entry %d of the view is %q=%q, want the store as it was when the view opened", n, view.key(), view.value())
				}
				n++
			}
			if err := view.error(); err != nil || n != 50 {
				t.Fatalf("the view holds %d entries (%v), want 50", n, err)
			}
		}
	})

	t.Run("keys are walked in byte order within their bounds", func(t *testing.T) {
		s := h.open(t)
		w := s.newBatch()
		perm := rand.New(rand.NewPCG(1, 2)).Perm(100)
		for _, i := range perm {
			w.set(contractKey("k", i), contractValue(i))
		}
		w.set([]byte("j"), nil) // below the bounds
		w.set([]byte("l"), nil) // above them
		if err := s.commit(w); err != nil {
			t.Fatal(err)
		}
		lower, upper := contractKey("k", 10), contractKey("k", 90)
		it, err := s.iter(lower, upper)
		if err != nil {
			t.Fatal(err)
		}
		defer it.close()
		n := 10
		for ok := it.first(); ok; ok = it.next() {
			if !bytes.Equal(it.key(), contractKey("k", n)) {
				t.Fatalf("forward: %q where key %d belongs", it.key(), n)
			}
			n++
		}
		if n != 90 {
			t.Fatalf("forward walk ended at %d, want the upper bound 90 (exclusive)", n)
		}
		n = 89
		for ok := it.last(); ok; ok = it.prev() {
			if !bytes.Equal(it.key(), contractKey("k", n)) {
				t.Fatalf("backward: %q where key %d belongs", it.key(), n)
			}
			n--
		}
		if !it.seekGE(append(contractKey("k", 41), 0)) || !bytes.Equal(it.key(), contractKey("k", 42)) {
			t.Fatalf("seekGE past key 41 lands on %q", it.key())
		}
		if k, err := s.firstKey(lower, upper); err != nil || !bytes.Equal(k, lower) {
			t.Fatalf("firstKey: %q %v", k, err)
		}
		if k, err := s.lastKey(lower, upper); err != nil || !bytes.Equal(k, contractKey("k", 89)) {
			t.Fatalf("lastKey: %q %v", k, err)
		}
		if k, err := s.lastKey([]byte("x"), []byte("y")); err != nil || k != nil {
			t.Fatalf("lastKey of an empty range: %q %v", k, err)
		}
	})

	t.Run("a range delete removes exactly its range", func(t *testing.T) {
		s := h.open(t)
		w := s.newBatch()
		for i := range 20 {
			w.set(contractKey("k", i), contractValue(i))
		}
		if err := s.commit(w); err != nil {
			t.Fatal(err)
		}
		w = s.newBatch()
		w.deleteRange(contractKey("k", 5), contractKey("k", 15))
		if err := s.commit(w); err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			_, err := s.get(contractKey("k", i))
			if gone := errors.Is(err, errNotFound); gone != (i >= 5 && i < 15) {
				t.Fatalf("key %d after deleting [5, 15): %v", i, err)
			}
		}
	})
}

func contractKey(prefix string, i int) []byte { return fmt.Appendf(nil, "%s%06d", prefix, i) }
func contractValue(i int) []byte              { return fmt.Appendf(nil, "value of %d", i) }

// TestStoreContract runs the contract on the Pebble store, crashing it with a
// file system that keeps what was synced and half, at random, of what was not.
func TestStoreContract(t *testing.T) {
	filesystems := map[*store]*vfs.MemFS{}
	var mu sync.Mutex
	openOn := func(t *testing.T, fs *vfs.MemFS) *store {
		s, err := openStoreOn(fs, "", true)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		filesystems[s] = fs
		mu.Unlock()
		t.Cleanup(func() { _ = s.close() })
		return s
	}
	rng := rand.New(rand.NewPCG(7, 8))
	testStoreContract(t, storeHarness{
		open: func(t *testing.T) *store { return openOn(t, vfs.NewCrashableMem()) },
		crash: func(t *testing.T, s *store) *store {
			mu.Lock()
			fs := filesystems[s]
			mu.Unlock()
			// The clone is the disk as the crash left it; the old store goes on
			// writing only to the old file system, until it is closed.
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rng})
			return openOn(t, crashed)
		},
	})
}

// A data directory written before message records were kept in blob files (an
// older format of the engine) opens, keeps what it held, and takes new records.
func TestStoreOpensADirectoryOfTheOlderFormat(t *testing.T) {
	dir := t.TempDir()
	old, err := pebble.Open(dir, &pebble.Options{FormatMajorVersion: pebble.FormatMinSupported})
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 4096)
	if err := old.Set([]byte("before"), big, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := openStore(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	w := s.newBatch()
	w.set([]byte("after"), big)
	if err := s.commit(w); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"before", "after"} {
		if v, err := s.get([]byte(k)); err != nil || !bytes.Equal(v, big) {
			t.Fatalf("%s: %d bytes, %v", k, len(v), err)
		}
	}
}
