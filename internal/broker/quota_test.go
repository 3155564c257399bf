package broker

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestQuotasBoundATenantAndNotItsNeighbours(t *testing.T) {
	f := newFixture(t)
	limits := Limits{Topics: 2, Groups: 1, PublishRate: 10, MaxMessageSize: 1024, Connections: 2}
	if err := f.b.EnsureInstance(InstanceConfig{ID: "MQ_INST_small", Owner: "o", Limits: limits}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := f.b.EnsureTopic("MQ_INST_small", TopicConfig{Name: fmt.Sprint("t", i), Owner: "o"})
		if (i < 2) != (err == nil) || (err != nil && !errors.Is(err, ErrQuotaExceeded)) {
			t.Fatalf("topic %d of a limit of 2: %v", i, err)
		}
	}
	// A group's retry and dead-letter topics do not count as the tenant's topics.
	if _, err := f.b.EnsureGroup("MQ_INST_small", GroupConfig{ID: "GID_a", Protocol: HTTP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.EnsureGroup("MQ_INST_small", GroupConfig{ID: "GID_b", Protocol: HTTP, Owner: "o"}); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("second group of a limit of 1: %v", err)
	}
	if _, err := f.b.Publish(context.Background(), "MQ_INST_small", "t0", Message{Body: make([]byte, 1025), Queue: AnyQueue}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a body over the instance's size limit: %v", err)
	}
	// The burst is one second's worth: the eleventh message at once is throttled,
	// the neighbour publishes on.
	f.topic("t", Normal, 1)
	throttled := 0
	for range 11 {
		_, err := f.b.Publish(context.Background(), "MQ_INST_small", "t0", msg("x"))
		if errors.Is(err, ErrThrottled) {
			throttled++
		} else if err != nil {
			t.Fatal(err)
		}
		f.publish("t", msg("neighbour"))
	}
	if throttled == 0 {
		t.Fatal("11 messages at once passed a limit of 10 a second")
	}
	// Connections.
	var releases []func()
	for range 2 {
		release, err := f.b.AcquireConnection("MQ_INST_small")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	if _, err := f.b.AcquireConnection("MQ_INST_small"); !errors.Is(err, ErrThrottled) {
		t.Fatalf("third connection of a limit of 2: %v", err)
	}
	releases[0]()
	releases[0]() // once only
	if u, _ := f.b.Usage("MQ_INST_small"); u.Connections != 1 || u.Topics != 2 || u.Groups != 1 || u.Limits.PublishRate != 10 {
		t.Fatalf("usage %+v", u)
	}
	if _, err := f.b.AcquireConnection("MQ_INST_small"); err != nil {
		t.Fatalf("a connection after one was released: %v", err)
	}
	// A limit over what the broker takes is refused.
	if err := f.b.EnsureInstance(InstanceConfig{ID: "MQ_INST_small", Owner: "o", Limits: Limits{MaxMessageSize: MaxBodySize + 1}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a maximum message size over %d: %v", MaxBodySize, err)
	}
}
