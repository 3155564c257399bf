package devcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

// parentEnv makes the test binary a dev process of its own: it starts a control
// plane on the directory the variable names, prints "ready" and waits to be killed,
// as `make run` would be.
const parentEnv = "DEVCLUSTER_TEST_PARENT_DIR"

func TestMain(m *testing.M) {
	RunIfChild() // the control-plane binaries are started through this one
	if dir := os.Getenv(parentEnv); dir != "" {
		c, err := Start(Options{
			Dir: dir, AssetsDir: os.Getenv("KUBEBUILDER_ASSETS"),
			CRDDir: filepath.Join("..", "..", "config", "crd", "bases"),
			Scheme: clientgoscheme.Scheme, Log: logr.Discard(),
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = c
		fmt.Println("ready")
		select {} // until killed
	}
	os.Exit(m.Run())
}
