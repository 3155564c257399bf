package consumer

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqhttp"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// A runtime given the Instance Secret's caCert consumes from an https endpoint
// that serves no plain text.
func TestTheRuntimeTrustsTheInstancesCA(t *testing.T) {
	dir := t.TempDir()
	if err := wiretls.EnsureDevCerts(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	certs, err := wiretls.LoadCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, broker.Ordered, 16)
	srv := mqhttp.NewServer("127.0.0.1:0", e.broker, logr.Discard())
	srv.TLS = certs.Config()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := (<-srv.Listening()).(*net.TCPAddr)
	e.publish("a", "b")

	cfg := e.config(Drain)
	cfg.Endpoint = "https://" + addr.String()
	ca, _ := os.ReadFile(filepath.Join(dir, wiretls.CAFile))
	var log bytes.Buffer
	// Without the CA the runtime cannot verify the endpoint.
	if _, err := (&Runtime{Config: cfg, Command: e.handler(), Stderr: &log}).Run(context.Background()); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: %v", err)
	}
	cfg.CACert = string(ca)
	res, err := (&Runtime{Config: cfg, Command: e.handler(), Stderr: &log}).Run(context.Background())
	if err != nil || res != (Result{Handled: 2}) {
		t.Fatalf("with the CA: %+v, %v; log:\n%s", res, err, log.String())
	}
}
