package remoting

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rocketmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consistency"
)

// TestConsistencyWithRocketMQClientGo is the consistency check end to end over
// the remoting protocol: the real rocketmq-client-go sends with SendSync from
// several goroutines (ordered messages by sharding key through the hash queue
// selector) while push consumers consume, every operation goes into a
// consistency.History, and the checker accounts for every acknowledged send. A
// normal topic is consumed concurrently by a group with a tag filter, which now
// and then asks for a retry; an ordered topic orderly by another group, which
// now and then suspends a queue. The groups' committed offsets are sampled, so
// that the checker also sees whether a position passed a message the group never
// got. CONSISTENCY_SEED replays a seed's choices (not its interleaving).
func TestConsistencyWithRocketMQClientGo(t *testing.T) {
	const (
		senders   = 6
		perSender = 2000
		sendTime  = 4 * time.Second
		startTime = 20 * time.Second
		drainTime = 30 * time.Second
		queues    = 4
	)
	seed := consistencySeed(t)
	begin := time.Now()
	e := newEnv(t)
	e.topic("TopicC", broker.Normal, queues)
	e.topic("OrderC", broker.Ordered, queues)
	e.group("GID_cons", broker.TCP, 16)
	e.group("GID_cons_order", broker.TCP, 16)
	groups := []consistency.Group{
		{Name: "GID_cons", Topics: map[string]func(string) bool{"TopicC": func(tag string) bool { return tag == "TagA" || tag == "TagB" }}, Drained: true},
		{Name: "GID_cons_order", Topics: map[string]func(string) bool{"OrderC": nil}, Ordered: true, Drained: true},
	}
	h := consistency.New()
	tr := consistency.NewTracker(groups)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("seed %d: "+format, append([]any{seed}, args...)...)
	}

	// Consumers, started first. While the senders run, a batch now and then is
	// not consumed: retried later (normal) or suspended (ordered).
	var sending atomic.Bool
	sending.Store(true)
	var batches, retried, suspended, retryDeliveries, duringSends atomic.Int64
	handler := func(name, group, topic string, orderly bool, id uint64) func(context.Context, ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		var mu sync.Mutex // the client calls concurrently; the seeded choices need one at a time
		rng := rand.New(rand.NewPCG(seed, id))
		var n int
		return func(_ context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			n++
			batch := fmt.Sprintf("%s/%d", name, n)
			again := sending.Load() && rng.IntN(25) == 0
			mu.Unlock()
			batches.Add(1)
			if sending.Load() {
				duringSends.Add(int64(len(ms)))
			}
			for _, m := range ms {
				ev := consistency.Event{Kind: consistency.Delivered, Token: string(m.Body), Worker: name, Group: group, Topic: topic,
					ID: m.OffsetMsgId, Offset: m.QueueOffset, Batch: batch}
				if m.ReconsumeTimes > 0 {
					ev.Note = fmt.Sprintf("reconsumed %d times", m.ReconsumeTimes)
				}
				if m.Queue != nil && strings.Contains(m.Queue.Topic, "%RETRY%") {
					// A copy on the group's retry topic: another position.
					ev.Topic = "%RETRY%" + group
					retryDeliveries.Add(1)
				}
				qid := -1
				if m.Queue != nil {
					qid = m.Queue.QueueId
				}
				ev.Queue = fmt.Sprintf("%s/%d", ev.Topic, qid)
				ev.Delivery = fmt.Sprintf("%s@%s:%d", m.MsgId, ev.Queue, m.QueueOffset)
				h.Add(ev)
				if !orderly && m.GetTags() != "TagA" && m.GetTags() != "TagB" {
					fail("%s: %s of tag %q delivered through the filter", name, m.Body, m.GetTags())
				}
			}
			if again {
				if orderly {
					suspended.Add(int64(len(ms)))
					return consumer.SuspendCurrentQueueAMoment, nil
				}
				retried.Add(int64(len(ms)))
				return consumer.ConsumeRetryLater, nil
			}
			// A push consumer acknowledges by returning: the client commits the
			// offset later, and (ordered) hands over the queue's next batch only
			// after this returns.
			for _, m := range ms {
				h.Add(consistency.Event{Kind: consistency.Acked, Token: string(m.Body), Worker: name, Group: group, Topic: topic, Batch: batch})
				tr.Done(group, string(m.Body))
			}
			return consumer.ConsumeSuccess, nil
		}
	}
	var pushConsumers []rocketmq.PushConsumer
	var shutdown sync.Once
	shutdownAll := func() {
		shutdown.Do(func() {
			for _, c := range pushConsumers {
				_ = c.Shutdown()
			}
		})
	}
	t.Cleanup(shutdownAll)
	for i, c := range []struct {
		name, group, topic string
		sel                consumer.MessageSelector
		orderly            bool
	}{
		{"push", "GID_cons", "TopicC", consumer.MessageSelector{Type: consumer.TAG, Expression: "TagA || TagB"}, false},
		{"push-order", "GID_cons_order", "OrderC", consumer.MessageSelector{}, true},
	} {
		pc := e.pushConsumer(c.group, consumer.WithConsumerOrder(c.orderly), consumer.WithConsumeMessageBatchMaxSize(8),
			consumer.WithInstance("cons-"+c.name))
		if err := pc.Subscribe(c.topic, c.sel, handler(c.name, c.group, c.topic, c.orderly, uint64(1000+i))); err != nil {
			t.Fatal(err)
		}
		if err := pc.Start(); err != nil {
			t.Fatal(err)
		}
		pushConsumers = append(pushConsumers, pc)
	}

	// Senders, sharing one producer: normal and ordered messages mixed, tags
	// mixed, eight sharding keys shared by all senders. No retries inside the
	// client, which could store one message twice.
	p := e.producer(producer.WithGroupName("PID_cons"), producer.WithQueueSelector(producer.NewHashQueueSelector()), producer.WithRetry(0))
	var sendErrors atomic.Int64
	send := func(worker, token string, spec consistency.MessageSpec) {
		msg := primitive.NewMessage(spec.Topic, []byte(token)).WithTag(spec.Tag).WithKeys([]string{token})
		if spec.OrderKey != "" {
			msg.WithShardingKey(spec.OrderKey)
		}
		h.Invoke(worker, token, spec)
		res, err := p.SendSync(context.Background(), msg)
		if err == nil && res.Status != primitive.SendOK {
			err = fmt.Errorf("send status %d", res.Status)
		}
		if err != nil {
			if sendErrors.Add(1) <= 5 {
				fail("%s: send %s: %v", worker, token, err)
			}
			h.Add(consistency.Event{Kind: clientSendOutcome(err), Token: token, Worker: worker, Topic: spec.Topic, Note: err.Error()})
			return
		}
		h.Add(consistency.Event{Kind: consistency.PublishAcked, Token: token, Worker: worker, Topic: spec.Topic, ID: res.OffsetMsgID,
			Queue: fmt.Sprintf("%s/%d", spec.Topic, res.MessageQueue.QueueId), Offset: res.QueueOffset})
		tr.Published(token, spec)
	}

	// The groups' committed positions, sampled as they go.
	samples := 0
	sample := func() {
		for _, g := range groups {
			for topic := range g.Topics {
				for q := range queues {
					off, found, err := e.broker.ConsumerOffset(testInstance, g.Name, topic, q)
					if err != nil {
						fail("offset of %s on %s/%d: %v", g.Name, topic, q, err)
					}
					if found {
						samples++
						h.Add(consistency.Event{Kind: consistency.Progress, Group: g.Name, Queue: fmt.Sprintf("%s/%d", topic, q), Offset: off})
					}
				}
			}
		}
	}
	// The groups' dead letters, recorded as they appear.
	dead, nextDead := 0, map[string]int64{}
	readDead := func() {
		for _, g := range groups {
			for {
				ms, next, err := e.broker.DeadLetters(testInstance, g.Name, nextDead[g.Name], 64)
				if errors.Is(err, broker.ErrGroupNotFound) || (err == nil && len(ms) == 0) {
					break // none (yet): a group has its dead-letter topic from the first
				}
				if err != nil {
					fail("dead letters of %s: %v", g.Name, err)
					break
				}
				nextDead[g.Name] = next
				for _, m := range ms {
					h.Add(consistency.Event{Kind: consistency.DeadLettered, Token: string(m.Body), Group: g.Name, Topic: m.Topic, ID: m.ID})
					tr.Done(g.Name, string(m.Body))
					dead++
				}
			}
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// drain waits until every acknowledged send is consumed by each group that
	// subscribes to it, or dead-lettered.
	drain := func(limit time.Duration) {
		t.Helper()
		deadline := time.After(limit)
		for tr.Missing() > 0 {
			select {
			case <-tr.More():
			case <-tick.C:
				sample()
				readDead()
			case <-deadline:
				fail("after %s of draining, %d acknowledged sends not consumed by their groups", limit, tr.Missing())
				return
			}
		}
	}

	// The ordered consumer takes its queues a few seconds after it starts (the
	// client's first pull finds its queue not locked yet and waits 3 s): a probe
	// through each topic first, so that both consumers run while the senders do.
	send("probe", "probe-0", consistency.MessageSpec{Topic: "TopicC", Tag: "TagA"})
	send("probe", "probe-1", consistency.MessageSpec{Topic: "OrderC", Tag: "TagA", OrderKey: "k0"})
	drain(startTime)
	startedIn := time.Since(begin)

	// Senders: normal and ordered messages mixed, tags mixed, eight sharding
	// keys shared by all senders.
	var wg sync.WaitGroup
	start := time.Now()
	for w := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			worker := fmt.Sprintf("w%d", w)
			for i := 0; i < perSender && time.Since(start) < sendTime; i++ {
				spec := consistency.MessageSpec{Topic: "TopicC", Tag: []string{"TagA", "TagB", "TagC"}[rng.IntN(3)]}
				if rng.IntN(2) == 0 {
					spec.Topic, spec.OrderKey = "OrderC", "k"+strconv.Itoa(rng.IntN(8))
				}
				send(worker, fmt.Sprintf("%s-%d", worker, i), spec)
			}
		}()
	}
	sent := make(chan struct{})
	go func() { wg.Wait(); close(sent) }()

	for running := true; running; {
		select {
		case <-sent:
			running = false
		case <-tick.C:
			sample()
		}
	}
	sentIn := time.Since(start)
	sending.Store(false)

	drain(drainTime)
	drainedIn := time.Since(start) - sentIn
	// Shutting down persists the consumers' offsets: the last sample.
	shutdownAll()
	sample()
	readDead()

	r := consistency.Check(h, groups)
	t.Logf("consumers started in %s, sent for %s, drained in %s; %d batches, %d deliveries while sending, %d retried later (%d deliveries from the retry topic), %d suspended, %d dead letters, %d offset samples",
		startedIn.Round(time.Millisecond), sentIn.Round(time.Millisecond), drainedIn.Round(time.Millisecond), batches.Load(), duringSends.Load(), retried.Load(), retryDeliveries.Load(),
		suspended.Load(), dead, samples)
	t.Logf("%s", r)
	if len(r.Violations) > 0 {
		t.Fatalf("seed %d: the checker found violations:\n%s", seed, r)
	}
}

// clientSendOutcome classifies a SendSync error: refused when the broker
// answered with an error code other than a system error, unknown otherwise (a
// timeout or a broken connection: the message may be stored).
func clientSendOutcome(err error) consistency.Kind {
	s := err.Error()
	if strings.HasPrefix(s, "CODE: ") && !strings.HasPrefix(s, "CODE: 1,") {
		return consistency.PublishFailed
	}
	return consistency.PublishUnknown
}

// consistencySeed is CONSISTENCY_SEED, or a fresh seed, logged.
func consistencySeed(t *testing.T) uint64 {
	t.Helper()
	seed, err := consistency.Seed("CONSISTENCY_SEED")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d", seed)
	return seed
}
