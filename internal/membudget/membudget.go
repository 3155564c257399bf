// Package membudget bounds the bytes that requests hold at once: frames being
// read, bodies, answers not yet written. A server takes from a budget before it
// allocates, so what clients can make it hold is bounded by the budget, not by
// what they announce or fail to read.
package membudget

import (
	"sync"
	"sync/atomic"
	"time"
)

// Budget bounds bytes held at once. Taking is lock-free when the bytes are there;
// a taker that has to wait is woken by each Give.
type Budget struct {
	limit   int64
	used    atomic.Int64
	waiting atomic.Int32

	mu    sync.Mutex
	freed chan struct{} // closed by a Give while someone waits; nil when none does
}

// New returns a budget of limit bytes.
func New(limit int) *Budget { return &Budget{limit: int64(limit)} }

// TryTake takes n bytes for a taker that holds held of them already, if they are
// there, or if the taker holds everything taken: something larger than the limit
// can still be served alone, and a taker never waits on itself.
func (b *Budget) TryTake(n, held int) bool {
	for {
		u := b.used.Load()
		if u+int64(n) > b.limit && u > int64(held) {
			return false
		}
		if b.used.CompareAndSwap(u, u+int64(n)) {
			return true
		}
	}
}

// Take takes n bytes for a taker holding held, waiting for them until deadline or
// until done is closed; it reports whether it took them.
func (b *Budget) Take(n, held int, deadline time.Time, done <-chan struct{}) bool {
	if b.TryTake(n, held) {
		return true
	}
	// Registered as waiting before looking again, so that a Give between the look
	// and the wait sees the waiter and wakes it.
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	var timer *time.Timer
	for {
		b.mu.Lock()
		if b.freed == nil {
			b.freed = make(chan struct{})
		}
		freed := b.freed
		b.mu.Unlock()
		if b.TryTake(n, held) {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(deadline))
			defer timer.Stop()
		}
		select {
		case <-freed:
		case <-timer.C:
			return false
		case <-done:
			return false
		}
	}
}

// Force takes n bytes at once, past the limit if need be: for what is already
// allocated and must be accounted for, such as one message larger than a read's
// bound.
func (b *Budget) Force(n int) { b.used.Add(int64(n)) }

// Give returns n bytes.
func (b *Budget) Give(n int) {
	if n == 0 {
		return
	}
	b.used.Add(-int64(n))
	if b.waiting.Load() > 0 {
		b.mu.Lock()
		if b.freed != nil {
			close(b.freed)
			b.freed = nil
		}
		b.mu.Unlock()
	}
}

// InUse returns the bytes held.
func (b *Budget) InUse() int { return int(b.used.Load()) }

// Waiting returns how many takers wait.
func (b *Budget) Waiting() int { return int(b.waiting.Load()) }

// Tenants are one budget per tenant, each of the same limit, made on first use:
// what one tenant's requests hold waits on its own budget, not on everyone's.
// There are as many as there are tenants that authenticated.
type Tenants struct {
	limit int

	mu sync.Mutex
	m  map[string]*Budget
}

// NewTenants returns tenant budgets of limit bytes each.
func NewTenants(limit int) *Tenants { return &Tenants{limit: limit, m: map[string]*Budget{}} }

// Of returns the tenant's budget.
func (t *Tenants) Of(tenant string) *Budget {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.m[tenant]
	if b == nil {
		b = New(t.limit)
		t.m[tenant] = b
	}
	return b
}
