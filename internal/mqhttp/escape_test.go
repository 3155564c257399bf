package mqhttp

import (
	"bytes"
	"encoding/xml"
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
		if size := messagesSize(ds[:n]); len(out) > size {
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
