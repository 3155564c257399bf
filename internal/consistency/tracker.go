package consistency

import "sync"

// Tracker knows, live, which acknowledged publishes each group has yet to finish
// (acknowledge or dead-letter): what an end-to-end test's drain waits for, cheaply,
// while the History keeps everything for Check.
type Tracker struct {
	groups []Group
	mu     sync.Mutex
	due    map[string]map[string]bool // group -> tokens
	// finished holds what was finished before its publish was acknowledged: a
	// consumer can be quicker than the publisher's answer.
	finished map[string]map[string]bool
	more     chan struct{}
}

// NewTracker tracks groups.
func NewTracker(groups []Group) *Tracker {
	tr := &Tracker{groups: groups, due: map[string]map[string]bool{}, finished: map[string]map[string]bool{}, more: make(chan struct{}, 1)}
	for _, g := range groups {
		tr.due[g.Name], tr.finished[g.Name] = map[string]bool{}, map[string]bool{}
	}
	return tr
}

// Published records an acknowledged publish: every group subscribing to it owes it.
func (tr *Tracker) Published(token string, spec MessageSpec) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, g := range tr.groups {
		if g.subscribes(spec) && !tr.finished[g.Name][token] {
			tr.due[g.Name][token] = true
		}
	}
}

// Done records that group finished token.
func (tr *Tracker) Done(group, token string) {
	tr.mu.Lock()
	delete(tr.due[group], token)
	tr.finished[group][token] = true
	tr.mu.Unlock()
	tr.Notify()
}

// Notify wakes a waiter on More.
func (tr *Tracker) Notify() {
	select {
	case tr.more <- struct{}{}:
	default:
	}
}

// More receives after progress.
func (tr *Tracker) More() <-chan struct{} { return tr.more }

// Missing counts what the groups still owe.
func (tr *Tracker) Missing() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, due := range tr.due {
		n += len(due)
	}
	return n
}
