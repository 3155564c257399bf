package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Every test closes what it opens; a goroutine left behind is a leak.
	goleak.VerifyTestMain(m)
}

// New opens an in-memory broker for t and closes it when t ends.
func New(t testing.TB) *Broker {
	t.Helper()
	b, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestEnsureInstanceIsIdempotentAndReplacesCredentials(t *testing.T) {
	b := New(t)
	cfg := InstanceConfig{ID: "MQ_INST_a", Owner: "uid-a", Credentials: []Credential{{AccessKeyID: "ak1", AccessKeySecret: "s1"}}}
	for range 2 {
		if err := b.EnsureInstance(cfg); err != nil {
			t.Fatalf("EnsureInstance: %v", err)
		}
	}
	if got := b.Instances(); len(got) != 1 || got[0].ID != "MQ_INST_a" {
		t.Fatalf("Instances() = %+v, want one MQ_INST_a", got)
	}
	inst, secret, ok := b.LookupAccessKey("ak1")
	if !ok || inst != "MQ_INST_a" || secret != "s1" {
		t.Fatalf("LookupAccessKey(ak1) = %q, %q, %v", inst, secret, ok)
	}

	// Rotating the key pair drops the old key at once.
	cfg.Credentials = []Credential{{AccessKeyID: "ak2", AccessKeySecret: "s2"}}
	if err := b.EnsureInstance(cfg); err != nil {
		t.Fatalf("EnsureInstance: %v", err)
	}
	if _, _, ok := b.LookupAccessKey("ak1"); ok {
		t.Fatal("old AccessKey still authenticates after rotation")
	}
	info, err := b.Instance("MQ_INST_a")
	if err != nil || !slices.Equal(info.AccessKeyIDs, []string{"ak2"}) {
		t.Fatalf("Instance() = %+v, %v", info, err)
	}
}

func TestAccessKeyBelongsToOneInstance(t *testing.T) {
	b := New(t)
	cred := []Credential{{AccessKeyID: "shared", AccessKeySecret: "s"}}
	if err := b.EnsureInstance(InstanceConfig{ID: "one", Owner: "o1", Credentials: cred}); err != nil {
		t.Fatal(err)
	}
	err := b.EnsureInstance(InstanceConfig{ID: "two", Owner: "o2", Credentials: cred})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("second instance with the same key: err = %v, want ErrInvalidArgument", err)
	}
	if inst, _, _ := b.LookupAccessKey("shared"); inst != "one" {
		t.Fatalf("key moved to %q", inst)
	}
}

func TestEnsureInstanceRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  InstanceConfig
	}{
		{"empty id", InstanceConfig{}},
		{"separator in id", InstanceConfig{ID: "a%b"}},
		{"too long", InstanceConfig{ID: string(make([]byte, 65))}},
		{"empty secret", InstanceConfig{ID: "ok", Credentials: []Credential{{AccessKeyID: "ak"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := New(t).EnsureInstance(tc.cfg); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestDeleteInstance(t *testing.T) {
	b := New(t)
	if err := b.EnsureInstance(InstanceConfig{ID: "x", Owner: "o", Credentials: []Credential{{AccessKeyID: "ak", AccessKeySecret: "s"}}}); err != nil {
		t.Fatal(err)
	}
	// Another owner's delete is a no-op: it never held the instance.
	if err := b.DeleteInstance("x", "intruder"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Instance("x"); err != nil {
		t.Fatalf("instance gone after another owner's delete: %v", err)
	}
	for range 2 { // deleting twice is not an error
		if err := b.DeleteInstance("x", "o"); err != nil {
			t.Fatalf("DeleteInstance: %v", err)
		}
	}
	if _, err := b.Instance("x"); !errors.Is(err, ErrInstanceNotFound) {
		t.Fatalf("Instance after delete: err = %v", err)
	}
	if _, _, ok := b.LookupAccessKey("ak"); ok {
		t.Fatal("deleted instance's key still authenticates")
	}
}

func TestClosedBrokerRefusesWrites(t *testing.T) {
	b := New(t)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.EnsureInstance(InstanceConfig{ID: "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
}

func TestInstanceOwnership(t *testing.T) {
	b := New(t)
	first := InstanceConfig{ID: "shared", Owner: "first", Credentials: []Credential{{AccessKeyID: "k1", AccessKeySecret: "s1"}}}
	if err := b.EnsureInstance(first); err != nil {
		t.Fatal(err)
	}
	second := InstanceConfig{ID: "shared", Owner: "second", Credentials: []Credential{{AccessKeyID: "k2", AccessKeySecret: "s2"}}}
	err := b.EnsureInstance(second)
	var conflict *ConflictError
	if !errors.As(err, &conflict) || !errors.Is(err, ErrConflict) || conflict.Owner != "first" {
		t.Fatalf("second owner: err = %v, want a ConflictError naming first", err)
	}
	if _, _, ok := b.LookupAccessKey("k2"); ok {
		t.Fatal("a refused declaration registered its key")
	}

	// Taking over from an owner that is not the current one is refused too.
	second.PreviousOwner = "somebody-else"
	if err := b.EnsureInstance(second); !errors.Is(err, ErrConflict) {
		t.Fatalf("takeover from the wrong previous owner: err = %v", err)
	}
	// Taking over from the current owner swaps owner and keys.
	second.PreviousOwner = "first"
	if err := b.EnsureInstance(second); err != nil {
		t.Fatalf("takeover: %v", err)
	}
	info, _ := b.Instance("shared")
	if info.Owner != "second" || !slices.Equal(info.AccessKeyIDs, []string{"k2"}) {
		t.Fatalf("after takeover: %+v", info)
	}
	if _, _, ok := b.LookupAccessKey("k1"); ok {
		t.Fatal("the previous owner's key still authenticates")
	}
}

// Close waits for the calls that use the store: consumers in flight, long polls
// among them, end with ErrClosed instead of reading a closed store.
func TestCloseUnderConsumersInFlight(t *testing.T) {
	b := New(t)
	if err := b.EnsureInstance(InstanceConfig{ID: "MQ_INST_a", Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureTopic("MQ_INST_a", TopicConfig{Name: "t", Queues: 4, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []GroupConfig{{ID: "GID_http", Protocol: HTTP, Owner: "o"}, {ID: "GID_tcp", Protocol: TCP, Owner: "o"}} {
		if _, err := b.EnsureGroup("MQ_INST_a", g); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var err error
				if i%2 == 0 {
					_, err = b.Pop(context.Background(), "MQ_INST_a", "t", PopRequest{Group: "GID_http", Max: 16, Wait: time.Second})
				} else {
					_, err = b.Pull(context.Background(), "MQ_INST_a", "GID_tcp", "t", i%4, 0, 32, Filter{}, time.Second)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range 100 {
		if _, err := b.Publish(context.Background(), "MQ_INST_a", "t", Message{Body: []byte("x"), Queue: AnyQueue}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("a consumer ended with %v, want ErrClosed", err)
		}
	}
}
