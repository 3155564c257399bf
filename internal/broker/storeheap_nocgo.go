//go:build !cgo

package broker

// Without cgo (the container image is built so), Pebble allocates its block cache
// and memtables in the Go heap.
const storeMemoryInGoHeap = true
