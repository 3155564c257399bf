package mqhttp

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/orderly-dev/orderly/internal/membudget"
)

// Default memory bounds: what every request in progress may hold at once, and
// what one instance's may, of bodies being read and answers being written.
const (
	DefaultMemory         = 128 << 20
	DefaultInstanceMemory = 32 << 20
)

// errNoMemory: a request could not get the memory for its body or its answer
// before its deadline. It is answered 503 Throttling, as a rate past the quota is.
var errNoMemory = errors.New("no memory for the request before its deadline")

// budgets are the server's memory budget and each instance's. A request takes its
// body's bytes from both before it reads the body, and its answer's records
// before the broker reads them (broker.ReadBudget): a tenant whose requests hold
// their bodies back, or read their answers slowly, waits on its own budget, and
// all of them together on the server's, instead of the process running out.
type budgets struct {
	all       *membudget.Budget
	instances *membudget.Tenants
}

func newBudgets(all, perInstance int) *budgets {
	return &budgets{all: membudget.New(all), instances: membudget.NewTenants(perInstance)}
}

// instance returns the budget of an instance that authenticated.
func (b *budgets) instance(id string) *membudget.Budget { return b.instances.Of(id) }

// requestMemory is what one request holds, given back when it ends. It is the
// broker.ReadBudget of the request's pops.
type requestMemory struct {
	all, tenant *membudget.Budget
	instance    string
	deadline    time.Time
	done        <-chan struct{}
	held        int
	// refused, if set, is told of each Take that found no memory in time.
	refused func()
}

func (b *budgets) request(instance string, deadline time.Time, done <-chan struct{}) *requestMemory {
	return &requestMemory{all: b.all, tenant: b.instance(instance), instance: instance, deadline: deadline, done: done}
}

func (m *requestMemory) noteRefused() {
	if m.refused != nil {
		m.refused()
	}
}

// Take takes n bytes, waiting for them until the request's deadline.
func (m *requestMemory) Take(ctx context.Context, n int) error {
	if !m.tenant.Take(n, m.held, m.deadline, m.done) {
		m.noteRefused()
		return fmt.Errorf("%w: the requests of instance %s hold %d bytes", errNoMemory, m.instance, m.tenant.InUse())
	}
	if !m.all.Take(n, m.held, m.deadline, m.done) {
		m.tenant.Give(n)
		m.noteRefused()
		return fmt.Errorf("%w: the server's requests hold %d bytes", errNoMemory, m.all.InUse())
	}
	m.held += n
	return ctx.Err()
}

func (m *requestMemory) Charge(n int) {
	m.tenant.Force(n)
	m.all.Force(n)
	m.held += n
}

func (m *requestMemory) Give(n int) {
	m.tenant.Give(n)
	m.all.Give(n)
	m.held -= n
}

// release gives back everything the request holds.
func (m *requestMemory) release() { m.Give(m.held) }
