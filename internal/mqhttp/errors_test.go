package mqhttp

import (
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/orderly-dev/orderly/internal/broker"
)

// TestWriteErrorShape pins the details the SDKs depend on: the lowercase request-id
// header (Python and Java read it case-sensitively), the text/xml content type (Node
// parses nothing else), the exact namespace (Java's JAXB), and all four children
// (Python's decoder).
func TestWriteErrorShape(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "http://mq.example:9880/topics/t/messages", nil)
	writeError(rec, req, "REQ123", &Error{Status: http.StatusNotFound, Code: "MessageNotExist", Message: "Message not exist."})
	res := rec.Result()

	if res.StatusCode != http.StatusNotFound {
		t.Errorf("status = %d", res.StatusCode)
	}
	if got := res.Header["x-mq-request-id"]; len(got) != 1 || got[0] != "REQ123" {
		t.Errorf("lowercase x-mq-request-id header = %v (headers %v)", got, res.Header)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/xml") {
		t.Errorf("Content-Type = %q", ct)
	}
	body, _ := io.ReadAll(res.Body)
	var doc struct {
		XMLName   xml.Name
		Code      *string `xml:"Code"`
		Message   *string `xml:"Message"`
		RequestID *string `xml:"RequestId"`
		HostID    *string `xml:"HostId"`
	}
	if err := xml.Unmarshal(body, &doc); err != nil {
		t.Fatalf("body is not XML: %v\n%s", err, body)
	}
	if doc.XMLName.Space != "http://mq.aliyuncs.com/doc/v1" || doc.XMLName.Local != "Error" {
		t.Errorf("root = %v", doc.XMLName)
	}
	if doc.Code == nil || doc.Message == nil || doc.RequestID == nil || doc.HostID == nil {
		t.Fatalf("missing children in %s", body)
	}
	if *doc.Code != "MessageNotExist" || *doc.RequestID != "REQ123" || *doc.HostID != "http://mq.example:9880" {
		t.Errorf("decoded %+v", doc)
	}
}

func TestRequestIDsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newRequestID()
		if len(id) != 24 || strings.ToUpper(id) != id || seen[id] {
			t.Fatalf("bad or repeated request id %q", id)
		}
		seen[id] = true
	}
}

func TestThrottlingIsA503TheSDKsRetry(t *testing.T) {
	e := brokerError(fmt.Errorf("%w: too much in flight", broker.ErrThrottled))
	if e.Status != http.StatusServiceUnavailable || e.Code != "Throttling" || !strings.Contains(e.Message, "too much in flight") {
		t.Fatalf("throttled: %+v", e)
	}
}
