package mqhttp

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"
	gogaperrors "github.com/gogap/errors"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consistency"
)

// TestConsistencyWithTheGoSDK is the consistency check end to end over mq-http:
// the real Go SDK publishes and consumes at the same time against the server on
// loopback, every operation goes into a consistency.History, and the checker
// accounts for every acknowledged publish. A normal topic is consumed by a group
// with a tag filter, an ordered topic orderly by another group; one consumer of
// each sometimes leaves a batch unacknowledged, for the fake clock to bring it
// back after its invisibility, and sometimes acknowledges one too late.
// CONSISTENCY_SEED replays a seed's choices (not its interleaving).
func TestConsistencyWithTheGoSDK(t *testing.T) {
	const (
		publishers  = 8
		perWorker   = 1000
		publishTime = 5 * time.Second
		drainTime   = 30 * time.Second
	)
	seed := consistencySeed(t)
	e := newEnv(t)
	e.topic("TopicN", broker.Normal, 2)
	e.topic("TopicO", broker.Ordered, 4)
	e.group("GID_normal", broker.HTTP)
	e.group("GID_ordered", broker.HTTP)
	const filter = "TagA||TagB"
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

	// Consumers, started first: two per group; while the publishers run, the
	// second of each sometimes does not acknowledge a batch, and sometimes does
	// once its invisibility has passed.
	var publishing atomic.Bool
	publishing.Store(true)
	stop := make(chan struct{})
	var consumers sync.WaitGroup
	var batches, unacked, redelivered, expired atomic.Int64
	consumeLoop := func(id int, name, group, topic, tag string, orderly, skips bool) {
		defer consumers.Done()
		rng := rand.New(rand.NewPCG(seed, uint64(1000+id)))
		c := e.client.GetConsumer(testInstance, topic, group, tag)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			ms, err := consume(c, orderly, 16, 1)
			at := e.clock.Now()
			if err != nil {
				if !strings.Contains(err.Error(), "MessageNotExist") {
					fail("%s: consume: %v", name, err)
				}
				continue
			}
			batches.Add(1)
			batch := fmt.Sprintf("%s/%d", name, n)
			for _, m := range ms {
				if m.ConsumedTimes > 1 {
					redelivered.Add(1)
				}
				h.Add(consistency.Event{Kind: consistency.Delivered, Token: m.MessageBody, Worker: name, Group: group, Topic: topic,
					ID: m.MessageId, Delivery: m.ReceiptHandle, Batch: batch, InvisibleUntil: time.UnixMilli(m.NextConsumeTime), At: at})
				// The checker does not see filters broken the other way.
				if tag != "" && m.MessageTag != "TagA" && m.MessageTag != "TagB" {
					fail("%s: %s of tag %q delivered through filter %q", name, m.MessageBody, m.MessageTag, tag)
				}
			}
			tr.Notify()
			if skips && publishing.Load() {
				switch rng.IntN(12) {
				case 0, 1:
					unacked.Add(int64(len(ms)))
					continue // comes back after its invisibility
				case 2:
					// A slow consumer: its ack comes after the invisibility,
					// when the messages may be out again.
					invisibility := broker.DefaultInvisibility
					if orderly {
						invisibility = broker.DefaultOrderedInvisibility
					}
					e.clock.Advance(invisibility + time.Second)
				}
			}
			// The broker may take a message as done as soon as the ack reaches
			// it and hand the next of its key to another consumer before the
			// answer is back here: the ack is recorded as invoked first.
			for _, m := range ms {
				h.Add(consistency.Event{Kind: consistency.AckInvoked, Token: m.MessageBody, Worker: name, Group: group, Topic: topic,
					Delivery: m.ReceiptHandle, Batch: batch})
			}
			failed := map[string]bool{}
			if err := c.AckMessage(handles(ms)); err != nil {
				items, ok := ackItems(err)
				if !ok {
					fail("%s: ack: %v", name, err)
					continue
				}
				for _, it := range items {
					// A handle whose invisibility passed before the ack: the
					// message was or will be delivered again.
					if it.ErrorCode != "MessageNotExist" {
						fail("%s: ack of %s: %s %s", name, it.ErrorHandle, it.ErrorCode, it.ErrorMsg)
					}
					failed[it.ErrorHandle] = true
					expired.Add(1)
				}
			}
			for _, m := range ms {
				if !failed[m.ReceiptHandle] {
					h.Add(consistency.Event{Kind: consistency.Acked, Token: m.MessageBody, Worker: name, Group: group, Topic: topic,
						Delivery: m.ReceiptHandle, Batch: batch})
					tr.Done(group, m.MessageBody)
				}
			}
		}
	}
	consumers.Add(4)
	go consumeLoop(0, "normal-0", "GID_normal", "TopicN", filter, false, false)
	go consumeLoop(1, "normal-1", "GID_normal", "TopicN", filter, false, true)
	go consumeLoop(2, "ordered-0", "GID_ordered", "TopicO", "", true, false)
	go consumeLoop(3, "ordered-1", "GID_ordered", "TopicO", "", true, true)

	// Publishers: normal and ordered messages mixed, tags mixed, eight sharding
	// keys shared by all publishers.
	var pubs sync.WaitGroup
	var publishErrors atomic.Int64
	start := time.Now()
	for w := range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			worker := fmt.Sprintf("w%d", w)
			producers := map[string]mqsdk.MQProducer{
				"TopicN": e.client.GetProducer(testInstance, "TopicN"),
				"TopicO": e.client.GetProducer(testInstance, "TopicO"),
			}
			for i := 0; i < perWorker && time.Since(start) < publishTime; i++ {
				token := fmt.Sprintf("%s-%d", worker, i)
				spec := consistency.MessageSpec{Topic: "TopicN", Tag: []string{"TagA", "TagB", "TagC"}[rng.IntN(3)]}
				if rng.IntN(2) == 0 {
					spec.Topic, spec.OrderKey = "TopicO", "k"+strconv.Itoa(rng.IntN(8))
				}
				h.Invoke(worker, token, spec)
				res, err := producers[spec.Topic].PublishMessage(mqsdk.PublishMessageRequest{
					MessageBody: token, MessageTag: spec.Tag, MessageKey: token, ShardingKey: spec.OrderKey})
				if err != nil {
					if publishErrors.Add(1) <= 5 {
						fail("%s: publish %s: %v", worker, token, err)
					}
					h.Add(consistency.Event{Kind: sdkPublishOutcome(err), Token: token, Worker: worker, Topic: spec.Topic, Note: err.Error()})
					continue
				}
				h.Add(consistency.Event{Kind: consistency.PublishAcked, Token: token, Worker: worker, Topic: spec.Topic, ID: res.MessageId})
				tr.Published(token, spec)
			}
		}()
	}
	published := make(chan struct{})
	go func() { pubs.Wait(); close(published) }()

	// The test loop drives the fake clock: long polls end after their second,
	// unacknowledged messages come back after their invisibility (300 s normal,
	// 60 s ordered), a few times while the publishers run.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-published:
			running = false
		case <-tick.C:
			e.clock.Advance(2 * time.Second)
		}
	}
	publishedIn := time.Since(start)
	publishing.Store(false)

	// Drain: until every acknowledged publish is acknowledged by each group that
	// subscribes to it, or dead-lettered.
	dead := newDeadLetterReader(e.broker, h, tr, groups)
	deadline := time.After(drainTime)
drain:
	for tr.Missing() > 0 {
		select {
		case <-tr.More():
		case <-tick.C:
			e.clock.Advance(5 * time.Second)
			dead.read(t)
		case <-deadline:
			fail("after %s of draining, %d acknowledged publishes not done by their groups", drainTime, tr.Missing())
			break drain
		}
	}
	drainedIn := time.Since(start) - publishedIn
	close(stop)
	stopped := make(chan struct{})
	go func() { consumers.Wait(); close(stopped) }()
	for waiting := true; waiting; {
		select {
		case <-stopped:
			waiting = false
		case <-tick.C:
			e.clock.Advance(time.Second) // ends the long polls
		}
	}
	dead.read(t)

	r := consistency.Check(h, groups)
	t.Logf("published for %s, drained in %s; %d batches, %d deliveries left unacknowledged, %d redeliveries, %d acks too late, %d dead letters",
		publishedIn.Round(time.Millisecond), drainedIn.Round(time.Millisecond), batches.Load(), unacked.Load(), redelivered.Load(), expired.Load(), dead.count)
	t.Logf("%s", r)
	if len(r.Violations) > 0 {
		t.Fatalf("seed %d: the checker found violations:\n%s", seed, r)
	}
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

// sdkPublishOutcome classifies a publish error: refused when the service
// answered with an error of the request, unknown when no answer came (the
// message may be stored) or the service failed inside.
func sdkPublishOutcome(err error) consistency.Kind {
	s := err.Error()
	if mqsdk.ErrMqServer.IsEqual(err) && !strings.Contains(s, "InternalError") && !strings.Contains(s, "ServiceUnavailable") {
		return consistency.PublishFailed
	}
	return consistency.PublishUnknown
}

// ackItems is the per-handle errors of an ack, when it has them.
func ackItems(err error) ([]mqsdk.ErrAckItem, bool) {
	code, ok := err.(gogaperrors.ErrCode)
	if !ok || !mqsdk.ErrAckMessage.IsEqual(err) {
		return nil, false
	}
	items, ok := code.Context()["Detail"].([]mqsdk.ErrAckItem)
	return items, ok && len(items) > 0
}

// deadLetterReader records the groups' dead letters into the history as they
// appear.
type deadLetterReader struct {
	broker *broker.Broker
	h      *consistency.History
	tr     *consistency.Tracker
	groups []consistency.Group
	next   map[string]int64
	count  int
}

func newDeadLetterReader(b *broker.Broker, h *consistency.History, tr *consistency.Tracker, groups []consistency.Group) *deadLetterReader {
	return &deadLetterReader{broker: b, h: h, tr: tr, groups: groups, next: map[string]int64{}}
}

func (d *deadLetterReader) read(t *testing.T) {
	t.Helper()
	for _, g := range d.groups {
		for {
			ms, next, err := d.broker.DeadLetters(testInstance, g.Name, d.next[g.Name], 64)
			if errors.Is(err, broker.ErrGroupNotFound) || (err == nil && len(ms) == 0) {
				break // none (yet): a group has its dead-letter topic from the first
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
