package mqgrpc_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
)

// pushConsumer starts a PushConsumer of group on topic with listener.
func (e *env) pushConsumer(group, topic string, listener func(*rmq.MessageView) rmq.ConsumerResult) {
	e.t.Helper()
	c, err := rmq.NewPushConsumer(e.config(group),
		rmq.WithPushSubscriptionExpressions(map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL}),
		rmq.WithPushAwaitDuration(5*time.Second),
		rmq.WithPushMessageListener(&rmq.FuncMessageListener{Consume: listener}))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		e.t.Fatalf("push consumer start: %v", err)
	}
	e.t.Cleanup(func() { _ = c.GracefulStop() })
}

// shortPolls makes push consumers' receives short: a push consumer's shutdown
// waits for the receives in flight.
func shortPolls(s *mqgrpc.Server) { s.Limits.LongPolling = 2 * time.Second }

func TestFIFOPushConsumerKeepsOrderPerGroup(t *testing.T) {
	e := newEnvWith(t, shortPolls)
	e.topic("fifo", broker.Ordered, 4)
	e.group("GID_push_fifo", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("fifo"))
	groups := []string{"a", "b", "c"}
	const perGroup = 5
	for i := range perGroup {
		for _, g := range groups {
			m := &rmq.Message{Topic: "fifo", Body: fmt.Appendf(nil, "%s/%d", g, i)}
			m.SetMessageGroup(g)
			if _, err := p.Send(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	next := map[string]int{}
	var bad []string
	done := make(chan struct{})
	total := 0
	e.pushConsumer("GID_push_fifo", "fifo", func(mv *rmq.MessageView) rmq.ConsumerResult {
		mu.Lock()
		defer mu.Unlock()
		g, i, _ := strings.Cut(body(mv), "/")
		if want := fmt.Sprint(next[g]); i != want {
			bad = append(bad, fmt.Sprintf("group %s: %s before %s", g, i, want))
			return rmq.SUCCESS
		}
		next[g]++
		if total++; total == perGroup*len(groups) {
			close(done)
		}
		return rmq.SUCCESS
	})
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("consumed %d of %d: %v", total, perGroup*len(groups), next)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("out of order: %v", bad)
	}
}

func TestPushConsumerFailureIsRetried(t *testing.T) {
	e := newEnvWith(t, shortPolls)
	e.topic("normal", broker.Normal, 2)
	e.group("GID_push", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("normal"))
	for _, b := range []string{"fine", "fails once"} {
		if _, err := p.Send(context.Background(), &rmq.Message{Topic: "normal", Body: []byte(b)}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	attempts := map[string][]int32{}
	done := make(chan struct{})
	e.pushConsumer("GID_push", "normal", func(mv *rmq.MessageView) rmq.ConsumerResult {
		mu.Lock()
		defer mu.Unlock()
		attempts[body(mv)] = append(attempts[body(mv)], mv.GetDeliveryAttempt())
		if body(mv) == "fails once" && len(attempts[body(mv)]) == 1 {
			return rmq.FAILURE
		}
		if len(attempts["fine"]) > 0 && len(attempts["fails once"]) == 2 {
			close(done)
		}
		return rmq.SUCCESS
	})
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("attempts %v", attempts)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := attempts["fails once"]; got[0] != 1 || got[1] != 2 {
		t.Fatalf("attempts of the failing message %v", got)
	}
}
