// Package fsyncfloor is a yardstick for benchmarks, not a store: the least work any
// durable store must do per acknowledged write on this machine. It appends records to
// one file whose blocks are written and synced in advance (so a sync carries data
// only, the cheapest case on ext4) and acknowledges each Append after an fdatasync
// that covers it, with group commit: one sync in flight, and the next one takes every
// record that arrived meanwhile. There is no index, no checksum, no recovery, and
// the file wraps around when full, so nothing it holds can be read back.
//
// That cheapest case is open only to a file that is overwritten in place. A store
// that keeps what it writes for its retention appends to files that grow, and on
// ext4 each sync of a grown file also commits the file's new extents to the
// journal. OpenGrowing is that floor: the same group commit, appending to a file
// that starts empty and never wraps.
//
// The broker's and the endpoints' publish benchmarks run against it to tell how much
// of a target the disk allows at all: 64 producers that each wait for their
// acknowledgement cannot pass 64 records per sync, whatever the store does.
package fsyncfloor

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Log is a group-committed append-only file. Append is safe for concurrent use.
type Log struct {
	f    *os.File
	size int64 // where the file wraps; zero: it grows instead

	mu      sync.Mutex
	synced  *sync.Cond
	pending []byte // records waiting for the next sync
	next    uint64 // the batch that pending will become
	durable uint64 // the last batch on disk
	syncing bool   // a goroutine is writing and syncing a batch
	off     int64  // where the next batch is written
	err     error

	syncs   uint64
	records uint64
	waited  time.Duration
}

// Open creates path with size bytes written (zeros) and synced, so that appends
// overwrite blocks that already exist.
func Open(path string, size int64) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros, off); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return nil, err
	}
	l := &Log{f: f, size: size, next: 1}
	l.synced = sync.NewCond(&l.mu)
	return l, nil
}

// OpenGrowing creates an empty file at path that appends grow.
func OpenGrowing(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	l := &Log{f: f, next: 1}
	l.synced = sync.NewCond(&l.mu)
	return l, nil
}

// GrowingForBenchmark opens a growing floor in tb's temporary directory, closed
// when tb ends.
func GrowingForBenchmark(tb testing.TB) *Log {
	tb.Helper()
	l, err := OpenGrowing(filepath.Join(tb.TempDir(), "floor"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// ForBenchmark opens a 64 MiB floor in tb's temporary directory, closed when tb ends.
func ForBenchmark(tb testing.TB) *Log {
	tb.Helper()
	l, err := Open(filepath.Join(tb.TempDir(), "floor"), 64<<20)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l
}

// Append returns once p is on disk.
func (l *Log) Append(p []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	l.pending = append(l.pending, p...)
	l.records++
	mine := l.next
	for l.durable < mine && l.err == nil {
		if l.syncing {
			l.synced.Wait()
			continue
		}
		// Nobody is syncing: this caller writes and syncs everything pending,
		// its own record included, and wakes everyone it covered.
		l.syncLocked()
	}
	return l.err
}

// syncLocked writes and syncs the pending batch with l.mu released meanwhile.
func (l *Log) syncLocked() {
	batch, off := l.pending, l.off
	if l.size > 0 && off+int64(len(batch)) > l.size {
		off = 0
	}
	l.pending = make([]byte, 0, cap(batch))
	l.off = off + int64(len(batch))
	n := l.next
	l.next++
	l.syncing = true
	l.mu.Unlock()

	start := time.Now()
	_, err := l.f.WriteAt(batch, off)
	if err == nil {
		err = unix.Fdatasync(int(l.f.Fd()))
	}
	waited := time.Since(start)

	l.mu.Lock()
	l.syncing = false
	l.syncs++
	l.waited += waited
	if err != nil {
		l.err = fmt.Errorf("fsync floor: %w", err)
	}
	l.durable = n
	l.synced.Broadcast()
}

// Stats are the records appended, the syncs that made them durable, and the mean
// time a write and its sync took.
func (l *Log) Stats() (records, syncs uint64, meanSync time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.syncs > 0 {
		meanSync = l.waited / time.Duration(l.syncs)
	}
	return l.records, l.syncs, meanSync
}

// Close closes the file; it does not remove it.
func (l *Log) Close() error { return l.f.Close() }
