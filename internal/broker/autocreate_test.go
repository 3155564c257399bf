package broker

import (
	"errors"
	"testing"
)

func TestAutoCreateOnlyWhereTheInstanceAllowsIt(t *testing.T) {
	f := newFixture(t)
	if _, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "typo"}); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("topic created without the instance's consent: %v", err)
	}
	if _, err := f.b.AutoCreateGroup(inst, "GID_typo", TCP); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("group created without the instance's consent: %v", err)
	}
	if _, err := f.b.Topic(inst, "typo"); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("refused creation left a topic: %v", err)
	}

	if err := f.b.EnsureInstance(InstanceConfig{ID: inst, Owner: "o", AutoCreate: AutoCreatePolicy{Topics: true, Groups: true}}); err != nil {
		t.Fatal(err)
	}
	info, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "auto", Owner: "ignored"})
	if err != nil || info.Owner != AutoCreatedOwner || info.Type != Normal || info.Queues != DefaultAutoCreateQueues {
		t.Fatalf("AutoCreateTopic = %+v, %v", info, err)
	}
	if info, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "wide", Queues: 10_000}); err != nil || info.Queues != maxAutoCreateQueues {
		t.Fatalf("a client's queue count is bounded: %+v, %v", info, err)
	}
	if _, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "bad name!"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("invalid name: %v", err)
	}
	g, err := f.b.AutoCreateGroup(inst, "GID_auto", TCP)
	if err != nil || g.Owner != AutoCreatedOwner || g.Protocol != TCP {
		t.Fatalf("AutoCreateGroup = %+v, %v", g, err)
	}

	// What exists is returned as it is, whoever declared it.
	f.topic("declared", Ordered, 2)
	if info, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "declared"}); err != nil || info.Owner != "o" || info.Type != Ordered {
		t.Fatalf("AutoCreateTopic of a declared topic = %+v, %v", info, err)
	}
	if _, err := f.b.EnsureGroup(inst, GroupConfig{ID: "GID_http", Protocol: HTTP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if g, err := f.b.AutoCreateGroup(inst, "GID_http", TCP); err != nil || g.Protocol != HTTP {
		t.Fatalf("AutoCreateGroup of a declared HTTP group = %+v, %v", g, err)
	}

	// The policy is the declarer's to withdraw.
	if err := f.b.EnsureInstance(InstanceConfig{ID: inst, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "later"}); !errors.Is(err, ErrTopicNotFound) {
		t.Fatalf("created after the policy was withdrawn: %v", err)
	}
}

func TestDeclaringAdoptsWhatWasAutoCreated(t *testing.T) {
	f := newFixture(t)
	if err := f.b.EnsureInstance(InstanceConfig{ID: inst, Owner: "o", AutoCreate: AutoCreatePolicy{Topics: true, Groups: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "t", Queues: 4}); err != nil {
		t.Fatal(err)
	}
	f.publish("t", Message{Body: []byte("kept"), Queue: AnyQueue})
	info, err := f.b.EnsureTopic(inst, TopicConfig{Name: "t", Queues: 8, Owner: "topic-uid"})
	if err != nil || info.Owner != "topic-uid" || info.Queues != 8 || info.Messages != 1 {
		t.Fatalf("adoption = %+v, %v", info, err)
	}
	// Adopted, it is no longer anyone else's: another declarer conflicts.
	var conflict *ConflictError
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "t", Queues: 8, Owner: "other"}); !errors.As(err, &conflict) {
		t.Fatalf("second declarer: %v", err)
	}
	// A type the auto-created topic does not have cannot be declared onto it.
	if _, err := f.b.AutoCreateTopic(inst, TopicConfig{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.b.EnsureTopic(inst, TopicConfig{Name: "n", Type: Ordered, Queues: 4, Owner: "topic-uid"}); !errors.Is(err, ErrImmutable) {
		t.Fatalf("type change on adoption: %v", err)
	}

	if _, err := f.b.AutoCreateGroup(inst, "GID_a", TCP); err != nil {
		t.Fatal(err)
	}
	g, err := f.b.EnsureGroup(inst, GroupConfig{ID: "GID_a", Protocol: TCP, Owner: "group-uid"})
	if err != nil || g.Owner != "group-uid" {
		t.Fatalf("group adoption = %+v, %v", g, err)
	}

	// Ownership survives a restart.
	f.reopen()
	if info, err := f.b.Topic(inst, "t"); err != nil || info.Owner != "topic-uid" {
		t.Fatalf("after restart: %+v, %v", info, err)
	}
	if g, err := f.b.Group(inst, "GID_a"); err != nil || g.Owner != "group-uid" {
		t.Fatalf("group after restart: %+v, %v", g, err)
	}
}
