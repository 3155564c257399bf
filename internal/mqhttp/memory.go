package mqhttp

import "github.com/orderly-dev/orderly/internal/membudget"

// Default memory bounds: what every request in progress may hold at once, and
// what one instance's may, of bodies being read and answers being written. A
// request takes its body's bytes from both before it reads the body, and its
// answer's records before the broker reads them (broker.ReadBudget). What does
// not come before the request's deadline is answered 503 Throttling, as a rate
// past the quota is.
const (
	DefaultMemory         = membudget.DefaultServerBytes
	DefaultInstanceMemory = membudget.DefaultTenantBytes
)
