package mqhttp

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

const (
	otherInstance = "MQ_INST_other"
	otherAK       = "other-ak"
	otherSK       = "other-sk"
)

// bodyServer runs the endpoint with the given limits over two instances: the
// tests' one and otherInstance, each with topic "t".
func bodyServer(t *testing.T, lim Limits) (string, *Server) {
	t.Helper()
	var srv *Server
	addr, b := startServer(t, broker.Limits{}, func(s *Server) { s.Limits = lim; srv = s })
	if err := b.EnsureInstance(broker.InstanceConfig{ID: otherInstance, Owner: "o2",
		Credentials: []broker.Credential{{AccessKeyID: otherAK, AccessKeySecret: otherSK}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnsureTopic(otherInstance, broker.TopicConfig{Name: "t", Owner: "o2"}); err != nil {
		t.Fatal(err)
	}
	return addr, srv
}

// publishHead is the head of a publish request to topic "t" signed with the key
// ak, sk, declaring length bytes of body.
func publishHead(addr, ak, sk string, length int) string {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/topics/t/messages", nil)
	req.Header.Set("Content-Type", "text/xml;charset=utf-8")
	req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	req.Header.Set("X-Mq-Version", "2015-06-06")
	req.RequestURI = "/topics/t/messages"
	return fmt.Sprintf("POST /topics/t/messages HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml;charset=utf-8\r\nDate: %s\r\nx-mq-version: 2015-06-06\r\nAuthorization: MQ %s:%s\r\nContent-Length: %d\r\n\r\n",
		addr, req.Header.Get("Date"), ak, encodeSignature(sign(sk, stringToSign(req))), length)
}

// publishXML is a publish body of about n bytes.
func publishXML(n int) string {
	return `<?xml version="1.0" encoding="UTF-8"?><Message xmlns="http://mq.aliyuncs.com/doc/v1/"><MessageBody>` +
		strings.Repeat("b", n) + `</MessageBody></Message>`
}

// holdBody sends a signed head declaring declared bytes and the first sent of
// them, and keeps the connection open, the rest held back.
func holdBody(t *testing.T, addr string, declared, sent int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, publishHead(addr, testAK, testSK, declared)+strings.Repeat("x", sent)); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitInUse waits until the server's body memory holds want bytes.
func waitInUse(t *testing.T, srv *Server, want func(int) bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !want(srv.memory.inUse()); {
		if time.Now().After(deadline) {
			t.Fatalf("body memory holds %d bytes; want %s", srv.memory.inUse(), what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // polling the server's counter: there is nothing to wait on
	}
}

func TestABodyDeclaredButNotSentHoldsNothing(t *testing.T) {
	addr, srv := bodyServer(t, Limits{BodyMemory: 1 << 20, TenantBodyMemory: 1 << 20, BodyWait: 300 * time.Millisecond})
	// Twenty requests declaring 20 MiB each and sending 100 bytes: before this
	// budget (and the growing buffer), 400 MiB allocated from their headers.
	for range 20 {
		holdBody(t, addr, 20<<20, 100)
	}
	body := publishXML(600 << 10)
	if status, out := roundTrip(t, addr, publishHead(addr, testAK, testSK, len(body))+body); status != http.StatusCreated {
		t.Fatalf("a 600 KiB publish beside 20 declared, unsent bodies: %d %s", status, out)
	}
	// What the publish took comes back once it has been served; the twenty hold
	// nothing.
	waitInUse(t, srv, func(n int) bool { return n == 0 }, "none for bodies that sent 100 bytes each")
}

func TestHeldBodiesTakeFromABoundedBudget(t *testing.T) {
	addr, srv := bodyServer(t, Limits{BodyMemory: 2 << 20, TenantBodyMemory: 1 << 20, BodyWait: 300 * time.Millisecond})
	// A slow upload: 700 KiB of 1000 KiB sent, the rest held back. Its buffer has
	// grown to the declared size, counted against the instance's 1 MiB.
	held := holdBody(t, addr, 1000<<10, 700<<10)
	waitInUse(t, srv, func(n int) bool { return n == 1000<<10 }, "1000 KiB")

	// Another body of the same instance finds its share taken: answered with
	// throttling once it has waited BodyWait, not held until the upload ends.
	body := publishXML(600 << 10)
	start := time.Now()
	status, out := roundTrip(t, addr, publishHead(addr, testAK, testSK, len(body))+body)
	if status != http.StatusServiceUnavailable || !strings.Contains(out, "Throttling") {
		t.Fatalf("a 600 KiB publish while the instance's share is held: %d %s", status, out)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("answered after %v", waited)
	}
	// A small message of the same instance needs none of it.
	small := publishXML(1 << 10)
	if status, out := roundTrip(t, addr, publishHead(addr, testAK, testSK, len(small))+small); status != http.StatusCreated {
		t.Fatalf("a 1 KiB publish while the instance's share is held: %d %s", status, out)
	}
	// Another instance has the rest of the server's budget.
	if status, out := roundTrip(t, addr, publishHead(addr, otherAK, otherSK, len(body))+body); status != http.StatusCreated {
		t.Fatalf("another instance's 600 KiB publish: %d %s", status, out)
	}

	// Once the upload goes, its memory comes back and the publish goes through.
	held.Close()
	waitInUse(t, srv, func(n int) bool { return n == 0 }, "none")
	if status, out := roundTrip(t, addr, publishHead(addr, testAK, testSK, len(body))+body); status != http.StatusCreated {
		t.Fatalf("the 600 KiB publish once the upload has gone: %d %s", status, out)
	}
	waitInUse(t, srv, func(n int) bool { return n == 0 }, "none once served")
}

func TestABodyLargerThanTheBudgetIsReadAlone(t *testing.T) {
	addr, srv := bodyServer(t, Limits{BodyMemory: 256 << 10, TenantBodyMemory: 256 << 10, BodyWait: 300 * time.Millisecond})
	body := publishXML(1 << 20)
	if status, out := roundTrip(t, addr, publishHead(addr, testAK, testSK, len(body))+body); status != http.StatusCreated {
		t.Fatalf("a 1 MiB publish with a 256 KiB budget and nothing else in use: %d %s", status, out)
	}
	waitInUse(t, srv, func(n int) bool { return n == 0 }, "none once served")
}
