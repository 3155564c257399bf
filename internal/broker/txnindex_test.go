package broker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// halfModel is what the check-back rules say of one half message, kept by the test
// independently of the broker's indexes.
type halfModel struct {
	instance, topic, group string
	checkAt, deadline      int64
}

// TestCheckBackIndexAgreesWithTheRules drives transactional publishes, check-back
// takes over both protocols, commits, rollbacks, expiries and restarts at random,
// with two tenants and several topics and producer groups, and compares every
// answer with what the rules give for a model of all half messages: each take
// hands out exactly the due half messages of its producer group (TCP, any topic of
// the instance) or topic (HTTP, the group's own and the anonymous ones), no other
// tenant's, and nothing past its deadline, which is rolled back instead.
func TestCheckBackIndexAgreesWithTheRules(t *testing.T) {
	f := newFixture(t)
	const other = "MQ_INST_other"
	if err := f.b.EnsureInstance(InstanceConfig{ID: other, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	instances := []string{inst, other}
	topics := []string{"txa", "txb", "txc"}
	groups := []string{"", "PG_1", "PG_2", "GID_http"} // "" is an HTTP producer's
	for _, in := range instances {
		for _, tp := range topics {
			if _, err := f.b.EnsureTopic(in, TopicConfig{Name: tp, Type: Transactional, Queues: 2, Owner: "o"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.b.EnsureGroup(in, GroupConfig{ID: "GID_http", Protocol: HTTP, Owner: "o"}); err != nil {
			t.Fatal(err)
		}
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	model := map[uint64]*halfModel{}
	now := func() int64 { return f.clock.Now().UnixMilli() }

	// due gives the seqs a take may hand out. A half message past its deadline is
	// never handed out; a take or the housekeeping round rolls it back.
	due := func(match func(*halfModel) bool) map[uint64]bool {
		out := map[uint64]bool{}
		for seq, h := range model {
			if match(h) && h.checkAt <= now() && now() < h.deadline {
				out[seq] = true
			}
		}
		return out
	}
	// check asserts that a take handed out due half messages only, as many as it
	// could, and schedules their next check in the model.
	check := func(step int, what string, got []Delivery, want map[uint64]bool, max int) {
		t.Helper()
		if len(got) != min(len(want), max) {
			t.Fatalf("step %d: %s: %d handed out, %d due, batch %d", step, what, len(got), len(want), max)
		}
		for _, d := range got {
			if !want[d.Seq] {
				t.Fatalf("step %d: %s: handed out %d, which is not due (%+v)", step, what, d.Seq, model[d.Seq])
			}
			delete(want, d.Seq)
			model[d.Seq].checkAt = now() + CheckInterval.Milliseconds()
		}
	}
	// reclaim runs the housekeeping round, which rolls back everything past its
	// deadline, and checks that it did.
	reclaim := func() {
		t.Helper()
		if err := f.b.Reclaim(); err != nil {
			t.Fatal(err)
		}
		for seq, h := range model {
			if now() >= h.deadline {
				delete(model, seq)
			}
		}
		// The broker's own housekeeping loop may be rolling some back still.
		f.b.txns.mu.Lock()
		defer f.b.txns.mu.Unlock()
		pending := 0
		for seq, h := range f.b.txns.halves {
			switch {
			case h.resolving && now() < h.deadline:
				t.Fatalf("half message %d is being resolved, but nothing decided it", seq)
			case h.resolving:
			case model[seq] == nil:
				t.Fatalf("half message %d is unresolved, though the rules resolved it: %+v", seq, *h)
			default:
				pending++
			}
		}
		if pending != len(model) {
			t.Fatalf("after the housekeeping round the broker holds %d half messages, the model %d", pending, len(model))
		}
	}
	for step := range 2000 {
		switch op := rng.IntN(100); {
		case op < 40: // a transactional publish
			in, tp, g := instances[rng.IntN(2)], topics[rng.IntN(3)], groups[rng.IntN(len(groups))]
			immunity := time.Duration(1+rng.IntN(40)) * time.Second
			res, err := f.b.Publish(context.Background(), in, tp, Message{Body: []byte("half"), Queue: AnyQueue, Transactional: true, ProducerGroup: g, CheckImmunity: immunity})
			if err != nil {
				t.Fatal(err)
			}
			model[res.Seq] = &halfModel{in, tp, g, now() + immunity.Milliseconds(), now() + TransactionTimeout.Milliseconds()}
		case op < 55: // time passes; now and then past the transaction timeout
			d := time.Duration(rng.IntN(15)) * time.Second
			if rng.IntN(60) == 0 {
				d = TransactionTimeout / 2
			}
			f.clock.Advance(d)
		case op < 70: // a TCP producer group's check-backs
			in, g := instances[rng.IntN(2)], groups[1+rng.IntN(3)]
			want := due(func(h *halfModel) bool { return h.instance == in && h.group == g })
			got, err := f.b.TakeTransactionChecks(in, g, 64)
			if err != nil {
				t.Fatal(err)
			}
			check(step, "TCP checks of "+in+"/"+g, got, want, 64)
		case op < 80: // an HTTP producer's check-backs on a topic
			in, tp := instances[rng.IntN(2)], topics[rng.IntN(3)]
			want := due(func(h *halfModel) bool {
				return h.instance == in && h.topic == tp && (h.group == "" || h.group == "GID_http")
			})
			got, err := f.b.PopHalf(context.Background(), in, tp, "GID_http", MaxPopMessages, 0)
			if err != nil {
				t.Fatal(err)
			}
			check(step, "HTTP checks of "+in+"/"+tp, got, want, MaxPopMessages)
		case op < 90: // a decision
			for seq, h := range model {
				commit := rng.IntN(2) == 0
				if err := f.b.ResolveTransaction(h.instance, seq, h.group, commit); err != nil {
					t.Fatal(err)
				}
				delete(model, seq)
				break
			}
		case op < 95:
			reclaim()
		default:
			f.reopen()
		}
	}
	f.reopen() // which waits for the housekeeping loop's round
	reclaim()
	// Every half message the model holds is still the broker's, and no other.
	f.b.txns.mu.Lock()
	defer f.b.txns.mu.Unlock()
	if len(f.b.txns.halves) != len(model) {
		t.Fatalf("broker holds %d half messages, model %d", len(f.b.txns.halves), len(model))
	}
	queued := 0
	for _, q := range f.b.txns.checks {
		queued += q.Len()
	}
	if queued != len(model) || f.b.txns.deadlines.Len() != len(model) {
		t.Fatalf("queued %d for checks and %d by deadline, want %d", queued, f.b.txns.deadlines.Len(), len(model))
	}
	for seq := range model {
		if f.b.txns.halves[seq] == nil {
			t.Fatalf("half message %d missing", seq)
		}
	}
	t.Logf("%d half messages left unresolved", len(model))
}

// BenchmarkTransactionChecksBesideABusyTenant measures one tenant's check-back
// round (one producer group, one half message, not yet due) while another tenant
// holds `neighbour` unresolved half messages. The round used to walk every half
// message of the broker under the registry's lock; it now costs the same whatever
// the neighbour holds.
func BenchmarkTransactionChecksBesideABusyTenant(b *testing.B) {
	for _, neighbour := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("neighbour=%d", neighbour), func(b *testing.B) {
			f := newFixture(&testing.T{})
			defer func() { _ = f.b.Close() }()
			const other = "MQ_INST_busy"
			if err := f.b.EnsureInstance(InstanceConfig{ID: other, Owner: "o", Limits: benchLimits}); err != nil {
				b.Fatal(err)
			}
			for _, in := range []string{inst, other} {
				if _, err := f.b.EnsureTopic(in, TopicConfig{Name: "txn", Type: Transactional, Queues: 4, Owner: "o"}); err != nil {
					b.Fatal(err)
				}
			}
			batch := make([]Message, 256)
			for i := range batch {
				batch[i] = Message{Body: make([]byte, 64), Queue: AnyQueue, Transactional: true, ProducerGroup: "PG_busy"}
			}
			for n := 0; n < neighbour; n += len(batch) {
				if _, err := f.b.PublishBatch(context.Background(), other, "txn", batch); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := f.b.Publish(context.Background(), inst, "txn", Message{Body: []byte("mine"), Queue: AnyQueue, Transactional: true, ProducerGroup: "PG_mine"}); err != nil {
				b.Fatal(err)
			}
			f.clock.Advance(DefaultCheckImmunity) // everything is due
			if got, err := f.b.TakeTransactionChecks(inst, "PG_mine", 64); err != nil || len(got) != 1 {
				b.Fatalf("first round: %d checks, %v", len(got), err)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := f.b.TakeTransactionChecks(inst, "PG_mine", 64); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
