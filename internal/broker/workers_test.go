package broker

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A worker's report rides on its pops: the latest one is kept per worker, a bad
// one refuses the pop without noting anything, and a group's reports are bounded.
func TestWorkerProgressKeepsTheLatestReportPerWorker(t *testing.T) {
	f := newFixture(t)
	f.topic("t", Normal, 1)
	f.group("g", HTTP)
	f.pop("t", PopRequest{Group: "g", Max: 1, Progress: &WorkerProgress{Worker: "pod-a", Handled: 3, Failed: 1}})
	f.pop("t", PopRequest{Group: "g", Max: 1, Progress: &WorkerProgress{Worker: "pod-b", Handled: 7}})
	f.pop("t", PopRequest{Group: "g", Max: 1, Progress: &WorkerProgress{Worker: "pod-a", Handled: 5, Failed: 1}})
	f.pop("t", PopRequest{Group: "g", Max: 1}) // no report: nothing changes
	got, err := f.b.WorkerProgress(inst, "g")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]WorkerProgress{
		"pod-a": {Worker: "pod-a", Handled: 5, Failed: 1},
		"pod-b": {Worker: "pod-b", Handled: 7},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("progress %v, want %v", got, want)
	}

	for _, bad := range []WorkerProgress{
		{Worker: ""}, {Worker: strings.Repeat("w", MaxWorkerIDLength+1)}, {Worker: "two words"}, {Worker: "ctl\x01"},
		{Worker: "pod-c", Handled: -1}, {Worker: "pod-c", Failed: -1},
	} {
		_, err := f.b.Pop(t.Context(), inst, "t", PopRequest{Group: "g", Max: 1, Progress: &bad})
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("report %+v: %v, want ErrInvalidArgument", bad, err)
		}
	}
	if got, _ := f.b.WorkerProgress(inst, "g"); len(got) != 2 {
		t.Fatalf("refused reports were noted: %v", got)
	}

	// A client naming a new worker on every pop costs a bounded book: the reports
	// heard from longest ago make room, and the latest stay.
	for i := range maxWorkersPerGroup + 10 {
		f.pop("t", PopRequest{Group: "g", Max: 1, Progress: &WorkerProgress{Worker: fmt.Sprintf("w%d", i), Handled: int64(i)}})
	}
	got, _ = f.b.WorkerProgress(inst, "g")
	last := fmt.Sprintf("w%d", maxWorkersPerGroup+9)
	if len(got) != maxWorkersPerGroup || got[last].Handled != maxWorkersPerGroup+9 {
		t.Fatalf("%d reports kept (want %d), %s = %+v", len(got), maxWorkersPerGroup, last, got[last])
	}
	if _, ok := got["pod-a"]; ok {
		t.Fatalf("the oldest report was kept over newer ones")
	}
	if _, err := f.b.WorkerProgress(inst, "nope"); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("unknown group: %v", err)
	}
}
