package mqgrpc_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consistency"
)

// TestConsistencyWithTheGoClient is the consistency check end to end over gRPC,
// as internal/mqhttp's is over mq-http: the real Go client publishes and consumes
// at the same time, every operation goes into a consistency.History, and the
// checker accounts for every acknowledged publish. A normal topic is consumed by
// a group through a tag filter, an ordered topic by another group; one consumer
// of each sometimes hands a batch back (a nack), to be delivered again.
// CONSISTENCY_SEED replays a seed's choices (not its interleaving).
func TestConsistencyWithTheGoClient(t *testing.T) {
	const (
		publishers  = 8
		perWorker   = 1500
		publishTime = 3 * time.Second
		drainTime   = 60 * time.Second
		invisible   = 20 * time.Second
	)
	seed, err := consistency.Seed("CONSISTENCY_SEED")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d", seed)
	e := newEnv(t)
	e.topic("TopicN", broker.Normal, 2)
	e.topic("TopicO", broker.Ordered, 4)
	e.group("GID_normal", broker.HTTP, 0)
	e.group("GID_ordered", broker.HTTP, 0)
	groups := []consistency.Group{
		{Name: "GID_normal", Topics: map[string]func(string) bool{"TopicN": func(tag string) bool { return tag == "TagA" || tag == "TagB" }}, Drained: true},
		{Name: "GID_ordered", Topics: map[string]func(string) bool{"TopicO": nil}, Ordered: true, Drained: true},
	}
	h := consistency.New()
	tr := consistency.NewTracker(groups)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("seed %d: "+format, append([]any{seed}, args...)...)
	}

	var publishing atomic.Bool
	publishing.Store(true)
	stop := make(chan struct{})
	var consumers sync.WaitGroup
	var batches, nacked, redelivered atomic.Int64
	consumeLoop := func(id int, name, group, topic string, filter *rmq.FilterExpression, skips bool) {
		defer consumers.Done()
		rng := rand.New(rand.NewPCG(seed, uint64(1000+id)))
		c, err := rmq.NewSimpleConsumer(e.config(group), rmq.WithSimpleAwaitDuration(time.Second),
			rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{topic: filter}))
		if err == nil {
			err = c.Start()
		}
		if err != nil {
			fail("%s: %v", name, err)
			return
		}
		defer c.GracefulStop()
		ctx := context.Background()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			at := time.Now()
			mvs, err := c.Receive(ctx, 16, invisible)
			if err != nil {
				if !isCode(err, 40401) {
					fail("%s: receive: %v", name, err)
				}
				continue
			}
			batches.Add(1)
			batch := fmt.Sprintf("%s/%d", name, n)
			for _, mv := range mvs {
				if mv.GetDeliveryAttempt() > 1 {
					redelivered.Add(1)
				}
				// The client shows no queue: the checker then checks order by
				// key, not batches per queue.
				h.Add(consistency.Event{Kind: consistency.Delivered, Token: body(mv), Worker: name, Group: group, Topic: topic,
					ID: mv.GetMessageId(), Delivery: mv.GetReceiptHandle(), Batch: batch, InvisibleUntil: at.Add(invisible), At: at})
				if filter != rmq.SUB_ALL && (mv.GetTag() == nil || (*mv.GetTag() != "TagA" && *mv.GetTag() != "TagB")) {
					fail("%s: %s of tag %v delivered through the filter", name, body(mv), mv.GetTag())
				}
			}
			tr.Notify()
			if skips && publishing.Load() && rng.IntN(6) == 0 {
				// Handed back whole: delivered again, counted.
				for _, mv := range mvs {
					if err := c.ChangeInvisibleDuration(mv, 0); err != nil {
						fail("%s: nack: %v", name, err)
					}
				}
				nacked.Add(int64(len(mvs)))
				continue
			}
			for _, mv := range mvs {
				h.Add(consistency.Event{Kind: consistency.AckInvoked, Token: body(mv), Worker: name, Group: group, Topic: topic,
					Delivery: mv.GetReceiptHandle(), Batch: batch})
				// The Go client reports no ack failure (spec 3.6, 8.16): only
				// the broker's view below tells.
				if err := c.Ack(ctx, mv); err != nil {
					fail("%s: ack: %v", name, err)
					continue
				}
				h.Add(consistency.Event{Kind: consistency.Acked, Token: body(mv), Worker: name, Group: group, Topic: topic,
					Delivery: mv.GetReceiptHandle(), Batch: batch})
				tr.Done(group, body(mv))
			}
		}
	}
	consumers.Add(4)
	tagged := rmq.NewFilterExpression("TagA||TagB")
	go consumeLoop(0, "normal-0", "GID_normal", "TopicN", tagged, false)
	go consumeLoop(1, "normal-1", "GID_normal", "TopicN", tagged, true)
	go consumeLoop(2, "ordered-0", "GID_ordered", "TopicO", rmq.SUB_ALL, false)
	go consumeLoop(3, "ordered-1", "GID_ordered", "TopicO", rmq.SUB_ALL, true)

	// Publishers: normal and ordered messages mixed, tags mixed, eight message
	// groups shared by all publishers.
	p := e.producer(rmq.WithTopics("TopicN", "TopicO"))
	var pubs sync.WaitGroup
	var publishErrors atomic.Int64
	start := time.Now()
	for w := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			worker := fmt.Sprintf("w%d", w)
			for i := 0; i < perWorker && time.Since(start) < publishTime; i++ {
				token := fmt.Sprintf("%s-%d", worker, i)
				spec := consistency.MessageSpec{Topic: "TopicN", Tag: []string{"TagA", "TagB", "TagC"}[rng.IntN(3)]}
				if rng.IntN(2) == 0 {
					spec.Topic, spec.OrderKey = "TopicO", "k"+strconv.Itoa(rng.IntN(8))
				}
				m := &rmq.Message{Topic: spec.Topic, Body: []byte(token)}
				m.SetTag(spec.Tag)
				m.SetKeys(token)
				if spec.OrderKey != "" {
					m.SetMessageGroup(spec.OrderKey)
				}
				h.Invoke(worker, token, spec)
				receipts, err := p.Send(context.Background(), m)
				if err != nil {
					if publishErrors.Add(1) <= 5 {
						fail("%s: send %s: %v", worker, token, err)
					}
					// The client retries: an attempt before the one that failed
					// may have been stored.
					h.Add(consistency.Event{Kind: consistency.PublishUnknown, Token: token, Worker: worker, Topic: spec.Topic, Note: err.Error()})
					continue
				}
				h.Add(consistency.Event{Kind: consistency.PublishAcked, Token: token, Worker: worker, Topic: spec.Topic, ID: receipts[0].MessageID})
				tr.Published(token, spec)
				// Paced, so that consuming (and handing back) overlaps publishing.
				time.Sleep(time.Millisecond)
			}
		}()
	}
	pubs.Wait()
	publishedIn := time.Since(start)
	publishing.Store(false)

	// Drain: until every acknowledged publish is acknowledged by each group that
	// subscribes to it, or dead-lettered.
	dead := &deadLetters{broker: e.broker, h: h, tr: tr, groups: groups, next: map[string]int64{}}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(drainTime)
drain:
	for tr.Missing() > 0 {
		select {
		case <-tr.More():
		case <-tick.C:
			dead.read(t)
		case <-deadline:
			fail("after %s of draining, %d acknowledged publishes not done by their groups", drainTime, tr.Missing())
			break drain
		}
	}
	drainedIn := time.Since(start) - publishedIn
	close(stop)
	consumers.Wait()
	dead.read(t)

	r := consistency.Check(h, groups)
	t.Logf("published for %s, drained in %s; %d batches, %d deliveries handed back, %d redeliveries, %d dead letters",
		publishedIn.Round(time.Millisecond), drainedIn.Round(time.Millisecond), batches.Load(), nacked.Load(), redelivered.Load(), dead.count)
	t.Logf("%s", r)
	if len(r.Violations) > 0 {
		t.Fatalf("seed %d: the checker found violations:\n%s", seed, r)
	}
}

// deadLetters records the groups' dead letters into the history as they appear.
type deadLetters struct {
	broker *broker.Broker
	h      *consistency.History
	tr     *consistency.Tracker
	groups []consistency.Group
	next   map[string]int64
	count  int
}

func (d *deadLetters) read(t *testing.T) {
	t.Helper()
	for _, g := range d.groups {
		for {
			ms, next, err := d.broker.DeadLetters(testInstance, g.Name, d.next[g.Name], 64)
			if errors.Is(err, broker.ErrGroupNotFound) || (err == nil && len(ms) == 0) {
				break
			}
			if err != nil {
				t.Errorf("dead letters of %s: %v", g.Name, err)
				break
			}
			d.next[g.Name] = next
			for _, m := range ms {
				d.h.Add(consistency.Event{Kind: consistency.DeadLettered, Token: string(m.Body), Group: g.Name, Topic: m.Topic, ID: m.ID})
				d.tr.Done(g.Name, string(m.Body))
				d.count++
			}
		}
	}
}
