// Package consistency checks a message queue's promises against a history of what
// its clients did and saw, in the manner of Jepsen's queue tests: a workload runs
// producers and consumers concurrently (with faults), records every operation here
// as it happens, and Check then accounts for every message.
//
// The history knows messages by a token the workload puts in each body, so a
// publish whose outcome is unknown (a timeout, a killed broker) can still be told
// apart from one that never happened. It imports nothing of the broker or of any
// protocol: the broker's own workload (internal/torture) and the end-to-end tests
// of each protocol, driving real clients, record into the same History.
package consistency

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind is what an event records.
type Kind int

const (
	// PublishInvoked: a producer started publishing the message.
	PublishInvoked Kind = iota
	// PublishAcked: the broker acknowledged it (for a half message: stored, not
	// yet committed).
	PublishAcked
	// PublishFailed: the broker refused it; it was never stored.
	PublishFailed
	// PublishUnknown: the outcome is not known (timeout, crash): it may or may not
	// have been stored, so it may or may not be delivered.
	PublishUnknown
	// Committed and RolledBack: the broker acknowledged the end of a transaction.
	Committed
	RolledBack
	// Delivered: a consumer of Group received the message.
	Delivered
	// Acked: the consumer's acknowledgement of a delivery was accepted.
	Acked
	// DeadLettered: the message was found among Group's dead letters.
	DeadLettered
	// Progress: Group's committed position on Queue was Offset: everything below
	// it is done for the group.
	Progress
	// Restarted: the broker was restarted (or killed and reopened).
	Restarted
	// AckInvoked: a consumer is about to acknowledge a delivery: from here on the
	// broker may take the message as done, so the next in order may come.
	AckInvoked
	// Redriven: the message was re-driven out of Group's dead letters, as a new
	// message on its topic: it may hold one more position there.
	Redriven
	// CommitInvoked: a producer is about to commit a half message: it may be
	// delivered from here on, even if no Committed follows (a crash).
	CommitInvoked
)

var kindNames = [...]string{"publish-invoked", "publish-acked", "publish-failed", "publish-unknown", "committed",
	"rolled-back", "delivered", "acked", "dead-lettered", "progress", "restarted", "ack-invoked", "redriven", "commit-invoked"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Event is one operation. Which fields matter depends on Kind.
type Event struct {
	Seq  int // position in the history
	Kind Kind
	// Token names the message (from its body); empty for Progress and Restarted.
	Token string
	// Worker is who did it, for reading a history.
	Worker string
	// Topic the message was published to; Group that consumed it.
	Topic, Group string
	// Queue names the queue (any string unique per topic and queue) and Offset the
	// position in it; -1 (or Queue empty) when unknown.
	Queue  string
	Offset int64
	// ID is the broker's message id, when known.
	ID string
	// Delivery identifies one delivery (a receipt handle); Batch the response it
	// came in, for ordered consumption.
	Delivery, Batch string
	// InvisibleUntil is, for a pop-style delivery, when it is handed out again
	// unless acknowledged (the broker's clock); zero for pull-style.
	InvisibleUntil time.Time
	// At is the broker's clock at the event, when the workload knows it.
	At time.Time
	// Note is free text for the reader.
	Note string
}

// MessageSpec is what the workload declared about a message when publishing it.
type MessageSpec struct {
	Topic string
	// Tag, for filters.
	Tag string
	// OrderKey, on an ordered topic, is the partition key: messages with one key
	// published one after the other by one producer must be consumed in that
	// order. Empty on unordered topics.
	OrderKey string
	// Transactional messages are delivered only once committed.
	Transactional bool
}

// History is a concurrency-safe log of events.
type History struct {
	mu     sync.Mutex
	events []Event
	specs  map[string]MessageSpec
}

// New returns an empty history.
func New() *History { return &History{specs: map[string]MessageSpec{}} }

// Add appends e and returns it with its sequence number.
func (h *History) Add(e Event) Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.Seq = len(h.events)
	if e.Offset == 0 && e.Queue == "" {
		e.Offset = -1
	}
	h.events = append(h.events, e)
	return e
}

// Invoke records the start of a publish of the message token described by spec.
func (h *History) Invoke(worker, token string, spec MessageSpec) {
	h.mu.Lock()
	h.specs[token] = spec
	h.mu.Unlock()
	h.Add(Event{Kind: PublishInvoked, Token: token, Worker: worker, Topic: spec.Topic, Offset: -1})
}

// Events returns a copy of the history so far.
func (h *History) Events() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.events...)
}

// Spec returns what was declared of a message.
func (h *History) Spec(token string) (MessageSpec, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.specs[token]
	return s, ok
}

// Len is the number of events so far.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.events)
}

// Of returns the events of one message, in order, as text: what a violation
// report prints.
func (h *History) Of(token string) string {
	var b strings.Builder
	for _, e := range h.Events() {
		if e.Token == token || e.Kind == Restarted {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	return b.String()
}

func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s", e.Seq, e.Kind)
	for _, kv := range [][2]string{{"token", e.Token}, {"worker", e.Worker}, {"topic", e.Topic}, {"group", e.Group},
		{"queue", e.Queue}, {"id", e.ID}, {"batch", e.Batch}, {"note", e.Note}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if e.Offset >= 0 && e.Queue != "" {
		fmt.Fprintf(&b, " offset=%d", e.Offset)
	}
	if e.Delivery != "" {
		d := e.Delivery
		if len(d) > 16 {
			d = d[len(d)-16:]
		}
		fmt.Fprintf(&b, " delivery=…%s", d)
	}
	if !e.InvisibleUntil.IsZero() {
		fmt.Fprintf(&b, " invisible-until=%s", e.InvisibleUntil.UTC().Format("15:04:05.000"))
	}
	if !e.At.IsZero() {
		fmt.Fprintf(&b, " at=%s", e.At.UTC().Format("15:04:05.000"))
	}
	return b.String()
}

// Seed returns the seed a run replays, from the environment variable env, or a
// fresh one when it is unset. Every workload prints the seed it ran with.
func Seed(env string) (uint64, error) {
	s := os.Getenv(env)
	if s == "" {
		return uint64(time.Now().UnixNano()), nil
	}
	seed, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", env, err)
	}
	return seed, nil
}
