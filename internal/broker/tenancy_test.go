package broker

import (
	"errors"
	"testing"
)

// A tenant belongs to whoever first declared it, by name, and keeps its keys
// across restarts.

func TestAnOrphanedInstanceIsAdoptedOnlyByItsDeclarer(t *testing.T) {
	f := newFixture(t)
	cfg := InstanceConfig{ID: "MQ_INST_x", Owner: "uid-1", Declarer: "team-a/prod"}
	if err := f.b.EnsureInstance(cfg); err != nil {
		t.Fatal(err)
	}
	// uid-1 vanished without deleting the instance. An object of another
	// namespace claiming to succeed it is refused...
	thief := InstanceConfig{ID: "MQ_INST_x", Owner: "uid-2", PreviousOwner: "uid-1", Declarer: "team-b/prod"}
	var conflict *ConflictError
	if err := f.b.EnsureInstance(thief); !errors.As(err, &conflict) {
		t.Fatalf("adoption from another namespace: %v", err)
	}
	// ...while the same namespace and name, recreated, adopts it, and a restart
	// keeps that.
	heir := InstanceConfig{ID: "MQ_INST_x", Owner: "uid-3", PreviousOwner: "uid-1", Declarer: "team-a/prod"}
	if err := f.b.EnsureInstance(heir); err != nil {
		t.Fatalf("adoption by the recreated declarer: %v", err)
	}
	f.reopen()
	thief.PreviousOwner = "uid-3"
	if err := f.b.EnsureInstance(thief); !errors.As(err, &conflict) {
		t.Fatalf("adoption from another namespace after a restart: %v", err)
	}
}

func TestAccessKeyOwnershipSurvivesARestart(t *testing.T) {
	f := newFixture(t)
	a := InstanceConfig{ID: "MQ_INST_a", Owner: "ua", Credentials: []Credential{{AccessKeyID: "AK1", AccessKeySecret: "secret-a"}}}
	if err := f.b.EnsureInstance(a); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	// Before its owner declares it again, the key authenticates nothing, and
	// another instance cannot take it by declaring first.
	if _, _, ok := f.b.LookupAccessKey("AK1"); ok {
		t.Fatal("a key authenticated after a restart before its secret was declared again")
	}
	b := InstanceConfig{ID: "MQ_INST_b", Owner: "ub", Credentials: []Credential{{AccessKeyID: "AK1", AccessKeySecret: "secret-b"}}}
	if err := f.b.EnsureInstance(b); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("another instance declaring AK1 first after a restart: %v", err)
	}
	if err := f.b.EnsureInstance(a); err != nil {
		t.Fatal(err)
	}
	if id, secret, ok := f.b.LookupAccessKey("AK1"); !ok || id != "MQ_INST_a" || secret != "secret-a" {
		t.Fatalf("AK1 after its owner declared it: %q %v", id, ok)
	}
	// A key the owner drops, or its instance's deletion, frees it.
	a.Credentials = []Credential{{AccessKeyID: "AK2", AccessKeySecret: "s2"}}
	if err := f.b.EnsureInstance(a); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	if err := f.b.EnsureInstance(b); err != nil {
		t.Fatalf("AK1, dropped by its owner, declared by another: %v", err)
	}
	if err := f.b.DeleteInstance("MQ_INST_b", "ub"); err != nil {
		t.Fatal(err)
	}
	f.reopen()
	if err := f.b.EnsureInstance(InstanceConfig{ID: "MQ_INST_c", Owner: "uc", Credentials: []Credential{{AccessKeyID: "AK1", AccessKeySecret: "c"}}}); err != nil {
		t.Fatalf("AK1 after its instance was deleted: %v", err)
	}
}
