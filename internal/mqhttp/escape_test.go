package mqhttp

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// The consume answer's escaping is written by hand for speed; encoding/xml is the
// reference the SDKs were tested against, so the two must agree byte for byte.
func FuzzEscapeMatchesEncodingXML(f *testing.F) {
	for _, s := range []string{"", "plain", `<a href="x">&'</a>`, "tab\there\r\nnew\nline", "\x00\x01\x1f",
		"héllo wörld ✓", "\xff\xfe broken", "\uFFFD", "\xef\xbf\xbd", "\U0001F600", "\ud7ff\ue000\ufffe\uffff",
		strings.Repeat("x", 1024)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want bytes.Buffer
		if err := xml.EscapeText(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		got := appendEscaped([]byte("prefix"), s)
		if !bytes.Equal(got[len("prefix"):], want.Bytes()) {
			t.Fatalf("appendEscaped(%q) = %q, encoding/xml writes %q", s, got[len("prefix"):], want.Bytes())
		}
		if n := escapedLen(s); n != want.Len() {
			t.Fatalf("escapedLen(%q) = %d, written %d", s, n, want.Len())
		}
	})
}

// A consume answer is allocated once: messagesSize covers everything but the
// properties, so a batch without them never grows its buffer.
func TestConsumeAnswerIsSizedOnce(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_123)
	var ds []broker.Delivery
	for i, body := range []string{strings.Repeat("x", 1024), "<&>\"'\t\r\n", "\xff\x00 ✓", strings.Repeat("é", 300)} {
		d := broker.Delivery{Handle: strings.Repeat("h", 40+i), ConsumedTimes: 1 << 30, NextConsumeTime: now, FirstConsumeTime: now}
		d.ID, d.BodyMD5, d.Body, d.Tag, d.StoreTime = strings.Repeat("I", 32), strings.Repeat("M", 32), []byte(body), "tag<&>"[:i], now
		ds = append(ds, d)
	}
	for n := 1; n <= len(ds); n++ {
		out := appendMessages(nil, ds[:n])
		if size := messagesSize(ds[:n], nil); len(out) > size {
			t.Fatalf("%d messages: answer of %d bytes, sized for %d", n, len(out), size)
		}
		var doc consumedMessages
		if err := xml.Unmarshal(out, &doc); err != nil || len(doc.Messages) != n {
			t.Fatalf("%d messages: answer decodes to %d (%v)\n%s", n, len(doc.Messages), err, out)
		}
		for i, m := range doc.Messages {
			if want := strings.ToValidUTF8(string(ds[i].Body), "\uFFFD"); i != 2 && m.MessageBody != want {
				t.Fatalf("message %d: body %q, sent %q", i, m.MessageBody, ds[i].Body)
			}
		}
	}
}

// Small bodies are read into recycled buffers: one serves the next request once
// its own request has been answered. Publishers at once, each reusing buffers the
// others gave back, with bodies of varying sizes: every stored body must be exactly
// the one its request carried. (Recycling a buffer before its publish has finished
// fails this test.)
func TestRecycledBodiesNeverReachStoredMessages(t *testing.T) {
	b := fuzzBroker(t) // instance MQ_INST_f, key ak/sk, topic T, HTTP group G
	h := newHandler(b, time.Now, Limits{}.withDefaults())
	const publishers, each = 8, 40
	sent := make(chan string, publishers*each)
	errs := make(chan error, publishers)
	for p := range publishers {
		go func() {
			for i := range each {
				// Sizes vary so that a short body lands in a buffer a longer one used.
				text := fmt.Sprintf("p%d-m%d-%s", p, i, strings.Repeat(string(rune('a'+(p+i)%26)), (p*each+i)*7%3000))
				xmlText := text
				if i%3 == 0 {
					xmlText = "<![CDATA[" + text + "]]>"
				}
				body := []byte("<Message><MessageBody>" + xmlText + "</MessageBody></Message>")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, signedRequest("POST", "/topics/T/messages?ns=MQ_INST_f", body, time.Now()))
				if w.Code != http.StatusCreated {
					errs <- fmt.Errorf("publish: %d %s", w.Code, w.Body.Bytes())
					return
				}
				sent <- text
			}
			errs <- nil
		}()
	}
	for range publishers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(sent)
	want := map[string]bool{}
	for s := range sent {
		want[s] = true
	}
	for len(want) > 0 {
		ds, err := b.Pop(context.Background(), "MQ_INST_f", "T", broker.PopRequest{Group: "G", Max: 16})
		if err != nil || len(ds) == 0 {
			t.Fatalf("pop: %d messages, %v; %d never delivered", len(ds), err, len(want))
		}
		for _, d := range ds {
			if !want[string(d.Body)] {
				t.Fatalf("stored body %.40q... was not sent, or was delivered twice", d.Body)
			}
			delete(want, string(d.Body))
		}
	}
}

// Consume answers are built in recycled buffers too, each given back once its
// answer is written. Consumers at once, with bodies of varying sizes, so that a
// short answer lands in a buffer a longer one used: every message arrives once,
// whole, with its own MD5. (Giving a buffer back before its answer is written
// fails this test.)
func TestRecycledAnswersAreWholeWhenWritten(t *testing.T) {
	b := fuzzBroker(t) // instance MQ_INST_f, key ak/sk, topic T, HTTP group G
	h := newHandler(b, time.Now, Limits{}.withDefaults())
	want := map[string]bool{}
	for i := range 320 {
		body := fmt.Sprintf("m%d-%s", i, strings.Repeat(string(rune('a'+i%26)), i*37%9000))
		if _, err := b.Publish(context.Background(), "MQ_INST_f", "T", broker.Message{Body: []byte(body), Queue: broker.AnyQueue}); err != nil {
			t.Fatal(err)
		}
		want[body] = true
	}
	const consumers = 8
	got := make(chan string, len(want)*2)
	errs := make(chan error, consumers)
	for range consumers {
		go func() {
			for empty := 0; empty < 3; {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, signedRequest("GET", "/topics/T/messages?ns=MQ_INST_f&consumer=G&numOfMessages=16", nil, time.Now()))
				if w.Code == http.StatusNotFound {
					empty++
					continue
				}
				var ms consumedMessages
				if err := xml.Unmarshal(w.Body.Bytes(), &ms); w.Code != http.StatusOK || err != nil {
					errs <- fmt.Errorf("consume: %d %v %.200s", w.Code, err, w.Body.Bytes())
					return
				}
				var handles []string
				for _, m := range ms.Messages {
					sum := md5.Sum([]byte(m.MessageBody))
					if strings.ToUpper(hex.EncodeToString(sum[:])) != m.MessageBodyMD5 {
						errs <- fmt.Errorf("a body of %d bytes with another's MD5: %.40q", len(m.MessageBody), m.MessageBody)
						return
					}
					got <- m.MessageBody
					handles = append(handles, "<ReceiptHandle>"+m.ReceiptHandle+"</ReceiptHandle>")
				}
				ack := []byte("<ReceiptHandles>" + strings.Join(handles, "") + "</ReceiptHandles>")
				w = httptest.NewRecorder()
				h.ServeHTTP(w, signedRequest("DELETE", "/topics/T/messages?ns=MQ_INST_f&consumer=G", ack, time.Now()))
				if w.Code != http.StatusNoContent {
					errs <- fmt.Errorf("ack: %d %s", w.Code, w.Body.Bytes())
					return
				}
			}
			errs <- nil
		}()
	}
	for range consumers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(got)
	for body := range got {
		if !want[body] {
			t.Fatalf("a body that was not sent, or came twice: %.40q", body)
		}
		delete(want, body)
	}
	if len(want) > 0 {
		t.Fatalf("%d messages never came", len(want))
	}
}
