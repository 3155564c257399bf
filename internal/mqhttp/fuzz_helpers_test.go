package mqhttp

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"io"
	"net/http"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Helpers of the fuzz targets: a broker that tells what reached it, the protocol's
// error codes with their statuses, and a measure of the memory a call allocated.

// errorStatuses is every code the endpoint answers with, and the statuses it
// comes with: the protocol's own set, as the SDKs branch on it. InternalError is
// left out on purpose: nothing a client sends may make the endpoint fail.
var errorStatuses = map[string][]int{
	"InvalidRequestURL":          {http.StatusNotFound},
	"MissingAuthorizationHeader": {http.StatusForbidden},
	"InvalidAuthorizationHeader": {http.StatusForbidden},
	"InvalidAccessKeyId":         {http.StatusForbidden},
	"SignatureDoesNotMatch":      {http.StatusForbidden},
	"AccessDenied":               {http.StatusForbidden},
	"MissingDateHeader":          {http.StatusBadRequest},
	"InvalidDateHeader":          {http.StatusBadRequest},
	"TimeExpired":                {http.StatusRequestTimeout},
	"InvalidArgument":            {http.StatusBadRequest, http.StatusRequestEntityTooLarge},
	"MissingContentLength":       {http.StatusLengthRequired},
	"InvalidDigest":              {http.StatusBadRequest},
	"InvalidQueryString":         {http.StatusBadRequest},
	"MalformedXML":               {http.StatusBadRequest},
	"MessageNotExist":            {http.StatusNotFound},
	"ReceiptHandleError":         {http.StatusNotFound},
	"TopicNotExist":              {http.StatusNotFound},
	"SubscriptionNotExist":       {http.StatusNotFound},
	"InstanceNotExist":           {http.StatusNotFound},
	"Throttling":                 {http.StatusServiceUnavailable},
	"ServiceUnavailable":         {http.StatusServiceUnavailable},
	"TooManyConnections":         {http.StatusServiceUnavailable},
}

// authCodes are the answers of a request that failed authentication.
var authCodes = map[string]bool{
	"MissingAuthorizationHeader": true, "InvalidAuthorizationHeader": true, "InvalidAccessKeyId": true,
	"SignatureDoesNotMatch": true, "MissingDateHeader": true, "InvalidDateHeader": true, "TimeExpired": true,
}

// errorAnswer is an error answer as the SDKs decode it: one <Error>, or the
// <Errors> list of an ack.
type errorAnswer struct {
	XMLName   xml.Name
	Code      *string `xml:"Code"`
	Message   *string `xml:"Message"`
	RequestID *string `xml:"RequestId"`
	HostID    *string `xml:"HostId"`
	Errors    []struct {
		Code    string `xml:"ErrorCode"`
		Message string `xml:"ErrorMessage"`
		Handle  string `xml:"ReceiptHandle"`
	} `xml:"Error"`
}

// checkAnswer asserts that an answer of the handler is one every SDK reads: the
// lowercase request id, and for an error a text/xml document in the protocol's
// namespace whose code is one of the protocol's, with that code's status. It
// returns the decoded error (nil for a success).
func checkAnswer(t *testing.T, status int, header http.Header, body []byte) *errorAnswer {
	t.Helper()
	ids := header["x-mq-request-id"]
	if len(ids) != 1 || len(ids[0]) != 24 {
		t.Fatalf("%d without one lowercase x-mq-request-id: %v", status, header)
	}
	if status < 400 {
		return nil
	}
	if ct := header.Get("Content-Type"); ct != "text/xml;charset=utf-8" {
		t.Fatalf("error %d with Content-Type %q", status, ct)
	}
	var doc errorAnswer
	if err := xml.Unmarshal(body, &doc); err != nil {
		t.Fatalf("error body is not XML: %v\n%s", err, body)
	}
	if doc.XMLName.Space != xmlNamespace {
		t.Fatalf("error root %v: the Java SDK needs namespace %s", doc.XMLName, xmlNamespace)
	}
	switch doc.XMLName.Local {
	case "Error":
		if doc.Code == nil || doc.Message == nil || doc.RequestID == nil || doc.HostID == nil {
			t.Fatalf("<Error> without its four children: %s", body)
		}
		if *doc.RequestID != ids[0] {
			t.Fatalf("RequestId %q, header %q", *doc.RequestID, ids[0])
		}
		statuses, ok := errorStatuses[*doc.Code]
		if !ok {
			t.Fatalf("code %q is none of the protocol's (status %d): %s", *doc.Code, status, body)
		}
		if !containsInt(statuses, status) {
			t.Fatalf("code %q with status %d, want one of %v", *doc.Code, status, statuses)
		}
	case "Errors":
		if status != http.StatusNotFound || len(doc.Errors) == 0 {
			t.Fatalf("<Errors> with status %d and %d entries: %s", status, len(doc.Errors), body)
		}
		for _, e := range doc.Errors {
			if (e.Code != "MessageNotExist" && e.Code != "ReceiptHandleError") || e.Message == "" || e.Handle == "" {
				t.Fatalf("<Errors> entry %+v", e)
			}
		}
	default:
		t.Fatalf("error body root %q", doc.XMLName.Local)
	}
	return &doc
}

// code is the answer's single error code, or "" for a success or an <Errors> list.
func (a *errorAnswer) code() string {
	if a == nil || a.Code == nil {
		return ""
	}
	return *a.Code
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// spyBroker passes every call to a real broker and counts the ones made past
// authentication. Pops do not wait: what a fuzz target checks is the request the
// endpoint decoded, which the spy records.
type spyBroker struct {
	*broker.Broker
	calls   atomic.Int64 // every call but LookupAccessKey
	effects atomic.Int64 // Publish, Pop, PopHalf, Ack, EndTransaction
	held    atomic.Int64 // connection slots acquired and not released

	mu   sync.Mutex
	pops []popCall
}

type popCall struct {
	half  bool
	group string
	req   broker.PopRequest // Max and Wait as asked, for PopHalf too
}

func (s *spyBroker) Publish(ctx context.Context, instanceID, topic string, msg broker.Message) (broker.PublishResult, error) {
	s.calls.Add(1)
	s.effects.Add(1)
	return s.Broker.Publish(ctx, instanceID, topic, msg)
}

func (s *spyBroker) Pop(ctx context.Context, instanceID, topic string, req broker.PopRequest) ([]broker.Delivery, error) {
	s.calls.Add(1)
	s.effects.Add(1)
	s.mu.Lock()
	s.pops = append(s.pops, popCall{group: req.Group, req: req})
	s.mu.Unlock()
	req.Wait = 0
	return s.Broker.Pop(ctx, instanceID, topic, req)
}

func (s *spyBroker) PopHalf(ctx context.Context, instanceID, topic, group string, max int, wait time.Duration) ([]broker.Delivery, error) {
	s.calls.Add(1)
	s.effects.Add(1)
	s.mu.Lock()
	s.pops = append(s.pops, popCall{half: true, group: group, req: broker.PopRequest{Group: group, Max: max, Wait: wait}})
	s.mu.Unlock()
	return s.Broker.PopHalf(ctx, instanceID, topic, group, max, 0)
}

func (s *spyBroker) Ack(instanceID, topic, group string, handles []string) ([]error, error) {
	s.calls.Add(1)
	s.effects.Add(1)
	return s.Broker.Ack(instanceID, topic, group, handles)
}

func (s *spyBroker) EndTransaction(instanceID, topic, handle string, commit bool) error {
	s.calls.Add(1)
	s.effects.Add(1)
	return s.Broker.EndTransaction(instanceID, topic, handle, commit)
}

func (s *spyBroker) AcquireConnection(instanceID string) (func(), error) {
	s.calls.Add(1)
	release, err := s.Broker.AcquireConnection(instanceID)
	if err != nil {
		return nil, err
	}
	s.held.Add(1)
	return func() { s.held.Add(-1); release() }, nil
}

// takePops returns and forgets the pops recorded so far.
func (s *spyBroker) takePops() []popCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pops
	s.pops = nil
	return p
}

// snapshot is the spy's counters at one moment.
type snapshot struct{ calls, effects int64 }

func (s *spyBroker) snapshot() snapshot { return snapshot{s.calls.Load(), s.effects.Load()} }

// fuzzSpy is fuzzBroker behind a spy, with an ordered topic "O" besides.
func fuzzSpy(f *testing.F) *spyBroker {
	b := fuzzBroker(f)
	if _, err := b.EnsureTopic("MQ_INST_f", broker.TopicConfig{Name: "O", Owner: "o", Type: broker.Ordered, Queues: 1}); err != nil {
		f.Fatal(err)
	}
	if _, err := b.EnsureTopic("MQ_INST_f", broker.TopicConfig{Name: "X", Owner: "o", Type: broker.Transactional, Queues: 1}); err != nil {
		f.Fatal(err)
	}
	return &spyBroker{Broker: b}
}

// sdkMD5 is the Content-MD5 the SDKs send: base64 of the lowercase hex digest.
func sdkMD5(body []byte) string {
	sum := md5.Sum(body)
	return base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum[:])))
}

// countingReader counts what the handler reads of a body.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return nil }

// allocated returns the bytes the process has allocated on the heap so far. It
// counts small objects a span at a time, so differences are exact for large
// allocations and within about a megabyte otherwise.
func allocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
