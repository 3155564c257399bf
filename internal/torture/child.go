package torture

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/orderly-dev/orderly/internal/consistency"
)

type childArgs struct {
	Dir    string  `json:"dir"`
	Epoch  int     `json:"epoch"`
	Seed   uint64  `json:"seed"`
	Queues int     `json:"queues"`
	Rate   float64 `json:"rate"`
}

func encodeChildArgs(a childArgs) string {
	raw, _ := json.Marshal(a)
	return string(raw)
}

// ChildMain runs the child broker if this process is one, and never returns then.
// Call it first thing in the test binary's TestMain.
func ChildMain() {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	var a childArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		fmt.Fprintln(os.Stderr, "torture child:", err)
		os.Exit(2)
	}
	t, err := openTarget(a.Dir, a.Queues)
	if err != nil {
		fmt.Fprintln(os.Stderr, "torture child:", err)
		os.Exit(2)
	}
	rec := &streamRecorder{w: os.Stdout}
	var ops atomic.Int64
	w := newWorkload(rec, t, a.Epoch, a.Seed, a.Rate, &ops)
	// Runs until the parent kills it.
	w.run(context.Background(), true)
	fmt.Fprintln(os.Stderr, "torture child: the workload ended by itself")
	os.Exit(3)
}

// recorder is where workers record: a History, or the child's stream of it.
type recorder interface {
	Invoke(worker, token string, spec consistency.MessageSpec)
	Add(e consistency.Event) consistency.Event
}

// line is one streamed record.
type line struct {
	Invoke *invokeLine        `json:"i,omitempty"`
	Event  *consistency.Event `json:"e,omitempty"`
}

type invokeLine struct {
	Worker string                  `json:"w"`
	Token  string                  `json:"t"`
	Spec   consistency.MessageSpec `json:"s"`
}

// streamRecorder writes each record as a line, unbuffered: once Add returns, the
// record is in the pipe and survives the process.
type streamRecorder struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *streamRecorder) write(l line) {
	raw, err := json.Marshal(l)
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(append(raw, '\n')); err != nil {
		os.Exit(4) // the parent is gone
	}
}

func (s *streamRecorder) Invoke(worker, token string, spec consistency.MessageSpec) {
	s.write(line{Invoke: &invokeLine{Worker: worker, Token: token, Spec: spec}})
}

func (s *streamRecorder) Add(e consistency.Event) consistency.Event {
	s.write(line{Event: &e})
	return e
}

// readStream adds a child's records to h until the stream ends, and returns how
// many operations it reported.
func readStream(r io.Reader, h *consistency.History) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var ops int64
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			// The last line of a killed child may be cut short.
			continue
		}
		switch {
		case l.Invoke != nil:
			h.Invoke(l.Invoke.Worker, l.Invoke.Token, l.Invoke.Spec)
		case l.Event != nil:
			if l.Event.Kind == opsKind {
				ops = l.Event.Offset
				continue
			}
			h.Add(*l.Event)
		}
	}
	return ops, sc.Err()
}
