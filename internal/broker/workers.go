package broker

import (
	"fmt"
	"sync"
)

// A group's workers are the consumer processes that say who they are on their
// pops (the MessageConsumer runtime does): each reports, with every pop, how many
// messages it has handled and how many handler runs failed since it started. The
// broker keeps the latest report per worker so that the MessageConsumer
// controller can show counts that move while its pods run, rather than only when
// a pod ends and writes its termination message.
//
// Why the worker's own cumulative counts, not the group's ack counter: a group's
// counters also count every other consumer of the group, start from zero when
// the broker restarts while the pods go on, and cannot tell a failed handler
// from a slow one. A worker's cumulative count is what its termination message
// will say, so the live figure and the final one agree, and a broker restart
// loses nothing that the worker's next pop does not report again.

// WorkerProgress is one worker's latest report.
type WorkerProgress struct {
	// Worker names the process (a MessageConsumer pod's UID): 1 to
	// MaxWorkerIDLength printable ASCII characters.
	Worker string
	// Handled messages were acknowledged after the handler succeeded; Failed are
	// handler runs that failed. Both count since the worker started.
	Handled, Failed int64
}

const (
	// MaxWorkerIDLength bounds a worker's name.
	MaxWorkerIDLength = 64
	// maxWorkersPerGroup bounds what a group's reports hold: a client naming a new
	// worker on every pop replaces the reports heard from longest ago, and costs
	// the broker no more than this many entries.
	maxWorkersPerGroup = 256
)

func (p WorkerProgress) validate() error {
	if p.Worker == "" || len(p.Worker) > MaxWorkerIDLength {
		return fmt.Errorf("%w: worker name of %d bytes; 1 to %d", ErrInvalidArgument, len(p.Worker), MaxWorkerIDLength)
	}
	for i := 0; i < len(p.Worker); i++ {
		if c := p.Worker[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%w: worker name must be printable ASCII without spaces", ErrInvalidArgument)
		}
	}
	if p.Handled < 0 || p.Failed < 0 {
		return fmt.Errorf("%w: worker counts must not be negative", ErrInvalidArgument)
	}
	return nil
}

// workerBook holds a group's latest report per worker, with its own lock: a pop
// notes its report without taking the group's.
type workerBook struct {
	mu sync.Mutex
	// seq orders reports, to find the one heard from longest ago.
	seq     uint64
	reports map[string]workerReport
}

type workerReport struct {
	WorkerProgress
	seq uint64
}

func (w *workerBook) note(p WorkerProgress) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reports == nil {
		w.reports = map[string]workerReport{}
	}
	if _, ok := w.reports[p.Worker]; !ok && len(w.reports) >= maxWorkersPerGroup {
		oldest, oldestSeq := "", ^uint64(0)
		for name, r := range w.reports {
			if r.seq < oldestSeq {
				oldest, oldestSeq = name, r.seq
			}
		}
		delete(w.reports, oldest)
	}
	w.seq++
	w.reports[p.Worker] = workerReport{WorkerProgress: p, seq: w.seq}
}

func (w *workerBook) read() map[string]WorkerProgress {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]WorkerProgress, len(w.reports))
	for name, r := range w.reports {
		out[name] = r.WorkerProgress
	}
	return out
}

// WorkerProgress returns the latest report of each worker of a group heard from
// since the broker opened, by worker name.
func (b *Broker) WorkerProgress(instanceID, groupID string) (map[string]WorkerProgress, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.leave()
	b.mu.RLock()
	g, err := b.groupLocked(instanceID, groupID)
	b.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return g.workers.read(), nil
}
