// Package torture runs the broker under a concurrent workload with faults and
// checks every promise with internal/consistency, in the manner of Jepsen's queue
// tests. Producers publish normal, tagged, batched, timer, delay-level, ordered
// and transactional messages while consumers pop (acknowledging or letting the
// invisibility run out), pop in order, pull with committed offsets and send-back,
// and filter by tag; a topic grows, dead letters are re-driven, and the broker is
// reopened in-process or SIGKILLed as a child process mid-run. At the end the
// consumers drain the broker and the history is checked.
//
// Every run is seeded: a failure prints its seed, and Config.Seed replays the
// same workload choices (the interleaving, being real concurrency, differs).
package torture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consistency"
)

// Config is one run.
type Config struct {
	// Seed chooses every random decision of the workload.
	Seed uint64
	// Duration is how long the workload runs before the drain.
	Duration time.Duration
	// Dir holds the broker's data (a real directory: restarts and kills reopen it).
	Dir string
	// Rate bounds publishes per second over all producers, so that a long run's
	// history fits in memory (about 1 KiB of history a message). Zero: 400 for a
	// run of up to two minutes, 150 for a longer one.
	Rate float64
	// Epoch is how long the broker runs between faults; zero: Duration/4.
	Epoch time.Duration
	// Kill runs some epochs in a child process that is SIGKILLed at their end:
	// ChildMain must be called from the test binary's TestMain.
	Kill bool
	Log  logr.Logger
}

// Result is what a run did and found.
type Result struct {
	Seed       uint64
	Operations int64 // broker calls made by the workload
	Messages   int   // publishes invoked
	Restarts   int   // in-process reopens
	Kills      int   // SIGKILLs of a child broker
	Report     consistency.Report
}

func (r Result) String() string {
	return fmt.Sprintf("seed %d: %d operations, %d messages published, faults: %d reopens, %d kills\n%s",
		r.Seed, r.Operations, r.Messages, r.Restarts, r.Kills, r.Report)
}

// The workload's names.
const (
	instanceID = "MQ_INST_torture"
	normal     = "normal"  // Normal, 4 queues, growing to 6
	ordered    = "ordered" // Ordered, 4 queues
	txnTopic   = "txn"     // Transactional, 2 queues
	gPop       = "GID_pop" // HTTP: pop, ack most, let some invisibility run out
	gTag       = "GID_tag" // HTTP: pop with a tag filter
	gOrd       = "GID_ord" // HTTP: ordered pop
	gPull      = "GID_pull"
	gTxn       = "GID_txn"     // HTTP: consumes the transactional topic
	gTxnProd   = "GID_txnprod" // HTTP: the transactional producer's check-backs
	tagFilter  = "a||b"
	// maxRedeliveries is small so that poison messages reach the dead letters
	// within a short run.
	maxRedeliveries = 2
	invisibility    = time.Second
)

// groups are the checker's view of the workload's groups.
func groups(drained bool) []consistency.Group {
	all := func(string) bool { return true }
	aOrB := func(tag string) bool { return tag == "a" || tag == "b" }
	return []consistency.Group{
		{Name: gPop, Topics: map[string]func(string) bool{normal: all}, Drained: drained},
		{Name: gTag, Topics: map[string]func(string) bool{normal: aOrB}, Drained: drained},
		{Name: gOrd, Topics: map[string]func(string) bool{ordered: all}, Ordered: true, Drained: drained},
		{Name: gPull, Topics: map[string]func(string) bool{normal: all}, Drained: drained},
		{Name: gTxn, Topics: map[string]func(string) bool{txnTopic: all}, Drained: drained},
	}
}

// options are the broker's options in the workload: delays short enough for a
// short run.
func options(dir string) broker.Options {
	levels := make([]time.Duration, 18)
	for i := range levels {
		levels[i] = time.Duration(i+1) * 50 * time.Millisecond
	}
	return broker.Options{Dir: dir, DelayLevels: levels}
}

// declare creates the workload's instance, topics and groups (idempotent).
func declare(b *broker.Broker, normalQueues int) error {
	if err := b.EnsureInstance(broker.InstanceConfig{ID: instanceID, Owner: "torture"}); err != nil {
		return err
	}
	for _, t := range []broker.TopicConfig{
		{Name: normal, Type: broker.Normal, Queues: normalQueues},
		{Name: ordered, Type: broker.Ordered, Queues: 4},
		{Name: txnTopic, Type: broker.Transactional, Queues: 2},
	} {
		t.Owner = "torture"
		if _, err := b.EnsureTopic(instanceID, t); err != nil {
			return err
		}
	}
	for _, g := range []broker.GroupConfig{
		{ID: gPop, Protocol: broker.HTTP}, {ID: gTag, Protocol: broker.HTTP}, {ID: gOrd, Protocol: broker.HTTP},
		{ID: gPull, Protocol: broker.TCP}, {ID: gTxn, Protocol: broker.HTTP}, {ID: gTxnProd, Protocol: broker.HTTP},
	} {
		g.Owner, g.MaxRedeliveries = "torture", maxRedeliveries
		if _, err := b.EnsureGroup(instanceID, g); err != nil {
			return err
		}
	}
	return nil
}

// Run runs the workload with faults, drains the broker and checks the history.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 400
		if cfg.Duration > 2*time.Minute {
			cfg.Rate = 150
		}
	}
	if cfg.Epoch == 0 {
		cfg.Epoch = cfg.Duration / 4
	}
	res := Result{Seed: cfg.Seed}
	h := consistency.New()
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x70727475))
	var ops atomic.Int64
	deadline := time.Now().Add(cfg.Duration)
	for epoch := 0; time.Now().Before(deadline); epoch++ {
		length := min(time.Until(deadline), cfg.Epoch/2+time.Duration(rng.Int64N(int64(cfg.Epoch))))
		seed := rng.Uint64()
		// Grow the normal topic half way through.
		queues := 4
		if time.Until(deadline) < cfg.Duration/2 {
			queues = 6
		}
		if cfg.Kill && epoch%2 == 1 {
			n, err := runChild(ctx, cfg, h, epoch, seed, queues, length)
			ops.Add(n)
			if err != nil {
				return res, err
			}
			res.Kills++
			h.Add(consistency.Event{Kind: consistency.Restarted, Note: "SIGKILL"})
			continue
		}
		t, err := openTarget(cfg.Dir, queues)
		if err != nil {
			return res, err
		}
		w := newWorkload(h, t, epoch, seed, cfg.Rate, &ops)
		wctx, cancel := context.WithTimeout(ctx, length)
		// An in-process reopen happens in the middle of the epoch, under load.
		reopen := time.AfterFunc(length/2, func() {
			if err := t.reopen(); err != nil {
				cfg.Log.Error(err, "Reopen failed")
				cancel()
				return
			}
			h.Add(consistency.Event{Kind: consistency.Restarted, Note: "reopen"})
		})
		w.run(wctx, false)
		reopen.Stop()
		cancel()
		res.Restarts += t.reopens() + 1
		if err := t.close(); err != nil {
			return res, err
		}
		h.Add(consistency.Event{Kind: consistency.Restarted, Note: "close"})
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	// Drain: consume everything with a broker that is left alone.
	t, err := openTarget(cfg.Dir, 6)
	if err != nil {
		return res, err
	}
	defer t.close()
	w := newWorkload(h, t, -1, rng.Uint64(), cfg.Rate, &ops)
	if err := w.drain(ctx); err != nil {
		return res, err
	}
	res.Operations = ops.Load()
	res.Report = consistency.Check(h, groups(true))
	res.Messages = res.Report.Published
	return res, nil
}

// target is the broker the workers use; reopen swaps it under them, so calls in
// flight on the old one fail with broker.ErrClosed and are retried.
type target struct {
	mu      sync.RWMutex
	b       *broker.Broker
	dir     string
	queues  int
	reopenN int
}

func openTarget(dir string, queues int) (*target, error) {
	b, err := broker.Open(options(dir))
	if err != nil {
		return nil, fmt.Errorf("open broker: %w", err)
	}
	if err := declare(b, queues); err != nil {
		_ = b.Close()
		return nil, err
	}
	return &target{b: b, dir: dir, queues: queues}, nil
}

func (t *target) broker() *broker.Broker {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.b
}

func (t *target) reopen() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.b.Close(); err != nil {
		return err
	}
	b, err := broker.Open(options(t.dir))
	if err != nil {
		return err
	}
	if err := declare(b, t.queues); err != nil {
		return err
	}
	t.b = b
	t.reopenN++
	return nil
}

func (t *target) reopens() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.reopenN
}

func (t *target) close() error { return t.broker().Close() }

// The child process: the test binary re-executed with childEnv set runs one epoch
// of the workload against the directory and streams its history on stdout, one
// JSON line per event, each written before the next operation. SIGKILL can only
// lose events not yet written, and an operation whose result was not written is
// one of unknown outcome, which the checker allows for.
const childEnv = "ORDERLY_TORTURE_CHILD"

func runChild(ctx context.Context, cfg Config, h *consistency.History, epoch int, seed uint64, queues int, length time.Duration) (int64, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+encodeChildArgs(childArgs{
		Dir: cfg.Dir, Epoch: epoch, Seed: seed, Queues: queues, Rate: cfg.Rate,
	}))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	kill := time.AfterFunc(length, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
	defer kill.Stop()
	n, readErr := readStream(out, h)
	err = cmd.Wait()
	if readErr != nil {
		return n, readErr
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return n, fmt.Errorf("child broker ended without being killed: %v", err)
	}
	return n, nil
}
