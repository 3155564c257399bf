package torture

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/consistency"
)

// opsKind carries a child's operation count on its stream; it is not a history
// event.
const opsKind consistency.Kind = 1000

// workload is one epoch's workers.
type workload struct {
	rec     recorder
	t       *target
	epoch   int
	seed    uint64
	limiter *rate.Limiter
	ops     *atomic.Int64

	mu       sync.Mutex
	redriven map[string]bool // dead letters re-driven once already
	batches  atomic.Int64
}

func newWorkload(rec recorder, t *target, epoch int, seed uint64, perSecond float64, ops *atomic.Int64) *workload {
	return &workload{rec: rec, t: t, epoch: epoch, seed: seed, ops: ops,
		limiter: rate.NewLimiter(rate.Limit(perSecond), 16), redriven: map[string]bool{}}
}

// worker is one goroutine of the workload with its own random source.
type worker struct {
	w    *workload
	name string
	rng  *rand.Rand
	n    int
}

func (w *workload) worker(name string) *worker {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return &worker{w: w, name: fmt.Sprintf("e%d.%s", w.epoch, name), rng: rand.New(rand.NewPCG(w.seed, h.Sum64()))}
}

func (k *worker) token() string {
	k.n++
	return k.name + "/" + strconv.Itoa(k.n)
}

func (k *worker) b() *broker.Broker {
	k.w.ops.Add(1)
	return k.w.t.broker()
}

// starter returns a function that starts a worker running fn over and over until
// ctx ends, counted in wg.
func (w *workload) starter(ctx context.Context, wg *sync.WaitGroup) func(name string, fn func(*worker, context.Context)) {
	return func(name string, fn func(*worker, context.Context)) {
		k := w.worker(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				fn(k, ctx)
			}
		}()
	}
}

// run starts every worker and waits for them to stop at ctx's end.
func (w *workload) run(ctx context.Context, child bool) {
	var wg sync.WaitGroup
	start := w.starter(ctx, &wg)
	for i := range 3 {
		start(fmt.Sprint("producer", i), (*worker).produce)
	}
	for i := range 2 {
		start(fmt.Sprint("ordered-producer", i), (*worker).produceOrdered)
	}
	start("txn-producer", (*worker).produceTransaction)
	start("check-back", (*worker).checkBack)
	for i := range 2 {
		start(fmt.Sprint("pop", i), func(k *worker, ctx context.Context) { k.pop(ctx, gPop, normal, false, 0.9) })
		start(fmt.Sprint("ordered-pop", i), func(k *worker, ctx context.Context) { k.pop(ctx, gOrd, ordered, true, 0.85) })
	}
	start("tag-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gTag, normal, false, 0.95) })
	start("txn-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gTxn, txnTopic, false, 1) })
	pull := w.worker("pull")
	wg.Add(1)
	go func() {
		defer wg.Done()
		pull.pullLoop(ctx, 0.05)
	}()
	start("redrive", (*worker).redrive)
	if child {
		start("ops", func(k *worker, ctx context.Context) {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			w.rec.Add(consistency.Event{Kind: opsKind, Offset: w.ops.Load()})
		})
	}
	wg.Wait()
}

var tags = []string{"a", "b", "c"}

// outcome records how a publish of tokens ended.
func (k *worker) outcome(tokens []string, topic string, res []broker.PublishResult, err error) {
	for i, token := range tokens {
		e := consistency.Event{Token: token, Worker: k.name, Topic: topic, Offset: -1}
		switch {
		case err == nil:
			e.Kind, e.ID = consistency.PublishAcked, res[i].ID
			if res[i].Offset >= 0 {
				e.Queue, e.Offset = queueName(topic, res[i].Queue), res[i].Offset
			}
		case errors.Is(err, broker.ErrInvalidArgument), errors.Is(err, broker.ErrMessageType):
			e.Kind, e.Note = consistency.PublishFailed, err.Error()
		default:
			// Closed under it, or a context ended: it may have been stored.
			e.Kind, e.Note = consistency.PublishUnknown, err.Error()
		}
		k.w.rec.Add(e)
	}
}

// queueNames interns queue names: a long run's history holds millions of them.
var queueNames sync.Map

func queueName(topic string, q int) string {
	type key struct {
		topic string
		q     int
	}
	if v, ok := queueNames.Load(key{topic, q}); ok {
		return v.(string)
	}
	name := topic + "/" + strconv.Itoa(q)
	queueNames.Store(key{topic, q}, name)
	return name
}

// produce publishes to the normal topic: single messages with a tag, batches,
// timers and delay levels.
func (k *worker) produce(ctx context.Context) {
	n := 1
	if k.rng.IntN(10) == 0 {
		n = 2 + k.rng.IntN(4)
	}
	if k.w.limiter.WaitN(ctx, n) != nil {
		return
	}
	kind := k.rng.IntN(10)
	msgs := make([]broker.Message, n)
	tokens := make([]string, n)
	for i := range msgs {
		tokens[i] = k.token()
		m := broker.Message{Body: []byte(tokens[i]), Tag: tags[k.rng.IntN(len(tags))], Queue: broker.AnyQueue,
			Keys: []string{tokens[i]}}
		switch {
		case n == 1 && kind == 0:
			m.DeliverAt = time.Now().Add(time.Duration(k.rng.IntN(400)) * time.Millisecond)
		case n == 1 && kind == 1:
			m.DelayLevel = 1 + k.rng.IntN(3)
		}
		msgs[i] = m
		k.w.rec.Invoke(k.name, tokens[i], consistency.MessageSpec{Topic: normal, Tag: m.Tag})
	}
	res, err := k.b().PublishBatch(ctx, instanceID, normal, msgs)
	k.outcome(tokens, normal, res, err)
}

// produceOrdered publishes to the ordered topic on a few sharding keys, one after
// the other: the checker holds each key to that order.
func (k *worker) produceOrdered(ctx context.Context) {
	if k.w.limiter.Wait(ctx) != nil {
		return
	}
	token := k.token()
	key := "k" + strconv.Itoa(k.rng.IntN(6))
	k.w.rec.Invoke(k.name, token, consistency.MessageSpec{Topic: ordered, OrderKey: key})
	res, err := k.b().Publish(ctx, instanceID, ordered, broker.Message{Body: []byte(token), ShardingKey: key, Queue: broker.AnyQueue})
	k.outcome([]string{token}, ordered, []broker.PublishResult{res}, err)
}

// resolution is what the transactional producer decides for a half message, from
// its token, so the check-back worker decides the same.
func resolution(token string) (commit, now bool) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(token))
	switch v := h.Sum32() % 10; {
	case v < 4:
		return true, true
	case v < 7:
		return false, true
	default:
		return v < 9, false // left to the check-back
	}
}

func (k *worker) produceTransaction(ctx context.Context) {
	if k.w.limiter.Wait(ctx) != nil {
		return
	}
	token := k.token()
	k.w.rec.Invoke(k.name, token, consistency.MessageSpec{Topic: txnTopic, Transactional: true})
	res, err := k.b().Publish(ctx, instanceID, txnTopic, broker.Message{Body: []byte(token), Queue: broker.AnyQueue,
		Transactional: true, CheckImmunity: time.Second})
	k.outcome([]string{token}, txnTopic, []broker.PublishResult{res}, err)
	if err != nil {
		return
	}
	if commit, now := resolution(token); now {
		k.endTransaction(token, func(b *broker.Broker) error {
			return b.EndTransaction(instanceID, txnTopic, res.TxnHandle, commit)
		}, commit)
	}
}

// endTransaction records the decision for token once the broker took it. A
// decision whose fate is unknown makes the message's outcome unknown.
func (k *worker) endTransaction(token string, end func(*broker.Broker) error, commit bool) {
	if commit {
		k.w.rec.Add(consistency.Event{Kind: consistency.CommitInvoked, Token: token, Worker: k.name, Topic: txnTopic})
	}
	err := end(k.b())
	kind := consistency.RolledBack
	if commit {
		kind = consistency.Committed
	}
	switch {
	case err == nil:
		k.w.rec.Add(consistency.Event{Kind: kind, Token: token, Worker: k.name, Topic: txnTopic})
	case errors.Is(err, broker.ErrHandleExpired), errors.Is(err, broker.ErrInvalidHandle):
		// Resolved already (by a check-back) or the handle's period passed: the
		// check-back decides again, the same way.
	default:
		k.w.rec.Add(consistency.Event{Kind: consistency.PublishUnknown, Token: token, Worker: k.name, Topic: txnTopic,
			Note: "end of transaction: " + err.Error()})
	}
}

// checkBack answers the broker's check-backs with the decision for each token.
func (k *worker) checkBack(ctx context.Context) {
	ds, err := k.b().PopHalf(ctx, instanceID, txnTopic, gTxnProd, 16, 200*time.Millisecond)
	if err != nil {
		k.pause(ctx)
		return
	}
	for _, d := range ds {
		token := string(d.Body)
		commit, _ := resolution(token)
		k.endTransaction(token, func(b *broker.Broker) error {
			return b.EndTransaction(instanceID, txnTopic, d.Handle, commit)
		}, commit)
	}
}

// poison messages are never acknowledged by the plain pop group: they go to its
// dead letters.
func poison(token string) bool {
	h := fnv.New32a()
	_, _ = h.Write([]byte(token))
	return h.Sum32()%40 == 0
}

// pop consumes one batch for group, acknowledging it with probability ack.
func (k *worker) pop(ctx context.Context, group, topic string, orderly bool, ack float64) {
	req := broker.PopRequest{Group: group, Max: 1 + k.rng.IntN(broker.MaxPopMessages), Wait: 200 * time.Millisecond,
		Orderly: orderly, Invisibility: invisibility}
	if group == gTag {
		req.Filter, _ = broker.ParseTagFilter(tagFilter)
	}
	ds, err := k.b().Pop(ctx, instanceID, topic, req)
	if err != nil {
		k.pause(ctx)
		return
	}
	if len(ds) == 0 {
		return
	}
	batch := strconv.FormatInt(k.w.batches.Add(1), 10) + "@" + k.name
	at := time.Now()
	for _, d := range ds {
		k.w.rec.Add(consistency.Event{Kind: consistency.Delivered, Token: string(d.Body), Worker: k.name, Group: group,
			Topic: d.Topic, Queue: queueName(d.Topic, d.Queue), Offset: d.Offset, ID: d.ID, Delivery: d.Handle,
			Batch: batch, InvisibleUntil: d.NextConsumeTime, At: at})
	}
	if k.rng.Float64() >= ack {
		return // the invisibility runs out and they come back
	}
	var handles []string
	var acked []broker.Delivery
	for _, d := range ds {
		if group == gPop && poison(string(d.Body)) {
			continue
		}
		k.w.rec.Add(consistency.Event{Kind: consistency.AckInvoked, Token: string(d.Body), Worker: k.name, Group: group, Delivery: d.Handle})
		handles = append(handles, d.Handle)
		acked = append(acked, d)
	}
	if len(handles) == 0 {
		return
	}
	errs, err := k.b().Ack(instanceID, topic, group, handles)
	if err != nil {
		return
	}
	for i, e := range errs {
		if e == nil {
			k.w.rec.Add(consistency.Event{Kind: consistency.Acked, Token: string(acked[i].Body), Worker: k.name, Group: group, Delivery: acked[i].Handle})
		}
	}
}

// pullLoop consumes the normal topic and the group's retry topic pull style,
// committing its offsets, and sends back a share of what it pulls.
func (k *worker) pullLoop(ctx context.Context, sendBack float64) {
	offsets := map[string]int64{}
	for ctx.Err() == nil {
		b := k.b()
		info, err := b.Topic(instanceID, normal)
		if err != nil {
			k.pause(ctx)
			continue
		}
		idle := true
		for _, q := range append(queueRefs(normal, info.Queues), broker.QueueRef{Topic: broker.RetryTopic(gPull)}) {
			n, err := k.pullOnce(ctx, q, offsets, sendBack)
			if err != nil {
				k.pause(ctx)
				break
			}
			idle = idle && n == 0
		}
		if idle {
			k.pause(ctx)
		}
	}
}

func queueRefs(topic string, n int) []broker.QueueRef {
	out := make([]broker.QueueRef, n)
	for i := range out {
		out[i] = broker.QueueRef{Topic: topic, Queue: i}
	}
	return out
}

// pullOnce pulls one batch of a queue, processes it and commits the offset after
// it; it returns how many messages it got.
func (k *worker) pullOnce(ctx context.Context, q broker.QueueRef, offsets map[string]int64, sendBack float64) (int, error) {
	b := k.b()
	name := queueName(q.Topic, q.Queue)
	off, ok := offsets[name]
	if !ok {
		committed, found, err := b.ConsumerOffset(instanceID, gPull, q.Topic, q.Queue)
		if err != nil {
			return 0, err
		}
		if found {
			off = committed
		}
	}
	res, err := b.Pull(ctx, instanceID, gPull, q.Topic, q.Queue, off, 32, broker.Filter{}, 0)
	if err != nil {
		return 0, err
	}
	for _, m := range res.Messages {
		token := string(m.Body)
		k.w.rec.Add(consistency.Event{Kind: consistency.Delivered, Token: token, Worker: k.name, Group: gPull,
			Topic: m.Topic, Queue: name, Offset: m.Offset, ID: m.ID, Delivery: m.ID})
		if k.rng.Float64() < sendBack {
			// Failed: back to the broker, which retries it later on the retry
			// topic, or dead-letters it past the group's limit.
			if err := b.SendBack(ctx, instanceID, gPull, m.Seq, 1, 0); err != nil {
				return 0, err // not committed: pulled again
			}
			continue
		}
		k.w.rec.Add(consistency.Event{Kind: consistency.Acked, Token: token, Worker: k.name, Group: gPull, Delivery: m.ID})
	}
	if res.NextOffset != off {
		if err := b.CommitOffset(instanceID, gPull, q.Topic, q.Queue, res.NextOffset); err != nil {
			return 0, err
		}
		if q.Topic == normal {
			k.w.rec.Add(consistency.Event{Kind: consistency.Progress, Worker: k.name, Group: gPull, Queue: name, Offset: res.NextOffset})
		}
	}
	offsets[name] = res.NextOffset
	return len(res.Messages), nil
}

// redrive re-drives one of the plain pop group's dead letters now and then, once
// per message.
func (k *worker) redrive(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(500+k.rng.IntN(1000)) * time.Millisecond):
	}
	dl, _, err := k.b().DeadLetters(instanceID, gPop, 0, 64)
	if err != nil || len(dl) == 0 {
		return
	}
	m := dl[k.rng.IntN(len(dl))]
	token := string(m.Body)
	k.w.mu.Lock()
	again := k.w.redriven[token]
	k.w.redriven[token] = true
	k.w.mu.Unlock()
	if again {
		return
	}
	// Recorded first: once re-driven, the message may show at a new position.
	k.w.rec.Add(consistency.Event{Kind: consistency.Redriven, Token: token, Worker: k.name, Group: gPop})
	_, _ = k.b().Redrive(ctx, instanceID, gPop, []string{m.ID})
}

func (k *worker) pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Millisecond):
	}
}

// drain consumes until every message the history knows of is accounted for (or a
// minute and a half has passed), acknowledging everything but poison, and records
// the groups' dead letters.
func (w *workload) drain(ctx context.Context) error {
	h, ok := w.rec.(*consistency.History)
	if !ok {
		return errors.New("drain needs the history itself")
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	start := w.starter(ctx, &wg)
	start("drain-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gPop, normal, false, 1) })
	start("drain-ordered-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gOrd, ordered, true, 1) })
	start("drain-tag-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gTag, normal, false, 1) })
	start("drain-txn-pop", func(k *worker, ctx context.Context) { k.pop(ctx, gTxn, txnTopic, false, 1) })
	start("drain-check-back", (*worker).checkBack)
	pull := w.worker("drain-pull")
	wg.Add(1)
	go func() {
		defer wg.Done()
		pull.pullLoop(ctx, 0)
	}()
	defer wg.Wait()
	defer cancel()
	dead := map[[2]string]bool{}
	for {
		select {
		case <-ctx.Done():
			return w.recordDeadLetters(h, dead)
		case <-time.After(2 * time.Second):
		}
		if err := w.recordDeadLetters(h, dead); err != nil {
			return err
		}
		if consistency.Outstanding(h, groups(true)) == 0 {
			return nil
		}
	}
}

// recordDeadLetters adds every group's dead letters to the history, once each.
func (w *workload) recordDeadLetters(h *consistency.History, seen map[[2]string]bool) error {
	b := w.t.broker()
	for _, g := range []string{gPop, gTag, gOrd, gPull, gTxn} {
		for off := int64(0); ; {
			dl, next, err := b.DeadLetters(instanceID, g, off, 256)
			if err != nil {
				return err
			}
			for _, m := range dl {
				k := [2]string{g, string(m.Body)}
				if !seen[k] {
					seen[k] = true
					h.Add(consistency.Event{Kind: consistency.DeadLettered, Token: string(m.Body), Group: g, ID: m.ID})
				}
			}
			if len(dl) == 0 || next == off {
				break
			}
			off = next
		}
	}
	return nil
}
