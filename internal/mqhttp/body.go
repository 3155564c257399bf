package mqhttp

import (
	"io"
	"net/http"
	"sync"
	"time"
)

// Request bodies are read into buffers that grow as their bytes arrive, and the
// growth past smallBody is taken from a budget of the whole server and one of the
// request's instance: a client that declares 24 MiB and sends little holds
// little, and clients that send their bodies and hold back the last bytes hold
// at most the budget together, however many connections their quota allows.
const (
	// smallBody is the size up to which a body's buffer is allocated at once and
	// not counted: what an SDK's everyday message fits in.
	smallBody = 4 << 10

	// DefaultBodyMemory bounds the bytes of request bodies past smallBody that all
	// requests hold at once, being read or being served.
	DefaultBodyMemory = 64 << 20
	// DefaultTenantBodyMemory bounds those of one instance's requests: more than
	// one largest request (a 4 MiB body escaped: 24 MiB), so that one always fits.
	DefaultTenantBodyMemory = 32 << 20
	// DefaultBodyWait bounds how long a request waits for body memory; then it is
	// answered 503 Throttling.
	DefaultBodyWait = 10 * time.Second
)

// bodyMemory is the budget of request bodies: the server's and each instance's.
// A request that holds everything in use may grow past a limit alone, so that a
// body larger than a limit can still be read, and a request never waits on
// itself. A nil bodyMemory bounds nothing (a handler made outside a Server, in
// tests).
type bodyMemory struct {
	limit, tenantLimit int

	mu      sync.Mutex
	used    int
	tenants map[string]int // bytes held by each instance's requests; absent when none
	freed   chan struct{}  // closed by a give while someone waits; nil when none does
}

func newBodyMemory(limit, tenantLimit int) *bodyMemory {
	return &bodyMemory{limit: limit, tenantLimit: tenantLimit, tenants: map[string]int{}}
}

// take takes n bytes for a request of instance that holds held bytes already,
// waiting for them until deadline passes or done is closed.
func (m *bodyMemory) take(instance string, n, held int, deadline time.Time, done <-chan struct{}) bool {
	if m == nil {
		return true
	}
	var timer *time.Timer
	for {
		m.mu.Lock()
		t := m.tenants[instance]
		if (m.used+n <= m.limit || m.used <= held) && (t+n <= m.tenantLimit || t <= held) {
			m.used += n
			m.tenants[instance] = t + n
			m.mu.Unlock()
			return true
		}
		if m.freed == nil {
			m.freed = make(chan struct{})
		}
		freed := m.freed
		m.mu.Unlock()
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

// give returns n bytes of instance's requests.
func (m *bodyMemory) give(instance string, n int) {
	if m == nil || n == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.used -= n
	if t := m.tenants[instance] - n; t > 0 {
		m.tenants[instance] = t
	} else {
		delete(m.tenants, instance)
	}
	if m.freed != nil {
		close(m.freed)
		m.freed = nil
	}
}

// inUse returns the bytes held in all.
func (m *bodyMemory) inUse() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.used
}

// readBody reads r's body of n bytes for a request of instance into a buffer
// that starts at smallBody (or n) and doubles as the bytes arrive, each growth
// taken from the body memory, waited for up to wait. charged is what was taken,
// to be given back once the request has been served, whether or not reading
// succeeded.
func (h *handler) readBody(r *http.Request, instance string, n int64) (body []byte, charged int, e *Error) {
	buf := make([]byte, min(n, smallBody))
	got := 0
	var deadline time.Time
	for {
		m, err := io.ReadFull(r.Body, buf[got:])
		got += m
		if err != nil {
			return nil, charged, &Error{http.StatusBadRequest, "InvalidArgument", "The request body could not be read."}
		}
		if int64(got) == n {
			return buf, charged, nil
		}
		next := int(min(n, 2*int64(len(buf))))
		add := next - len(buf)
		if len(buf) <= smallBody {
			add = next // the first growth counts the whole buffer
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(h.bodyWait)
		}
		if !h.memory.take(instance, add, charged, deadline, r.Context().Done()) {
			return nil, charged, &Error{http.StatusServiceUnavailable, "Throttling",
				"The server holds as many request bodies as it takes; retry later."}
		}
		charged += add
		grown := make([]byte, next)
		copy(grown, buf[:got])
		buf = grown
	}
}
