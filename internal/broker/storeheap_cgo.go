//go:build cgo

package broker

// With cgo, Pebble allocates its block cache and memtables with the C allocator:
// they are outside the Go heap and its soft limit.
const storeMemoryInGoHeap = false
