package broker

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs the broker in a child process (this test binary, re-executed
// into crashChild), kills it with SIGKILL in the middle of publishing, consuming
// and transacting, then reopens its directory and checks every promise made before
// the kill. The child reports each outcome on stdout only after the broker
// acknowledged it, so a reported outcome is a promise.

const crashDirEnv = "ORDERLY_CRASH_CHILD_DIR"

func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		crashChild(os.Getenv(crashDirEnv))
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashRecovery$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	published := map[string]string{} // body -> id
	inflight := map[string]bool{}    // popped and not acknowledged
	var committed, rolledBack []string
	lines := bufio.NewScanner(out)
	deadline := time.Now().Add(2 * time.Minute)
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) != 3 {
			continue
		}
		switch f[0] {
		case "P":
			published[f[1]] = f[2]
		case "F":
			inflight[f[2]] = true
		case "A":
			delete(inflight, f[2])
		case "C":
			committed = append(committed, f[2])
		case "R":
			rolledBack = append(rolledBack, f[2])
		}
		// Kill in mid-stream, once there is something of everything to check.
		if len(published) >= 3000 && len(inflight) >= 100 && len(committed) >= 20 && len(rolledBack) >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child did not get far enough in 2 minutes")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	t.Logf("killed after %d acknowledged publishes, %d in flight, %d commits, %d rollbacks",
		len(published), len(inflight), len(committed), len(rolledBack))

	start := time.Now()
	b, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer b.Close()
	t.Logf("reopened in %v", time.Since(start))
	ctx := context.Background()

	// Every acknowledged publish is there exactly once, and each sharding key's
	// messages are in publish order within their queue.
	stored := map[string]int{}
	for q := range 4 {
		last := map[string]int{}
		for offset := int64(0); ; {
			pr, err := b.Pull(ctx, crashInst, "GID_verify", "orders", q, offset, 1024, Filter{}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(pr.Messages) == 0 {
				break
			}
			for _, m := range pr.Messages {
				body := string(m.Body)
				stored[body]++
				var key string
				var n int
				if _, err := fmt.Sscanf(strings.Replace(body, "/", " ", 1), "%s %d", &key, &n); err != nil {
					t.Fatalf("body %q", body)
				}
				if prev, ok := last[key]; ok && n <= prev {
					t.Fatalf("queue %d: key %s has %d after %d", q, key, n, prev)
				}
				last[key] = n
			}
			offset = pr.NextOffset
		}
	}
	for body, id := range published {
		if stored[body] != 1 {
			t.Fatalf("acknowledged message %s (%s) stored %d times", body, id, stored[body])
		}
	}
	for body, n := range stored {
		if n != 1 {
			t.Fatalf("message %s stored %d times", body, n)
		}
	}

	// Messages in flight to the HTTP group at the kill are delivered again.
	redelivered := map[string]bool{}
	for {
		got, err := b.Pop(ctx, crashInst, "orders", PopRequest{Group: "GID_http", Max: 16})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		handles := make([]string, len(got))
		for i, d := range got {
			redelivered[d.ID] = true
			handles[i] = d.Handle
		}
		if _, err := b.Ack(crashInst, "orders", "GID_http", handles); err != nil {
			t.Fatal(err)
		}
	}
	for id := range inflight {
		if !redelivered[id] {
			t.Fatalf("message %s, in flight at the kill, was not delivered again", id)
		}
	}

	// Committed transactions survive; rolled-back ones never appear.
	visible := map[string]bool{}
	for offset := int64(0); ; {
		pr, err := b.Pull(ctx, crashInst, "GID_verify", "payments", 0, offset, 1024, Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(pr.Messages) == 0 {
			break
		}
		for _, m := range pr.Messages {
			visible[m.ID] = true
		}
		offset = pr.NextOffset
	}
	for _, id := range committed {
		if !visible[id] {
			t.Fatalf("committed transaction %s is gone", id)
		}
	}
	for _, id := range rolledBack {
		if visible[id] {
			t.Fatalf("rolled-back transaction %s is visible", id)
		}
	}
}

const crashInst = "MQ_INST_crash"

// crashChild works the broker until it is killed, reporting outcomes on stdout:
// "P body id" for an acknowledged publish, "F body id" for a message popped and
// deliberately left unacknowledged, "A body id" for one acknowledged, "C"/"R" for a
// committed/rolled-back transaction.
func crashChild(dir string) {
	b, err := Open(Options{Dir: dir})
	if err != nil {
		panic(err)
	}
	must := func(_ any, err error) {
		if err != nil {
			panic(err)
		}
	}
	must(nil, b.EnsureInstance(InstanceConfig{ID: crashInst, Owner: "o"}))
	must(b.EnsureTopic(crashInst, TopicConfig{Name: "orders", Type: Ordered, Queues: 4, Owner: "o"}))
	must(b.EnsureTopic(crashInst, TopicConfig{Name: "payments", Type: Transactional, Queues: 1, Owner: "o"}))
	must(b.EnsureGroup(crashInst, GroupConfig{ID: "GID_http", Protocol: HTTP, Owner: "o"}))
	must(b.EnsureGroup(crashInst, GroupConfig{ID: "GID_verify", Protocol: TCP, Owner: "o"}))

	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	report := func(kind, body, id string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "%s %s %s\n", kind, body, id)
		out.Flush()
	}
	ctx := context.Background()
	for p := range 32 {
		go func() {
			for n := 0; ; n++ {
				key := fmt.Sprintf("key%d", p)
				body := fmt.Sprintf("%s/%d", key, n)
				res, err := b.Publish(ctx, crashInst, "orders", Message{Body: []byte(body), ShardingKey: key, Queue: AnyQueue})
				if err != nil {
					panic(err)
				}
				report("P", body, res.ID)
			}
		}()
	}
	go func() { // a consumer that leaves every other batch unacknowledged
		for i := 0; ; i++ {
			got, err := b.Pop(ctx, crashInst, "orders", PopRequest{Group: "GID_http", Max: 16, Wait: time.Second})
			if err != nil {
				panic(err)
			}
			if i%2 == 0 {
				for _, d := range got {
					report("F", string(d.Body), d.ID)
				}
				continue
			}
			handles := make([]string, len(got))
			for j, d := range got {
				handles[j] = d.Handle
			}
			errs, err := b.Ack(crashInst, "orders", "GID_http", handles)
			must(nil, err)
			for j, d := range got {
				if errs[j] == nil {
					report("A", string(d.Body), d.ID)
				}
			}
		}
	}()
	for i := 0; ; i++ { // transactions, alternately committed and rolled back
		body := fmt.Sprintf("txn/%d", i)
		res, err := b.Publish(ctx, crashInst, "payments", Message{Body: []byte(body), Queue: AnyQueue, Transactional: true})
		if err != nil {
			panic(err)
		}
		commit := i%2 == 0
		if err := b.EndTransaction(crashInst, "payments", res.TxnHandle, commit); err != nil {
			panic(err)
		}
		if commit {
			report("C", body, res.ID)
		} else {
			report("R", body, res.ID)
		}
	}
}
