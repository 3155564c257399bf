package consistency

import (
	"strings"
	"testing"
	"time"
)

// Each case builds a small history by hand; the checker must find exactly the
// rules it breaks, so that a checker that finds nothing in a torture run means
// something.

var t0 = time.UnixMilli(1_700_000_000_000)

func published(h *History, worker, token string, spec MessageSpec, queue string, offset int64) {
	h.Invoke(worker, token, spec)
	h.Add(Event{Kind: PublishAcked, Token: token, Worker: worker, Topic: spec.Topic, Queue: queue, Offset: offset, ID: "id-" + token})
}

func delivered(h *History, group, token, topic, queue string, offset int64, batch string, until time.Time, at time.Time) Event {
	return h.Add(Event{Kind: Delivered, Token: token, Group: group, Topic: topic, Queue: queue, Offset: offset,
		Delivery: "d-" + token + "-" + batch, Batch: batch, InvisibleUntil: until, At: at})
}

func rules(r Report) string {
	var out []string
	for _, v := range r.Violations {
		out = append(out, v.Rule)
	}
	return strings.Join(out, ",")
}

func TestCheckerFindsEachBrokenPromise(t *testing.T) {
	normal := MessageSpec{Topic: "t"}
	all := []Group{{Name: "g", Topics: map[string]func(string) bool{"t": nil}}}
	cases := []struct {
		name  string
		build func(h *History)
		want  string
	}{
		{"everything accounted for", func(h *History) {
			published(h, "p", "a", normal, "t/0", 0)
			delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
		}, ""},
		{"lost", func(h *History) {
			published(h, "p", "a", normal, "t/0", 0)
		}, RuleLost},
		{"unknown outcome may be missing", func(h *History) {
			h.Invoke("p", "a", normal)
			h.Add(Event{Kind: PublishUnknown, Token: "a"})
		}, ""},
		{"dead letters count as accounted", func(h *History) {
			published(h, "p", "a", normal, "t/0", 0)
			h.Add(Event{Kind: DeadLettered, Token: "a", Group: "g"})
		}, ""},
		{"phantom", func(h *History) {
			delivered(h, "g", "x", "t", "t/0", 0, "1", time.Time{}, t0)
		}, RulePhantom},
		{"refused then delivered", func(h *History) {
			h.Invoke("p", "a", normal)
			h.Add(Event{Kind: PublishFailed, Token: "a"})
			delivered(h, "g", "a", "t", "", -1, "1", time.Time{}, t0)
		}, RulePhantom},
		{"rolled back then delivered", func(h *History) {
			spec := MessageSpec{Topic: "t", Transactional: true}
			published(h, "p", "a", spec, "", -1)
			h.Add(Event{Kind: RolledBack, Token: "a"})
			delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
		}, RuleRolledBack},
		{"commit under way when the broker died, then delivered", func(h *History) {
			spec := MessageSpec{Topic: "t", Transactional: true}
			published(h, "p", "a", spec, "", -1)
			h.Add(Event{Kind: CommitInvoked, Token: "a"})
			h.Add(Event{Kind: Restarted})
			delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
		}, ""},
		{"never committed, delivered", func(h *History) {
			spec := MessageSpec{Topic: "t", Transactional: true}
			published(h, "p", "a", spec, "", -1)
			delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
		}, RuleRolledBack},
		{"committed and not delivered", func(h *History) {
			spec := MessageSpec{Topic: "t", Transactional: true}
			published(h, "p", "a", spec, "", -1)
			h.Add(Event{Kind: Committed, Token: "a"})
		}, RuleLost},
		{"one offset, two messages", func(h *History) {
			published(h, "p", "a", normal, "t/0", 0)
			published(h, "p", "b", normal, "t/0", 0)
			delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
			delivered(h, "g", "b", "t", "t/0", 0, "1", time.Time{}, t0)
		}, RulePosition},
		{"filtered out is not lost", func(h *History) {
			published(h, "p", "a", MessageSpec{Topic: "t", Tag: "x"}, "t/0", 0)
			h.Add(Event{Kind: Progress, Group: "g2", Queue: "t/0", Offset: 1})
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := New()
			c.build(h)
			groups := all
			if c.name == "filtered out is not lost" {
				groups = []Group{{Name: "g2", Topics: map[string]func(string) bool{"t": func(tag string) bool { return tag == "y" }}}}
			}
			if got := rules(Check(h, groups)); got != c.want {
				t.Fatalf("violations %q, want %q\n%s", got, c.want, Check(h, groups))
			}
		})
	}
}

func TestCheckerFindsOrderAndFlightViolations(t *testing.T) {
	spec := MessageSpec{Topic: "o", OrderKey: "k"}
	g := []Group{{Name: "g", Ordered: true, Topics: map[string]func(string) bool{"o": nil}}}
	until := t0.Add(time.Minute)

	h := New()
	published(h, "p", "a", spec, "o/0", 0)
	published(h, "p", "b", spec, "o/0", 1)
	// b delivered alone while a is neither done nor in its batch.
	delivered(h, "g", "b", "o", "o/0", 1, "1", until, t0)
	if got := rules(Check(h, g)); !strings.Contains(got, RuleOrder) {
		t.Fatalf("violations %q, want %s", got, RuleOrder)
	}

	h = New()
	published(h, "p", "a", spec, "o/0", 0)
	published(h, "p", "b", spec, "o/0", 1)
	// One batch in order is fine; a second batch of the queue while the first is
	// out is not.
	delivered(h, "g", "a", "o", "o/0", 0, "1", until, t0)
	delivered(h, "g", "b", "o", "o/0", 1, "1", until, t0)
	if got := rules(Check(h, g)); got != "" {
		t.Fatalf("one ordered batch: %q", got)
	}
	delivered(h, "g", "a", "o", "o/0", 0, "2", until.Add(time.Minute), t0.Add(time.Second))
	if got := rules(Check(h, g)); !strings.Contains(got, RuleTwoInFlight) {
		t.Fatalf("violations %q, want %s", got, RuleTwoInFlight)
	}
	// A message the broker dead-lettered after its last invisibility passed lets
	// the next one go, though the workload learns of the dead letter later.
	h = New()
	published(h, "p", "a", spec, "o/0", 0)
	published(h, "p", "b", spec, "o/0", 1)
	delivered(h, "g", "a", "o", "o/0", 0, "1", until, t0)
	delivered(h, "g", "b", "o", "o/0", 1, "2", until.Add(time.Minute), until)
	h.Add(Event{Kind: Acked, Token: "b", Group: "g", Delivery: "d-b-2"})
	h.Add(Event{Kind: DeadLettered, Token: "a", Group: "g"})
	if got := rules(Check(h, g)); got != "" {
		t.Fatalf("after a dead letter: %q", got)
	}
	// But not before its invisibility passed.
	h = New()
	published(h, "p", "a", spec, "o/0", 0)
	published(h, "p", "b", spec, "o/0", 1)
	delivered(h, "g", "a", "o", "o/0", 0, "1", until, t0)
	delivered(h, "g", "b", "o", "o/0", 1, "2", until.Add(time.Minute), t0.Add(time.Second))
	h.Add(Event{Kind: DeadLettered, Token: "a", Group: "g"})
	if got := rules(Check(h, g)); !strings.Contains(got, RuleOrder) {
		t.Fatalf("overtaking a message still out: %q", got)
	}
	// Once the first batch's invisibility passed, it may go out again.
	h = New()
	published(h, "p", "a", spec, "o/0", 0)
	delivered(h, "g", "a", "o", "o/0", 0, "1", until, t0)
	delivered(h, "g", "a", "o", "o/0", 0, "2", until.Add(time.Minute), until)
	if got := rules(Check(h, g)); got != "" {
		t.Fatalf("redelivery after expiry: %q", got)
	}
}

func TestCheckerFindsASkippedPosition(t *testing.T) {
	g := []Group{{Name: "g", Topics: map[string]func(string) bool{"t": nil}}}
	h := New()
	published(h, "p", "a", MessageSpec{Topic: "t"}, "t/0", 0)
	published(h, "p", "b", MessageSpec{Topic: "t"}, "t/0", 1)
	delivered(h, "g", "b", "t", "t/0", 1, "1", time.Time{}, t0)
	h.Add(Event{Kind: Progress, Group: "g", Queue: "t/0", Offset: 2})
	delivered(h, "g", "a", "t", "t/0", 0, "2", time.Time{}, t0)
	r := Check(h, g)
	if got := rules(r); got != RuleSkipped {
		t.Fatalf("violations %q, want %s", got, RuleSkipped)
	}
	if !strings.Contains(r.Violations[0].History, "publish-acked token=a") {
		t.Fatalf("the report does not show the message's history:\n%s", r.Violations[0])
	}
}

func TestOutstandingCountsWhatADrainCanStillSettle(t *testing.T) {
	g := []Group{{Name: "g", Topics: map[string]func(string) bool{"t": nil}, Drained: true}}
	h := New()
	published(h, "p", "a", MessageSpec{Topic: "t"}, "t/0", 0)
	published(h, "p", "b", MessageSpec{Topic: "t"}, "t/0", 1)
	if n := Outstanding(h, g); n != 2 {
		t.Fatalf("outstanding %d, want 2", n)
	}
	delivered(h, "g", "a", "t", "t/0", 0, "1", time.Time{}, t0)
	h.Add(Event{Kind: Acked, Token: "a", Group: "g"})
	h.Add(Event{Kind: DeadLettered, Token: "b", Group: "g"})
	if n := Outstanding(h, g); n != 0 {
		t.Fatalf("outstanding %d, want 0", n)
	}
}
