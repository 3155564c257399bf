package hostile

import (
	"os"
	"testing"

	"github.com/orderly-dev/orderly/internal/devcluster"
)

// TestMain lets this test binary start etcd and kube-apiserver through itself
// (devcluster.StartEnvironment), so that they die with it, even on SIGKILL.
func TestMain(m *testing.M) {
	devcluster.RunIfChild()
	os.Exit(m.Run())
}
