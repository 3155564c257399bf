package hostile

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// Ledger accounts for the good tenant's messages: what each producer worker
// published and how the broker answered, and what the consumers received and
// acknowledged. A message is known by a token at the start of its body,
// "good-<worker>-<seq> ". It keeps one byte per message, so a run of millions
// of messages fits in a few megabytes (a consistency.History holds a few hundred
// bytes per event).
type Ledger struct {
	mu      sync.Mutex
	workers [][]state
	// missing counts acknowledged publishes not consumed yet.
	missing int
	// deliveries counts every delivery, duplicates counts deliveries of a message
	// already delivered, phantoms deliveries of a body no worker published (or
	// whose publish was refused).
	deliveries, duplicates int
	phantoms               []string
	progress               chan struct{}
}

type state uint8

const (
	invoked state = 1 << iota
	pubAcked
	pubRefused
	pubUnknown
	delivered
	consumed
)

// Outcome is how the broker answered a publish.
type Outcome int

const (
	// Acked: stored; it must be consumed.
	Acked Outcome = iota
	// Refused: answered with an error of the request; it must never be delivered.
	Refused
	// Unknown: no answer (a timeout, a connection cut): it may or may not be
	// delivered.
	Unknown
)

// NewLedger returns a ledger for workers producer workers.
func NewLedger(workers int) *Ledger {
	return &Ledger{workers: make([][]state, workers), progress: make(chan struct{}, 1)}
}

// Token is the body prefix of worker w's message seq.
func Token(w, seq int) string { return "good-" + strconv.Itoa(w) + "-" + strconv.Itoa(seq) + " " }

// Invoke records that worker w is about to publish its next message and returns
// its sequence number. Only worker w calls it for w.
func (l *Ledger) Invoke(w int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.workers[w] = append(l.workers[w], invoked)
	return len(l.workers[w]) - 1
}

// Published records the broker's answer to worker w's publish of seq.
func (l *Ledger) Published(w, seq int, o Outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.workers[w][seq]
	switch o {
	case Acked:
		*s |= pubAcked
		// A consumer can be quicker than the publisher's answer.
		if *s&consumed == 0 {
			l.missing++
		}
	case Refused:
		*s |= pubRefused
		if *s&delivered != 0 {
			l.phantoms = append(l.phantoms, Token(w, seq)+"(refused, yet delivered)")
		}
	default:
		*s |= pubUnknown
	}
}

// parse finds the message a body names.
func (l *Ledger) parse(body string) (*state, bool) {
	rest, ok := strings.CutPrefix(body, "good-")
	if !ok {
		return nil, false
	}
	ws, rest, ok1 := strings.Cut(rest, "-")
	seqs, _, ok2 := strings.Cut(rest, " ")
	w, err1 := strconv.Atoi(ws)
	seq, err2 := strconv.Atoi(seqs)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || w < 0 || w >= len(l.workers) || seq < 0 || seq >= len(l.workers[w]) {
		return nil, false
	}
	return &l.workers[w][seq], true
}

// Delivered records a delivery of body.
func (l *Ledger) Delivered(body string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deliveries++
	s, ok := l.parse(body)
	if !ok || *s&pubRefused != 0 {
		l.phantoms = append(l.phantoms, fmt.Sprintf("%.40q", body))
		return
	}
	if *s&delivered != 0 {
		l.duplicates++
	}
	*s |= delivered
}

// Consumed records that the consumer's acknowledgement of body was accepted.
func (l *Ledger) Consumed(body string) {
	l.mu.Lock()
	s, ok := l.parse(body)
	if ok && *s&consumed == 0 {
		*s |= consumed
		if *s&pubAcked != 0 {
			l.missing--
		}
	}
	l.mu.Unlock()
	select {
	case l.progress <- struct{}{}:
	default:
	}
}

// Missing is the number of acknowledged publishes not consumed yet.
func (l *Ledger) Missing() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.missing
}

// Progress receives after a consumption.
func (l *Ledger) Progress() <-chan struct{} { return l.progress }

// LedgerReport is what the ledger holds.
type LedgerReport struct {
	Invoked, Acked, Refused, Unknown int
	// Consumed counts distinct messages consumed; UnknownConsumed those of them
	// whose publish had no answer.
	Consumed, UnknownConsumed int
	Deliveries, Duplicates    int
	// Lost are acknowledged publishes never consumed (the first few); LostCount
	// all of them.
	Lost      []string
	LostCount int
	Phantoms  []string
}

func (r LedgerReport) String() string {
	return fmt.Sprintf("%d publishes: %d acknowledged, %d refused, %d without an answer; %d consumed (%d of those without an answer), %d deliveries (%d duplicates); %d lost, %d phantoms",
		r.Invoked, r.Acked, r.Refused, r.Unknown, r.Consumed, r.UnknownConsumed, r.Deliveries, r.Duplicates, r.LostCount, len(r.Phantoms))
}

// Report accounts for every message.
func (l *Ledger) Report() LedgerReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := LedgerReport{Deliveries: l.deliveries, Duplicates: l.duplicates, Phantoms: append([]string(nil), l.phantoms...)}
	for w, states := range l.workers {
		for seq, s := range states {
			r.Invoked++
			switch {
			case s&pubAcked != 0:
				r.Acked++
			case s&pubRefused != 0:
				r.Refused++
			default:
				r.Unknown++
			}
			if s&consumed != 0 {
				r.Consumed++
				if s&(pubAcked|pubRefused) == 0 {
					r.UnknownConsumed++
				}
			}
			if s&pubAcked != 0 && s&consumed == 0 {
				if r.LostCount++; len(r.Lost) < 10 {
					r.Lost = append(r.Lost, strings.TrimSpace(Token(w, seq)))
				}
			}
		}
	}
	return r
}
