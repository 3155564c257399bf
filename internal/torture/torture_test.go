package torture

import (
	"context"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/orderly-dev/orderly/internal/consistency"
)

func TestMain(m *testing.M) {
	ChildMain()
	os.Exit(m.Run())
}

var (
	tortureTime = flag.Duration("torture.time", 12*time.Second, "how long TestTorture runs (make torture sets it from TORTURE_TIME)")
	tortureSeed = flag.Uint64("torture.seed", 0, "replay a run's seed (0: a new one)")
)

func seed(t *testing.T) uint64 {
	if *tortureSeed != 0 {
		return *tortureSeed
	}
	s, err := consistency.Seed("TORTURE_SEED")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runTorture(t *testing.T, cfg Config) {
	cfg.Seed = seed(t)
	cfg.Dir = t.TempDir()
	cfg.Log = testr.New(t)
	t.Logf("seed %d (replay with -torture.seed=%d or TORTURE_SEED=%d)", cfg.Seed, cfg.Seed, cfg.Seed)
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("seed %d: %v", cfg.Seed, err)
	}
	t.Log(res)
	if len(res.Report.Violations) > 0 {
		t.Fatalf("seed %d: %d violations", cfg.Seed, len(res.Report.Violations))
	}
	if res.Report.Acknowledged == 0 || res.Report.Deliveries == 0 || res.Restarts+res.Kills == 0 {
		t.Fatalf("the run did too little to check anything: %s", res)
	}
}

// TestTorture is the consistency check of the broker under faults. make test runs
// its short form: a few epochs of a few seconds, each with an in-process reopen
// under load, every other one in a child process SIGKILLed at its end. make
// torture runs it for TORTURE_TIME.
func TestTorture(t *testing.T) {
	epoch := 30 * time.Second
	if *tortureTime < 2*time.Minute {
		epoch = 4 * time.Second
	}
	runTorture(t, Config{Duration: *tortureTime, Epoch: epoch, Kill: true})
}
