package consistency

import (
	"fmt"
	"slices"
	"strings"
)

// Group describes a consumer group as the workload ran it.
type Group struct {
	Name string
	// Topics maps each topic the group subscribes to onto its tag filter (nil:
	// every tag).
	Topics map[string]func(tag string) bool
	// Ordered groups consume ordered topics in order: within one OrderKey, a
	// message is delivered only once every message published before it is done
	// (acknowledged or dead-lettered), or in the same batch after it. Pop-style
	// ordered groups (deliveries with InvisibleUntil) also never have two batches
	// of one queue out at once.
	Ordered bool
	// Drained says the workload consumed to the end, acknowledging what it
	// meant to: every message the group subscribes to must then have been
	// acknowledged by it or dead-lettered, not just delivered.
	Drained bool
}

func (g Group) subscribes(s MessageSpec) bool {
	filter, ok := g.Topics[s.Topic]
	return ok && (filter == nil || filter(s.Tag))
}

// Violation is one broken promise.
type Violation struct {
	Rule  string
	Token string
	Group string
	// Detail says what was seen; History is the message's events.
	Detail, History string
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: message %s", v.Rule, v.Token)
	if v.Group != "" {
		fmt.Fprintf(&b, ", group %s", v.Group)
	}
	fmt.Fprintf(&b, ": %s\n%s", v.Detail, v.History)
	return b.String()
}

// Rules, as Violation.Rule names them.
const (
	RuleLost        = "lost"          // acknowledged, never delivered to a subscribed group
	RulePhantom     = "phantom"       // delivered, never published (or refused)
	RuleRolledBack  = "rolled-back"   // a rolled-back or uncommitted half message delivered
	RulePosition    = "position"      // a message at two positions, or a position holding two
	RuleDuplicateID = "duplicate-id"  // two messages with one id
	RuleOrder       = "order"         // delivered before what was published before it was done
	RuleTwoInFlight = "two-in-flight" // two batches of one ordered queue out at once
	RuleSkipped     = "skipped"       // the group's committed position passed an undelivered message
	RuleUnfinished  = "unfinished"    // delivered, but after the drain neither acknowledged nor dead-lettered
)

// Report is what Check found.
type Report struct {
	Violations []Violation
	// Figures of the history.
	Events, Published, Acknowledged, Unknown, Deliveries, Restarts int
}

func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d events: %d publishes (%d acknowledged, %d of unknown outcome), %d deliveries, %d restarts; %d violations\n",
		r.Events, r.Published, r.Acknowledged, r.Unknown, r.Deliveries, r.Restarts, len(r.Violations))
	for i, v := range r.Violations {
		if i == 20 {
			fmt.Fprintf(&b, "… and %d more\n", len(r.Violations)-i)
			break
		}
		b.WriteString(v.String())
	}
	return b.String()
}

// message is what the history says of one token.
type message struct {
	spec                   MessageSpec
	invoked                bool
	acked, failed, unknown bool
	committed, rolledBack  bool
	commitInvoked          bool
	ids                    map[string]bool
	positions              map[position]bool
	redrives               int
	worker                 string
	firstAck               int // seq of the acknowledgement
	invokedAt              int // seq of the invocation
}

type position struct {
	queue  string
	offset int64
}

// Check accounts for every message of h against the groups' promises.
func Check(h *History, groups []Group) Report {
	events := h.Events()
	r := Report{Events: len(events)}
	msgs := map[string]*message{}
	get := func(token string) *message {
		m := msgs[token]
		if m == nil {
			m = &message{ids: map[string]bool{}, positions: map[position]bool{}, firstAck: -1, invokedAt: -1}
			m.spec, _ = h.Spec(token)
			msgs[token] = m
		}
		return m
	}
	add := func(v Violation) {
		v.History = h.Of(v.Token)
		r.Violations = append(r.Violations, v)
	}
	byGroup := map[string]Group{}
	for _, g := range groups {
		byGroup[g.Name] = g
	}
	owners := map[position]string{}
	reported := map[position]bool{}
	idOwners := map[string]string{}
	reportedIDs := map[string]bool{}
	for _, e := range events {
		if e.Kind == Restarted {
			r.Restarts++
			continue
		}
		if e.Token == "" {
			continue
		}
		m := get(e.Token)
		switch e.Kind {
		case PublishInvoked:
			r.Published++
			m.invoked, m.worker, m.invokedAt = true, e.Worker, e.Seq
		case PublishAcked:
			r.Acknowledged++
			if !m.acked {
				m.firstAck = e.Seq
			}
			m.acked = true
		case PublishFailed:
			m.failed = true
		case PublishUnknown:
			r.Unknown++
			m.unknown = true
		case Committed:
			m.committed = true
		case RolledBack:
			m.rolledBack = true
		case Delivered:
			r.Deliveries++
		case Redriven:
			m.redrives++
		case CommitInvoked:
			m.commitInvoked = true
		}
		// Positions and ids on the topic the message was published to; a retry
		// or a dead letter is a copy elsewhere.
		if e.ID != "" && m.redrives == 0 && (e.Kind == PublishAcked || (e.Kind == Delivered && e.Topic == m.spec.Topic)) {
			m.ids[e.ID] = true
			if other, ok := idOwners[e.ID]; !ok {
				idOwners[e.ID] = e.Token
			} else if other != e.Token && !reportedIDs[e.ID] {
				reportedIDs[e.ID] = true
				add(Violation{Rule: RuleDuplicateID, Token: e.Token, Detail: fmt.Sprintf("id %s is also message %s's", e.ID, other)})
			}
		}
		if e.Queue != "" && e.Offset >= 0 && (e.Kind == PublishAcked || e.Kind == Delivered) && e.Topic == m.spec.Topic {
			p := position{e.Queue, e.Offset}
			m.positions[p] = true
			if other, ok := owners[p]; !ok {
				owners[p] = e.Token
			} else if other != e.Token && !reported[p] {
				reported[p] = true
				add(Violation{Rule: RulePosition, Token: e.Token, Detail: fmt.Sprintf("offset %d of %s also holds message %s", p.offset, p.queue, other)})
			}
		}
	}
	for token, m := range msgs {
		if len(m.positions) > 1+m.redrives && !m.conflicted(owners, token) {
			add(Violation{Rule: RulePosition, Token: token, Detail: fmt.Sprintf("seen at %d positions", len(m.positions))})
		}
	}

	// Per group: deliveries, acknowledgements, dead letters.
	type groupState struct {
		delivered, dead, acked map[string]bool
	}
	states := map[string]*groupState{}
	for _, g := range groups {
		states[g.Name] = &groupState{delivered: map[string]bool{}, dead: map[string]bool{}, acked: map[string]bool{}}
	}
	for _, e := range events {
		st := states[e.Group]
		if st == nil || e.Token == "" {
			continue
		}
		m := get(e.Token)
		switch e.Kind {
		case Delivered:
			st.delivered[e.Token] = true
			switch {
			case !m.invoked:
				add(Violation{Rule: RulePhantom, Token: e.Token, Group: e.Group, Detail: "delivered, never published"})
			case m.failed && !m.acked && !m.unknown:
				add(Violation{Rule: RulePhantom, Token: e.Token, Group: e.Group, Detail: "delivered, but its publish was refused"})
			case m.spec.Transactional && m.rolledBack:
				add(Violation{Rule: RuleRolledBack, Token: e.Token, Group: e.Group, Detail: "delivered, but it was rolled back"})
			case m.spec.Transactional && !m.committed && !m.commitInvoked && !m.unknown:
				add(Violation{Rule: RuleRolledBack, Token: e.Token, Group: e.Group, Detail: "delivered, but never committed"})
			}
		case DeadLettered:
			st.dead[e.Token] = true
		case Acked:
			st.acked[e.Token] = true
		}
	}
	for _, g := range groups {
		st := states[g.Name]
		tokens := make([]string, 0, len(msgs))
		for token := range msgs {
			tokens = append(tokens, token)
		}
		slices.Sort(tokens)
		for _, token := range tokens {
			m := msgs[token]
			due := m.acked && (!m.spec.Transactional || m.committed)
			if !due || !g.subscribes(m.spec) || st.dead[token] {
				continue
			}
			switch {
			case !st.delivered[token]:
				add(Violation{Rule: RuleLost, Token: token, Group: g.Name, Detail: "acknowledged, never delivered nor dead-lettered"})
			case g.Drained && !st.acked[token]:
				add(Violation{Rule: RuleUnfinished, Token: token, Group: g.Name, Detail: "delivered, but never acknowledged nor dead-lettered by the end of the drain"})
			}
		}
	}
	checkOrder(events, msgs, groups, add)
	checkProgress(events, msgs, byGroup, add)
	return r
}

// checkOrder checks FIFO within each order key, and one batch of a queue out at a
// time, for ordered groups.
func checkOrder(events []Event, msgs map[string]*message, groups []Group, add func(Violation)) {
	// predecessor: the message the same worker published, acknowledged, just before
	// on the same key.
	pred := map[string]string{}
	last := map[[2]string]string{} // worker, key -> token
	for _, e := range events {
		if e.Kind != PublishAcked {
			continue
		}
		m := msgs[e.Token]
		if m == nil || m.spec.OrderKey == "" || m.firstAck != e.Seq || (m.spec.Transactional && !m.committed) {
			continue
		}
		k := [2]string{m.worker, m.spec.Topic + "\x00" + m.spec.OrderKey}
		if p, ok := last[k]; ok && msgs[p].invokedAt < m.invokedAt {
			pred[e.Token] = p
		}
		last[k] = e.Token
	}
	for _, g := range groups {
		if !g.Ordered {
			continue
		}
		// The broker dead-letters a message on its own, once its last delivery's
		// invisibility passed, and the workload learns of it only by listing the
		// dead letters: such a message counts as done from that moment.
		dead := map[string]bool{}
		for _, e := range events {
			if e.Kind == DeadLettered && e.Group == g.Name {
				dead[e.Token] = true
			}
		}
		lastUntil := map[string]int64{} // token -> invisible-until of its latest delivery
		done := map[string]bool{}
		batchOf := map[string]string{} // token -> batch of its latest delivery
		type out struct {
			batch, delivery string
			until           int64
		}
		inflight := map[string]map[string]out{} // queue -> delivery -> batch
		acked := map[string]bool{}              // delivery handles acknowledged
		for _, e := range events {
			if e.Kind == Restarted {
				// The broker forgets what was in flight: it may hand all of it
				// out again at once.
				inflight = map[string]map[string]out{}
				continue
			}
			if e.Group != g.Name {
				continue
			}
			switch e.Kind {
			case AckInvoked, Acked:
				done[e.Token] = true
				acked[e.Delivery] = true
			case DeadLettered:
				done[e.Token] = true
			case Delivered:
				m := msgs[e.Token]
				if m == nil || !g.subscribes(m.spec) {
					continue
				}
				if p, ok := pred[e.Token]; ok && g.subscribes(msgs[p].spec) && !done[p] && (batchOf[p] != e.Batch || e.Batch == "") &&
					!(dead[p] && lastUntil[p] != 0 && e.At.UnixMilli() >= lastUntil[p]) {
					add(Violation{Rule: RuleOrder, Token: e.Token, Group: g.Name,
						Detail: fmt.Sprintf("delivered (event #%d) while %s, published before it on key %q, was not done", e.Seq, p, m.spec.OrderKey)})
				}
				batchOf[e.Token] = e.Batch
				if !e.InvisibleUntil.IsZero() {
					lastUntil[e.Token] = e.InvisibleUntil.UnixMilli()
				}
				if e.Queue == "" || e.InvisibleUntil.IsZero() {
					continue
				}
				q := inflight[e.Queue]
				if q == nil {
					q = map[string]out{}
					inflight[e.Queue] = q
				}
				at := e.At.UnixMilli()
				for d, o := range q {
					if acked[d] || o.until <= at {
						delete(q, d)
						continue
					}
					if o.batch != e.Batch {
						add(Violation{Rule: RuleTwoInFlight, Token: e.Token, Group: g.Name,
							Detail: fmt.Sprintf("delivered in batch %s of %s while batch %s was out until %d", e.Batch, e.Queue, o.batch, o.until)})
						delete(q, d)
					}
				}
				q[e.Delivery] = out{batch: e.Batch, delivery: e.Delivery, until: e.InvisibleUntil.UnixMilli()}
			}
		}
	}
}

// checkProgress checks that a group's committed position never passed a message
// it subscribes to before the message was delivered to it (or dead-lettered).
func checkProgress(events []Event, msgs map[string]*message, groups map[string]Group, add func(Violation)) {
	// For each group and queue, the samples in history order with the greatest
	// position reported up to each: a message at offset p was passed at the first
	// sample whose running greatest exceeds p.
	type key struct{ group, queue string }
	type sample struct {
		seq  int
		high int64
	}
	samples := map[key][]sample{}
	for _, e := range events {
		if e.Kind != Progress || e.Queue == "" {
			continue
		}
		if _, ok := groups[e.Group]; !ok {
			continue
		}
		k := key{e.Group, e.Queue}
		high := e.Offset
		if s := samples[k]; len(s) > 0 {
			high = max(high, s[len(s)-1].high)
		}
		samples[k] = append(samples[k], sample{seq: e.Seq, high: high})
	}
	if len(samples) == 0 {
		return
	}
	seen := map[[2]string]int{} // when each group first had each message
	for _, e := range events {
		if (e.Kind == Delivered || e.Kind == DeadLettered) && e.Token != "" {
			k := [2]string{e.Group, e.Token}
			if _, ok := seen[k]; !ok {
				seen[k] = e.Seq
			}
		}
	}
	for token, m := range msgs {
		for p := range m.positions {
			for _, g := range groups {
				s := samples[key{g.Name, p.queue}]
				if len(s) == 0 || !g.subscribes(m.spec) {
					continue
				}
				i, _ := slices.BinarySearchFunc(s, p.offset, func(x sample, off int64) int {
					if x.high > off {
						return 1
					}
					return -1
				})
				if i == len(s) {
					continue // never passed
				}
				if at, ok := seen[[2]string{g.Name, token}]; !ok || at > s[i].seq {
					add(Violation{Rule: RuleSkipped, Token: token, Group: g.Name,
						Detail: fmt.Sprintf("the group's position on %s passed offset %d (event #%d) before it was delivered", p.queue, p.offset, s[i].seq)})
				}
			}
		}
	}
}

// conflicted reports whether one of m's positions already holds another message,
// which was reported as such.
func (m *message) conflicted(owners map[position]string, token string) bool {
	for p := range m.positions {
		if owners[p] != token {
			return true
		}
	}
	return false
}

// Outstanding counts the messages some group has yet to receive, or after a drain
// to acknowledge: what consuming on can still settle. It is the cheap part of
// Check, for a drain to poll.
func Outstanding(h *History, groups []Group) int {
	type state struct{ acked, due bool }
	msgs := map[string]*state{}
	done := map[[2]string]bool{}
	delivered := map[[2]string]bool{}
	for _, e := range h.Events() {
		if e.Token == "" {
			continue
		}
		m := msgs[e.Token]
		if m == nil {
			m = &state{}
			msgs[e.Token] = m
		}
		switch e.Kind {
		case PublishAcked:
			m.acked = true
		case Committed:
			m.due = true
		case Delivered:
			delivered[[2]string{e.Group, e.Token}] = true
		case Acked, DeadLettered:
			done[[2]string{e.Group, e.Token}] = true
		}
	}
	n := 0
	for token, m := range msgs {
		spec, _ := h.Spec(token)
		if !m.acked || (spec.Transactional && !m.due) {
			continue
		}
		for _, g := range groups {
			k := [2]string{g.Name, token}
			if g.subscribes(spec) && !done[k] && (!delivered[k] || g.Drained) {
				n++
			}
		}
	}
	return n
}
