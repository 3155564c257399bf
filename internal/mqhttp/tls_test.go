package mqhttp

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	mqsdk "github.com/aliyunmq/mq-http-go-sdk"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/wiretls"
)

// The SDK's HTTP client (fasthttp) trusts the system's roots, which Go reads from
// SSL_CERT_FILE once per process: TestMain points it at a CA made for this test
// binary, before any TLS connection is made.
var testCertDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mqhttp-tls")
	if err == nil {
		err = wiretls.EnsureDevCerts(dir, []string{"127.0.0.1", "localhost"})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test CA:", err)
		os.Exit(2)
	}
	testCertDir = dir
	os.Setenv("SSL_CERT_FILE", filepath.Join(dir, wiretls.CAFile))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tlsServer serves the endpoint over TLS with the test CA's certificate, plain
// text allowed from plain's addresses.
func tlsServer(t *testing.T, plain func(net.Addr) bool) (string, *broker.Broker) {
	t.Helper()
	certs, err := wiretls.LoadCerts(testCertDir)
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, broker.Limits{}, func(s *Server) { s.TLS, s.PlainText = certs.Config(), plain })
}

func TestTheGoSDKOverTLS(t *testing.T) {
	addr, _ := tlsServer(t, nil)
	client := mqsdk.NewAliyunMQClient("https://"+addr, testAK, testSK, "")
	p := client.GetProducer(testInstance, "t")
	res, err := p.PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "over TLS", MessageTag: "a"})
	if err != nil {
		t.Fatalf("publish over TLS: %v", err)
	}
	c := client.GetConsumer(testInstance, "t", "GID_http", "")
	got, err := consume(c, false, 16, 3)
	if err != nil || len(got) != 1 || got[0].MessageId != res.MessageId || got[0].MessageBody != "over TLS" {
		t.Fatalf("consume over TLS: %+v %v", got, err)
	}
	if err := c.AckMessage(handles(got)); err != nil {
		t.Fatalf("ack over TLS: %v", err)
	}
	// Plain text is refused where it is not allowed.
	plain := mqsdk.NewAliyunMQClient("http://"+addr, testAK, testSK, "")
	if _, err := plain.GetProducer(testInstance, "t").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: "x"}); err == nil {
		t.Fatal("a plain-text publish went through a TLS-only endpoint")
	}
}

func TestPlainTextFromLoopbackBesideTLS(t *testing.T) {
	addr, _ := tlsServer(t, wiretls.Loopback)
	for _, scheme := range []string{"https", "http"} {
		client := mqsdk.NewAliyunMQClient(scheme+"://"+addr, testAK, testSK, "")
		if _, err := client.GetProducer(testInstance, "t").PublishMessage(mqsdk.PublishMessageRequest{MessageBody: scheme}); err != nil {
			t.Fatalf("publish over %s: %v", scheme, err)
		}
	}
	// A client that does not trust the certificate is refused by its own side.
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "127.0.0.1", RootCAs: nil, InsecureSkipVerify: false, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if !strings.Contains(cs.PeerCertificates[0].Subject.CommonName, "orderly") {
				return fmt.Errorf("unexpected certificate %q", cs.PeerCertificates[0].Subject.CommonName)
			}
			return nil
		}})
	if err != nil {
		t.Fatalf("TLS with the test CA in the system roots: %v", err)
	}
	conn.Close()
}
