package mqgrpc_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	// Before the client: see the package's documentation.
	_ "github.com/orderly-dev/orderly/internal/mqgrpc/internal/clientenv"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
	"github.com/go-logr/logr/testr"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqgrpc"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// These tests drive the real Go client, github.com/apache/rocketmq-clients/golang/v5
// v5.1.4, against the server on loopback over TLS.

const (
	testInstance = "MQ_INST_grpc"
	testAK       = "ORDLgrpcaccesskeyid0000"
	testSK       = "grpcaccesskeysecret000000000000"
)

// serverTLS is the servers' TLS, signed by a test CA the clients trust;
// clientTLS trusts it, and caFile holds it in PEM for clients in other processes.
var (
	serverTLS, clientTLS *tls.Config
	caFile               string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mqgrpc-certs")
	if err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := wiretls.EnsureDevCerts(dir, []string{"127.0.0.1"}); err != nil {
			panic(err)
		}
		certs, err := wiretls.LoadCerts(dir)
		if err != nil {
			panic(err)
		}
		ca, err := certs.CA()
		if err != nil {
			panic(err)
		}
		caFile = filepath.Join(dir, wiretls.CAFile)
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			panic("no CA")
		}
		serverTLS = certs.Config()
		clientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		// The client skips verifying the server unless given a TLS
		// configuration; these tests give it one that verifies against the CA,
		// and see ALPN h2 negotiated (grpc-go refuses a server without it).
		orig := rmq.NewRpcClient
		rmq.NewRpcClient = func(target string, opts ...rmq.RpcClientOption) (rmq.RpcClient, error) {
			return orig(target, append(opts, rmq.WithRpcClientConnOption(rmq.WithTLSConfig(clientTLS.Clone())))...)
		}
		return m.Run()
	}()
	os.Exit(code)
}

type env struct {
	t        *testing.T
	broker   *broker.Broker
	server   *mqgrpc.Server
	endpoint string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, func(*mqgrpc.Server) {})
}

// newEnvWith starts a server that configure has adjusted.
func newEnvWith(t *testing.T, configure func(*mqgrpc.Server)) *env {
	t.Helper()
	b, err := broker.Open(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}}); err != nil {
		t.Fatal(err)
	}
	srv := mqgrpc.NewServer("127.0.0.1:0", "", b, testr.New(t))
	srv.TLS = serverTLS // and no plain text: the Go client must speak TLS
	configure(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	var addr net.Addr
	select {
	case addr = <-srv.Listening():
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	}
	return &env{t: t, broker: b, server: srv, endpoint: addr.String()}
}

func (e *env) topic(name string, typ broker.MessageType, queues int) {
	e.t.Helper()
	if _, err := e.broker.EnsureTopic(testInstance, broker.TopicConfig{Name: name, Type: typ, Queues: queues, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) group(id string, p broker.Protocol, maxRedeliveries int) {
	e.t.Helper()
	if _, err := e.broker.EnsureGroup(testInstance, broker.GroupConfig{ID: id, Protocol: p, MaxRedeliveries: maxRedeliveries, Owner: "o"}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) config(group string) *rmq.Config {
	return &rmq.Config{Endpoint: e.endpoint, NameSpace: testInstance, ConsumerGroup: group,
		Credentials: &credentials.SessionCredentials{AccessKey: testAK, AccessSecret: testSK}}
}

func (e *env) producer(opts ...rmq.ProducerOption) rmq.Producer {
	e.t.Helper()
	return e.producerWith(e.config(""), opts...)
}

func (e *env) producerWith(cfg *rmq.Config, opts ...rmq.ProducerOption) rmq.Producer {
	e.t.Helper()
	p, err := rmq.NewProducer(cfg, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		e.t.Fatalf("producer start: %v", err)
	}
	e.t.Cleanup(func() { _ = p.GracefulStop() })
	return p
}

// consumer starts a SimpleConsumer of group on topics, waiting up to await for
// messages in each receive.
func (e *env) consumer(group string, await time.Duration, topics ...string) rmq.SimpleConsumer {
	e.t.Helper()
	subs := map[string]*rmq.FilterExpression{}
	for _, t := range topics {
		subs[t] = rmq.SUB_ALL
	}
	c, err := rmq.NewSimpleConsumer(e.config(group), rmq.WithSimpleAwaitDuration(await), rmq.WithSimpleSubscriptionExpressions(subs))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		e.t.Fatalf("consumer start: %v", err)
	}
	e.t.Cleanup(func() { _ = c.GracefulStop() })
	return c
}

// receive receives until it has want messages or the deadline passes; it acks
// none.
func receive(t *testing.T, c rmq.SimpleConsumer, want int, invisible, within time.Duration) []*rmq.MessageView {
	t.Helper()
	var out []*rmq.MessageView
	deadline := time.Now().Add(within)
	for len(out) < want && time.Now().Before(deadline) {
		mvs, err := c.Receive(context.Background(), 16, invisible)
		if err != nil && !isCode(err, 40401) { // MESSAGE_NOT_FOUND is Go's "nothing yet"
			t.Fatalf("receive: %v", err)
		}
		out = append(out, mvs...)
	}
	if len(out) < want {
		t.Fatalf("received %d messages in %v, want %d", len(out), within, want)
	}
	return out
}

// isCode reports whether err is the client's error for a status code.
func isCode(err error, code int32) bool {
	var st *rmq.ErrRpcStatus
	return errors.As(err, &st) && st.Code == code
}

func body(mv *rmq.MessageView) string { return string(mv.GetBody()) }

func TestNormalSendAndSimpleReceiveAckChangeInvisibility(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 4)
	e.group("GID_simple", broker.HTTP, 0)
	p := e.producer(rmq.WithTopics("normal"))
	c := e.consumer("GID_simple", 2*time.Second, "normal")

	sent := map[string]string{} // message id -> body
	for i := range 3 {
		m := &rmq.Message{Topic: "normal", Body: fmt.Appendf(nil, "hello %d", i)}
		m.SetTag("TagA")
		m.SetKeys(fmt.Sprint("k", i), "shared")
		m.AddProperty("p", fmt.Sprint(i))
		receipts, err := p.Send(context.Background(), m)
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		if len(receipts) != 1 || receipts[0].MessageID == "" {
			t.Fatalf("receipts %+v", receipts)
		}
		sent[receipts[0].MessageID] = string(m.Body)
	}

	got := receive(t, c, 3, 20*time.Second, 15*time.Second)
	if len(got) != 3 {
		t.Fatalf("received %d", len(got))
	}
	for _, mv := range got {
		if want, ok := sent[mv.GetMessageId()]; !ok || want != body(mv) {
			t.Fatalf("received %q with id %s; sent %v", body(mv), mv.GetMessageId(), sent)
		}
		if mv.GetTag() == nil || *mv.GetTag() != "TagA" || len(mv.GetKeys()) != 2 || mv.GetProperties()["p"] == "" ||
			mv.GetDeliveryAttempt() != 1 || mv.GetTopic() != "normal" || mv.GetBornTimestamp() == nil {
			t.Fatalf("message view %+v", mv)
		}
		if _, ok := mv.GetProperties()["UNIQ_KEY"]; ok {
			t.Fatal("the message id leaked into the user properties")
		}
	}

	// Ack the first; make the second invisible for longer; hand the third back at
	// once (a nack), so that it comes again as a second delivery.
	if err := c.Ack(context.Background(), got[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.ChangeInvisibleDuration(got[1], time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := c.ChangeInvisibleDuration(got[2], 0); err != nil {
		t.Fatal(err)
	}
	again := receive(t, c, 1, 20*time.Second, 10*time.Second)
	if len(again) != 1 || again[0].GetMessageId() != got[2].GetMessageId() || again[0].GetDeliveryAttempt() != 2 {
		t.Fatalf("after the nack received %d: %+v", len(again), again)
	}
	if err := c.Ack(context.Background(), again[0]); err != nil {
		t.Fatal(err)
	}
	// The message whose invisibility grew is acked with the handle the change
	// returned, which the client keeps.
	if err := c.Ack(context.Background(), got[1]); err != nil {
		t.Fatal(err)
	}
	if mvs, err := c.Receive(context.Background(), 16, 20*time.Second); !isCode(err, 40401) || len(mvs) != 0 {
		t.Fatalf("after acking everything: %d messages, %v", len(mvs), err)
	}
	stats, err := e.broker.GroupStats(testInstance, "GID_simple")
	if err != nil || len(stats.Topics) != 1 || stats.Topics[0].Backlog != 0 || stats.Topics[0].InFlight != 0 {
		t.Fatalf("group stats %+v, %v", stats, err)
	}
}
