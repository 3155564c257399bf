package broker

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// This file is the only one that knows the storage engine is Pebble. The broker talks
// to it through store, writeBatch and storeIter.

// errNotFound is the store's "no such key".
var errNotFound = errors.New("key not found")

// store is the broker's durable key-value store.
type store struct {
	db    *pebble.DB
	cache *pebble.Cache
	sync  bool // fsync each commit (the default); false is the relaxed flush mode
	dir   string
}

// Memory. Pebble charges its memtables to the block cache, so the cache is sized
// for the blocks consumers read plus every memtable that can exist at once: with a
// cache only as large as the memtables (the first configuration here), no block was
// ever cached and every read went back to the file. Consumption walks the log in
// order, so one cached block serves the dozens of messages it holds.
// separatedValueMin is the least value size kept in a blob file: message records
// of about 200 bytes of body and up. Smaller values (index entries, offsets,
// timers, half-message state, metadata) stay beside their keys.
const separatedValueMin = 256

const (
	memTableSize   = 32 << 20
	maxMemTables   = 4
	blockCacheSize = 128<<20 + memTableSize*maxMemTables
)

// openStore opens (or creates) the store in dir; an empty dir keeps everything in
// memory, for tests.
func openStore(dir string, syncWrites bool) (*store, error) {
	if dir == "" {
		return openStoreOn(vfs.NewMem(), "", syncWrites)
	}
	return openStoreOn(zeroAheadFS{vfs.Default}, dir, syncWrites)
}

// openStoreOn opens the store in dir of fs: the contract tests give it a file
// system whose crashes they simulate.
func openStoreOn(fs vfs.FS, dir string, syncWrites bool) (*store, error) {
	opts := &pebble.Options{
		// Message records arrive with ever-growing keys, so flushed tables rarely
		// overlap and sink by move compactions. Bodies are usually small or already
		// compressed by the application: don't spend the two cores compressing them.
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: maxMemTables,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       64,
		LBaseMaxBytes:               256 << 20,
		CompactionConcurrencyRange:  func() (int, int) { return 1, 2 },
		Logger:                      quietLogger{},
		FormatMajorVersion:          pebble.FormatValueSeparation,
	}
	// Message records are kept apart from the keys, in blob files: compactions,
	// which the index entries flushed beside the records keep busy, then move
	// references to the bodies instead of rewriting them. On this machine that
	// took BenchmarkPublish up by 11 to 20% and BenchmarkPublishWithBacklog (10
	// million messages stored) from 54,000 to 83,000 msg/s, pop + ack and restart
	// unchanged (README, "The broker"). An sstable may reference up to 200 blob
	// files: with the default depth of 10, compactions of a large backlog kept
	// rewriting values, and the backlog figure fell to 21,000. A queue's records
	// are deleted oldest first, so whole blob files fall out of use and go without
	// rewrites; the rest is rewritten once half of a file older than ten minutes
	// is garbage.
	opts.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{Enabled: true, MinimumSize: separatedValueMin, MaxBlobReferenceDepth: 200,
			RewriteMinimumAge: 10 * time.Minute, TargetGarbageRatio: 0.5}
	}
	for i := range opts.Levels {
		opts.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.NoCompression }
		opts.Levels[i].BlockSize = 32 << 10
	}
	cache := pebble.NewCache(blockCacheSize)
	opts.Cache = cache
	opts.EnsureDefaults()
	opts.FS = fs
	db, err := pebble.Open(dir, opts)
	if err != nil {
		cache.Unref()
		return nil, fmt.Errorf("failed to open store in %q: %w", dir, err)
	}
	return &store{db: db, cache: cache, sync: syncWrites, dir: dir}, nil
}

// StorageStats describe the store on disk, for metrics.
type StorageStats struct {
	// Size is what the store's files take on disk (tables, logs, manifests).
	Size uint64
	// WriteAmplification is the engine's bytes written to tables (flushes and
	// compactions) per byte written to its write-ahead log, since it opened.
	WriteAmplification float64
	// CompactionDebt is the engine's estimate of the bytes compactions must
	// rewrite before its levels are in shape: debt that keeps growing means
	// writes outrun compaction, and writes stall once it is too high.
	CompactionDebt uint64
	// DiskFree and DiskSize are the filesystem's that holds the store: free for
	// an unprivileged writer, and in all; both zero for a store in memory.
	DiskFree, DiskSize uint64
}

func (s *store) stats() StorageStats {
	m := s.db.Metrics()
	total := m.Total()
	out := StorageStats{Size: m.DiskSpaceUsage(), WriteAmplification: total.WriteAmp(), CompactionDebt: m.Compact.EstimatedDebt}
	var fs unix.Statfs_t
	if s.dir != "" && unix.Statfs(s.dir, &fs) == nil {
		out.DiskFree = fs.Bavail * uint64(fs.Bsize)
		out.DiskSize = fs.Blocks * uint64(fs.Bsize)
	}
	return out
}

func (s *store) close() error {
	err := s.db.Close()
	s.cache.Unref()
	return err
}

// get returns a copy of the value at key, or errNotFound.
func (s *store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(v)
	_ = closer.Close()
	return out, nil
}

// writeBatch collects writes that become visible and durable together.
type writeBatch struct{ b *pebble.Batch }

func (s *store) newBatch() writeBatch { return writeBatch{s.db.NewBatch()} }

func (w writeBatch) set(key, value []byte)         { _ = w.b.Set(key, value, nil) }
func (w writeBatch) delete(key []byte)             { _ = w.b.Delete(key, nil) }
func (w writeBatch) deleteRange(start, end []byte) { _ = w.b.DeleteRange(start, end, nil) }
func (w writeBatch) empty() bool                   { return w.b.Empty() }
func (w writeBatch) len() int                      { return w.b.Len() }

// discard releases a batch that will not be committed.
func (w writeBatch) discard() { _ = w.b.Close() }

// commit applies w, durably unless the store runs in relaxed mode, and releases it.
func (s *store) commit(w writeBatch) error {
	defer w.b.Close()
	return s.db.Apply(w.b, s.writeOpts())
}

// commitNoSync applies w without waiting for the disk: for state whose loss in a
// machine crash only causes redelivery (consume progress), never for messages. It
// still survives a process crash, since the write-ahead log is in the OS's hands.
func (s *store) commitNoSync(w writeBatch) error {
	defer w.b.Close()
	return s.db.Apply(w.b, pebble.NoSync)
}

// applyAsync applies w in order with every other commit and returns a function that
// waits until it is durable and releases it. Applying is quick; the caller can apply
// the next batch while the disk syncs this one, and the disk syncs both at once.
func (s *store) applyAsync(w writeBatch) (wait func() error, err error) {
	if !s.sync {
		// Relaxed mode: nothing to wait for.
		return func() error { return nil }, s.commit(w)
	}
	if err := s.db.ApplyNoSyncWait(w.b, pebble.Sync); err != nil {
		w.b.Close()
		return nil, err
	}
	return func() error {
		defer w.b.Close()
		return w.b.SyncWait()
	}, nil
}

func (s *store) writeOpts() *pebble.WriteOptions {
	if s.sync {
		return pebble.Sync
	}
	return pebble.NoSync
}

// settle flushes the memtables and waits until no flush or compaction has run for
// a moment (Pebble may keep a small estimated debt that it never compacts), or
// until limit passes.
func (s *store) settle(limit time.Duration) error {
	if err := s.db.Flush(); err != nil {
		return err
	}
	deadline := time.Now().Add(limit)
	for quiet := 0; quiet < 10; {
		if time.Now().After(deadline) {
			return fmt.Errorf("storage still compacting after %s", limit)
		}
		if m := s.db.Metrics(); m.Compact.NumInProgress == 0 && m.Flush.NumInProgress == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// storeIter walks keys in [lower, upper) in order. An iterator reads the store as
// of the moment it was opened: commits after that are not in it.
type storeIter struct{ it *pebble.Iterator }

func (s *store) iter(lower, upper []byte) (storeIter, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return storeIter{}, err
	}
	return storeIter{it}, nil
}

// clone opens an iterator over [lower, upper) as of the same moment as i: the two
// together are one consistent view of the store, whatever commits in between.
func (i storeIter) clone(lower, upper []byte) (storeIter, error) {
	c, err := i.it.Clone(pebble.CloneOptions{IterOptions: &pebble.IterOptions{LowerBound: lower, UpperBound: upper}})
	if err != nil {
		return storeIter{}, err
	}
	return storeIter{c}, nil
}

func (i storeIter) first() bool          { return i.it.First() }
func (i storeIter) last() bool           { return i.it.Last() }
func (i storeIter) seekGE(k []byte) bool { return i.it.SeekGE(k) }
func (i storeIter) seekLT(k []byte) bool { return i.it.SeekLT(k) }
func (i storeIter) next() bool           { return i.it.Next() }
func (i storeIter) prev() bool           { return i.it.Prev() }
func (i storeIter) valid() bool          { return i.it.Valid() }

// key and value are valid until the iterator moves. value is for values shorter
// than separatedValueMin, which live beside their keys; a value that may be longer
// is read with valueErr, since reading it from its blob file can fail.
func (i storeIter) key() []byte   { return i.it.Key() }
func (i storeIter) value() []byte { return i.it.Value() }

// valueErr returns the value, valid until the iterator moves, or why it could not
// be read.
func (i storeIter) valueErr() ([]byte, error) { return i.it.ValueAndErr() }
func (i storeIter) close() error              { return i.it.Close() }
func (i storeIter) error() error              { return i.it.Error() }

// lastKey returns a copy of the greatest key in [lower, upper), or nil.
func (s *store) lastKey(lower, upper []byte) ([]byte, error) {
	it, err := s.iter(lower, upper)
	if err != nil {
		return nil, err
	}
	defer it.close()
	if !it.last() {
		return nil, nil
	}
	return bytes.Clone(it.key()), nil
}

// firstKey returns a copy of the least key in [lower, upper), or nil.
func (s *store) firstKey(lower, upper []byte) ([]byte, error) {
	it, err := s.iter(lower, upper)
	if err != nil {
		return nil, err
	}
	defer it.close()
	if !it.first() {
		return nil, nil
	}
	return bytes.Clone(it.key()), nil
}

// zeroAheadFS gives Pebble's write-ahead logs space that is already written. A
// publish waits for the log's fdatasync, and on ext4 that costs most when the write
// grew the file (the new size must be journaled too) or landed in fallocate'd but
// unwritten extents (Pebble's own preallocation: they must be converted). Writing
// zeros ahead of the log in 1 MiB steps, and starting their writeback at once,
// leaves most syncs with data blocks only. Measured on this machine's disk with 44
// KB commits: mean fdatasync 402-446 µs appending, 264-329 µs zeroed ahead.
// Pebble reads a zeroed tail as the end of the log: it is what its own
// preallocation and log recycling leave behind.
type zeroAheadFS struct{ vfs.FS }

func (fs zeroAheadFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	if err != nil || !isWAL(name) {
		return f, err
	}
	return &zeroAheadFile{File: f}, nil
}

func (fs zeroAheadFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if err != nil || !isWAL(newname) {
		return f, err
	}
	// A recycled log already has its old length of written blocks.
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &zeroAheadFile{File: f, zeroedTo: info.Size()}, nil
}

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

const zeroStep = 1 << 20

var zeroBlock = make([]byte, zeroStep)

// zeroAheadFile is a log file written sequentially by Write.
type zeroAheadFile struct {
	vfs.File
	written  int64 // where the next Write lands
	zeroedTo int64 // the file is written up to here (zeros past written)
}

func (f *zeroAheadFile) Write(p []byte) (int, error) {
	for f.written+int64(len(p))+zeroStep/2 > f.zeroedTo {
		if _, err := f.File.WriteAt(zeroBlock, f.zeroedTo); err != nil {
			return 0, err
		}
		if fd := f.File.Fd(); fd != vfs.InvalidFd {
			// Start writing the zeros back now, so the sync that first covers
			// them finds them on disk already.
			_ = unix.SyncFileRange(int(fd), f.zeroedTo, zeroStep, unix.SYNC_FILE_RANGE_WRITE)
		}
		f.zeroedTo += zeroStep
	}
	n, err := f.File.Write(p)
	f.written += int64(n)
	return n, err
}

// Preallocate does nothing: the zeros ahead are the preallocation.
func (f *zeroAheadFile) Preallocate(offset, length int64) error { return nil }

// quietLogger drops Pebble's informational chatter and keeps its fatal path.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// StoreHeapBytes is what the store adds to the Go heap: its block cache and
// memtables in a build without cgo, where Pebble allocates them in it, and
// nothing with cgo. A soft memory limit set for the rest of the process must add
// it, or the collector runs back to back to keep a cache it cannot free under
// the limit (pop + ack ran at 105,000 msg/s instead of 372,000 so). Under the
// race detector, which only tests use, Pebble picks either place at random.
func StoreHeapBytes() int64 {
	if storeMemoryInGoHeap {
		return blockCacheSize
	}
	return 0
}
