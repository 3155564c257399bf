// Package membudget bounds the bytes that requests hold at once: frames being
// read, bodies, answers not yet written. A server takes from a budget before it
// allocates, so what clients can make it hold is bounded by the budget, not by
// what they announce or fail to read.
package membudget

import (
	"context"
	"errors"
	"fmt"
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

// ErrNoMemory: a request could not get the memory it needed before its deadline.
// Each protocol answers it as it answers a rate past the quota.
var ErrNoMemory = errors.New("no memory for the request before its deadline")

// Default sizes of Shares, which the HTTP endpoints (mq-http and gRPC) both take:
// what every request in progress may hold at once, and what one tenant's may.
// A tenant's share fits several of the largest (4 MiB) bodies.
const (
	DefaultServerBytes = 128 << 20
	DefaultTenantBytes = 32 << 20
)

// Shares are a server's memory budget and each tenant's. A request takes what it
// is about to allocate from both: a tenant whose requests hold their bytes back
// waits on its own budget, and all of them together on the server's, instead of
// the process running out.
type Shares struct {
	all     *Budget
	tenants *Tenants
}

// NewShares returns a server budget of all bytes and tenant budgets of perTenant.
func NewShares(all, perTenant int) *Shares {
	return &Shares{all: New(all), tenants: NewTenants(perTenant)}
}

// All returns the server's budget.
func (s *Shares) All() *Budget { return s.all }

// Tenant returns the budget of a tenant that authenticated.
func (s *Shares) Tenant(id string) *Budget { return s.tenants.Of(id) }

// Hold is what one request of a tenant holds of its Shares, given back when the
// request ends. Takers wait until the request's deadline, or until done closes.
// A Hold is one request's: it is not safe for concurrent use.
type Hold struct {
	all, tenant *Budget
	name        string
	deadline    time.Time
	done        <-chan struct{}
	held        int
	// Refused, if set, is told of each Take that found no memory in time.
	Refused func()
}

// Hold starts what a request of tenant holds.
func (s *Shares) Hold(tenant string, deadline time.Time, done <-chan struct{}) *Hold {
	return &Hold{all: s.all, tenant: s.Tenant(tenant), name: tenant, deadline: deadline, done: done}
}

// Take takes n bytes, waiting for them until the request's deadline; the error
// wraps ErrNoMemory when they did not come, or is ctx's.
func (h *Hold) Take(ctx context.Context, n int) error {
	if !h.tenant.Take(n, h.held, h.deadline, h.done) {
		h.noteRefused()
		return fmt.Errorf("%w: the requests of %s hold %d bytes", ErrNoMemory, h.name, h.tenant.InUse())
	}
	if !h.all.Take(n, h.held, h.deadline, h.done) {
		h.tenant.Give(n)
		h.noteRefused()
		return fmt.Errorf("%w: the server's requests hold %d bytes", ErrNoMemory, h.all.InUse())
	}
	h.held += n
	return ctx.Err()
}

func (h *Hold) noteRefused() {
	if h.Refused != nil {
		h.Refused()
	}
}

// Charge takes n bytes at once, past the limits if need be: for what is
// allocated already.
func (h *Hold) Charge(n int) {
	h.tenant.Force(n)
	h.all.Force(n)
	h.held += n
}

// Give gives n of the held bytes back.
func (h *Hold) Give(n int) {
	h.tenant.Give(n)
	h.all.Give(n)
	h.held -= n
}

// Held returns the bytes held.
func (h *Hold) Held() int { return h.held }

// Release gives back everything held.
func (h *Hold) Release() { h.Give(h.held) }
