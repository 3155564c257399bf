package mqhttp

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Fuzz targets of what consumers send: the query parameters of a consume and the
// receipt handles of an ack, a commit or a rollback.

const fuzzInstance = "MQ_INST_f"

// consumedMessages is a consume answer as the SDKs decode it: every field they
// read, the numbers as numbers.
type consumedMessages struct {
	XMLName  xml.Name `xml:"Messages"`
	Messages []struct {
		MessageID        string `xml:"MessageId"`
		ReceiptHandle    string `xml:"ReceiptHandle"`
		MessageBodyMD5   string `xml:"MessageBodyMD5"`
		MessageBody      string `xml:"MessageBody"`
		PublishTime      int64  `xml:"PublishTime"`
		FirstConsumeTime int64  `xml:"FirstConsumeTime"`
		NextConsumeTime  int64  `xml:"NextConsumeTime"`
		ConsumedTimes    int64  `xml:"ConsumedTimes"`
		MessageTag       string `xml:"MessageTag"`
		Properties       string `xml:"Properties"`
	} `xml:"Message"`
}

// wantPop is the pop a consume request asks for, read from the protocol's rules
// rather than from the handler: numOfMessages a decimal integer of at least 1,
// clamped to 16; waitseconds absent or a decimal integer of at least 0, clamped
// to 30; the invisibility header absent or 1 to 43200 seconds; a consumer; trans
// empty, order or pop; ns absent or the key's instance; a tag filter the broker
// parses. ok is false when the request is to be refused. The invisibility header
// is checked on a pop of check-backs too, and has nothing to set there.
func wantPop(rawQuery, invisible string) (want popCall, ok bool) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return want, false
	}
	if ns := q.Get("ns"); ns != "" && ns != fuzzInstance {
		return want, false
	}
	trans := q.Get("trans")
	if trans != "" && trans != "order" && trans != "pop" {
		return want, false
	}
	want.half, want.req.Orderly = trans == "pop", trans == "order"
	want.group = q.Get("consumer")
	want.req.Group = want.group
	if want.group == "" {
		return want, false
	}
	n, err := strconv.ParseInt(q.Get("numOfMessages"), 10, 64)
	if err != nil || n < 1 {
		return want, false
	}
	want.req.Max = int(min(n, broker.MaxPopMessages))
	if v := q.Get("waitseconds"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil || s < 0 {
			return want, false
		}
		want.req.Wait = time.Duration(min(s, 30)) * time.Second
	}
	if invisible != "" {
		s, err := strconv.ParseInt(invisible, 10, 64)
		if err != nil || s < 1 || s > 43200 {
			return want, false
		}
		if !want.half { // a check-back has no invisibility to set
			want.req.Invisibility = time.Duration(s) * time.Second
		}
	}
	if !want.half {
		if _, err := broker.ParseTagFilter(q.Get("tag")); err != nil {
			return want, false
		}
	}
	return want, true
}

// tagMatches reports whether a message with tag matches the subscription
// expression: "*" or empty for all, else tags joined by "||".
func tagMatches(expr, tag string) bool {
	for _, t := range strings.Split(strings.TrimSpace(expr), "||") {
		if t = strings.TrimSpace(t); t == "*" || t == tag {
			return true
		}
	}
	return strings.TrimSpace(expr) == ""
}

// FuzzConsumeQuery fuzzes a consume's query string and invisibility header on
// four topics (normal, ordered, transactional, missing) that have messages to
// hand out. It asserts that the broker is asked for exactly the pop the
// protocol's rules read from the request (count, wait, invisibility, group,
// orderly or half), and for none when the request is to be refused, which then
// answers a 400 of the protocol's; and that a 200 holds 1 to the asked-for count
// of messages, each with every field the SDKs read, the body matching its MD5 and
// the tag matching the filter.
func FuzzConsumeQuery(f *testing.F) {
	s := fuzzSpy(f)
	h := newHandler(s, time.Now, Limits{}.withDefaults())
	for _, q := range []string{
		"consumer=G&numOfMessages=3",
		"consumer=G&ns=MQ_INST_f&numOfMessages=16&waitseconds=30",
		"consumer=G&numOfMessages=1&waitseconds=3&tag=A",
		"consumer=G&numOfMessages=5&tag=A%7C%7CB",
		"consumer=G&numOfMessages=5&tag=A||C",
		"consumer=G&trans=order&numOfMessages=3",
		"consumer=G&trans=order&ns=MQ_INST_f&numOfMessages=16&waitseconds=1",
		"consumer=G&trans=pop&ns=MQ_INST_f&numOfMessages=3&waitseconds=3",
		"consumer=G&numOfMessages=undefined",
		"consumer=G&numOfMessages=32",
		"consumer=G&numOfMessages=1&waitseconds=4294967296",
		"consumer=G&numOfMessages=9223372036854775807&waitseconds=99999999999",
		"consumer=&numOfMessages=1",
		"consumer=GX&numOfMessages=1",
		"numOfMessages=1&consumer=G&ns=MQ_INST_g",
		"consumer=G&numOfMessages=1&trans=commit",
		"consumer=G;numOfMessages=1",
		"consumer=G&numOfMessages=1&tag=%zz",
	} {
		for topic := range uint8(4) {
			f.Add(topic, q, "")
		}
	}
	f.Add(uint8(0), "consumer=G&numOfMessages=1", "60")
	f.Add(uint8(1), "consumer=G&trans=order&numOfMessages=1", "43200")
	f.Add(uint8(0), "consumer=G&numOfMessages=1", "43201")
	f.Add(uint8(0), "consumer=G&numOfMessages=1", "0")
	f.Add(uint8(0), "consumer=G&numOfMessages=1", "99999999999")
	ctx := context.Background()
	published := 0
	f.Fuzz(func(t *testing.T, topicSel uint8, rawQuery, invisible string) {
		topic := [...]string{"T", "O", "X", "missing"}[topicSel%4]
		if strings.ContainsAny(invisible, "\r\n\x00") {
			return
		}
		invisible = strings.Trim(invisible, " \t")
		r := sdkRequest(http.MethodGet, "/topics/"+topic+"/messages?"+rawQuery, sdkMD5(nil), fuzzSecret, time.Now())
		if r == nil || r.URL.RawQuery != rawQuery {
			return
		}
		if invisible != "" {
			r.Header.Set(InvisibleSecondsHeader, invisible)
			r.Header.Set("Authorization", "MQ ak:"+encodeSignature(sign(fuzzSecret, stringToSign(r))))
		}
		// Something to consume: one message more for each consume, whatever it
		// takes.
		if topic == "T" || topic == "O" {
			tag := [...]string{"A", "B", ""}[published%3]
			if _, err := s.Broker.Publish(ctx, fuzzInstance, topic, broker.Message{Body: []byte("m <&> " + tag), Tag: tag,
				Properties: map[string]string{"p": "1"}, Keys: []string{"k"}, Queue: broker.AnyQueue}); err != nil {
				t.Fatal(err)
			}
			published++
		}
		s.takePops()
		before := s.snapshot()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		ans := checkAnswer(t, w.Code, w.Header(), w.Body.Bytes())
		pops := s.takePops()

		want, ok := wantPop(rawQuery, invisible)
		if !ok {
			if code := ans.code(); code != "InvalidQueryString" && code != "AccessDenied" && code != "InvalidArgument" {
				t.Fatalf("a request to refuse answered %d %s", w.Code, w.Body.Bytes())
			}
			if len(pops) != 0 || s.snapshot().effects != before.effects {
				t.Fatalf("a request to refuse reached the broker: %+v", pops)
			}
			return
		}
		if len(pops) != 1 {
			t.Fatalf("%d pops for one consume (%d %s)", len(pops), w.Code, w.Body.Bytes())
		}
		got := pops[0]
		if got.half != want.half || got.group != want.group || got.req.Max != want.req.Max || got.req.Wait != want.req.Wait ||
			got.req.Orderly != want.req.Orderly || got.req.Invisibility != want.req.Invisibility {
			t.Fatalf("popped %+v, want %+v", got, want)
		}
		if w.Code != http.StatusOK {
			return
		}
		var doc consumedMessages
		if err := xml.Unmarshal(w.Body.Bytes(), &doc); err != nil {
			t.Fatalf("a 200 the SDKs cannot read: %v\n%s", err, w.Body.Bytes())
		}
		if n := len(doc.Messages); n < 1 || n > want.req.Max {
			t.Fatalf("%d messages for numOfMessages %d", n, want.req.Max)
		}
		q, _ := url.ParseQuery(rawQuery)
		var handles []string
		for _, m := range doc.Messages {
			sum := md5.Sum([]byte(m.MessageBody))
			if m.MessageID == "" || m.ReceiptHandle == "" || m.MessageBodyMD5 != strings.ToUpper(hex.EncodeToString(sum[:])) ||
				m.PublishTime <= 0 || m.FirstConsumeTime <= 0 || m.NextConsumeTime <= 0 || m.ConsumedTimes < 1 {
				t.Fatalf("message %+v", m)
			}
			if !want.half && !tagMatches(q.Get("tag"), m.MessageTag) {
				t.Fatalf("tag %q delivered for filter %q", m.MessageTag, q.Get("tag"))
			}
			handles = append(handles, m.ReceiptHandle)
		}
		if !want.half {
			errs, err := s.Broker.Ack(fuzzInstance, topic, want.group, handles)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range errs {
				if err != nil {
					t.Fatalf("a handle just handed out does not ack: %v", err)
				}
			}
		}
	})
}

// FuzzAck fuzzes the body of an ack (trans%3 == 0), a commit (1) or a rollback
// (2), in which $H stands for a handle the broker just handed out and $P for the
// one before it, now acknowledged or resolved; consumer%3 picks the consumer
// parameter: the group, none, a group that does not exist. It decodes the body
// with encoding/xml as the oracle and asserts:
//   - a body that is not XML is 400 MalformedXML, and 0 or more than 16 handles
//     400 InvalidArgument, with no broker operation;
//   - otherwise the answer is 204, or 404 with an <Errors> list naming exactly the
//     handles that failed, in order: every handle but the first occurrence of the
//     live one;
//   - the live handle is acknowledged or resolved exactly when the request said
//     so, and by nothing else.
func FuzzAck(f *testing.F) {
	s := fuzzSpy(f)
	h := newHandler(s, time.Now, Limits{}.withDefaults())
	for _, body := range []string{
		`<?xml version="1.0" encoding="UTF-8"?><ReceiptHandles><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles xmlns="http://mq.aliyuncs.com/doc/v1/"><ReceiptHandle>$H</ReceiptHandle><ReceiptHandle>$P</ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles><ReceiptHandle>$H</ReceiptHandle><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles><ReceiptHandle>1AB</ReceiptHandle><ReceiptHandle></ReceiptHandle><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles><ReceiptHandle> $H </ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles><ReceiptHandle><![CDATA[$H]]></ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles></ReceiptHandles>`,
		`<ReceiptHandles>` + strings.Repeat(`<ReceiptHandle>$P</ReceiptHandle>`, 16) + `<ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`,
		`<ReceiptHandles><!-- c --><ReceiptHandle>$H</ReceiptHandle><Other/></ReceiptHandles>`,
		`<Other><ReceiptHandle>$H</ReceiptHandle></Other>`,
		`<ReceiptHandles><ReceiptHandle>$H`,
		`T0000000100000000000000010123456789ABCDEF00000194B1F1C4A0`,
	} {
		for trans := range uint8(3) {
			f.Add(trans, uint8(0), []byte(body))
		}
	}
	f.Add(uint8(0), uint8(1), []byte(`<ReceiptHandles><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`))
	f.Add(uint8(0), uint8(2), []byte(`<ReceiptHandles><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`))
	f.Add(uint8(1), uint8(1), []byte(`<ReceiptHandles><ReceiptHandle>$H</ReceiptHandle></ReceiptHandles>`))
	ctx := context.Background()
	prev := map[bool]string{} // none before the first
	f.Fuzz(func(t *testing.T, trans, consumerSel uint8, template []byte) {
		trans %= 3
		txn := trans != 0
		topic, transParam := "T", ""
		var live string
		if txn {
			topic, transParam = "X", [...]string{1: "&trans=commit", 2: "&trans=rollback"}[trans]
			res, err := s.Broker.Publish(ctx, fuzzInstance, "X", broker.Message{Body: []byte("half"), Queue: broker.AnyQueue,
				Transactional: true, CheckImmunity: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			live = res.TxnHandle
		} else {
			if _, err := s.Broker.Publish(ctx, fuzzInstance, "T", broker.Message{Body: []byte("m"), Queue: broker.AnyQueue}); err != nil {
				t.Fatal(err)
			}
			ds, err := s.Broker.Pop(ctx, fuzzInstance, "T", broker.PopRequest{Group: "G", Max: 1})
			if err != nil || len(ds) != 1 {
				t.Fatalf("no message to acknowledge: %v", err)
			}
			live = ds[0].Handle
		}
		body := bytes.ReplaceAll(bytes.ReplaceAll(template, []byte("$H"), []byte(live)), []byte("$P"), []byte(prev[txn]))
		consumer := [...]string{"G", "", "GX"}[consumerSel%3]
		r := sdkRequest(http.MethodDelete, "/topics/"+topic+"/messages?consumer="+consumer+"&ns="+fuzzInstance+transParam, sdkMD5(body), fuzzSecret, time.Now())
		r.Body, r.ContentLength = &countingReader{r: bytes.NewReader(body)}, int64(len(body))
		before := s.snapshot()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		ans := checkAnswer(t, w.Code, w.Header(), w.Body.Bytes())

		// Was the live handle taken? Resolve it now if not: exactly one of the
		// request and this may succeed.
		var taken bool
		if txn {
			err := s.Broker.EndTransaction(fuzzInstance, "X", live, false)
			taken = err != nil
			if err != nil && err != broker.ErrHandleExpired {
				t.Fatalf("resolving the live handle: %v", err)
			}
		} else {
			errs, err := s.Broker.Ack(fuzzInstance, "T", "G", []string{live})
			if err != nil {
				t.Fatal(err)
			}
			taken = errs[0] != nil
		}
		used := prev[txn]
		prev[txn] = live

		var doc handlesBody
		refuse := ""
		switch err := xml.Unmarshal(body, &doc); {
		case err != nil:
			refuse = "MalformedXML"
		case len(doc.Handles) == 0 || len(doc.Handles) > maxHandles:
			refuse = "InvalidArgument"
		case !txn && consumer == "":
			refuse = "InvalidArgument"
		case !txn && consumer == "GX":
			refuse = "SubscriptionNotExist"
		}
		if refuse != "" {
			if ans.code() != refuse || taken {
				t.Fatalf("want %s and the live handle untouched; got %d %s (taken: %v)", refuse, w.Code, w.Body.Bytes(), taken)
			}
			if refuse != "SubscriptionNotExist" && s.snapshot().effects != before.effects {
				t.Fatalf("refused with %s, yet reached the broker", refuse)
			}
			return
		}
		var wantFailed []string
		seenLive := false
		for _, h := range doc.Handles {
			switch {
			case h == live && !seenLive:
				seenLive = true
			case h == "":
				wantFailed = append(wantFailed, "(empty)")
			default:
				wantFailed = append(wantFailed, h)
			}
		}
		if taken != seenLive {
			t.Fatalf("live handle in the request: %v; taken by it: %v (%d %s)", seenLive, taken, w.Code, w.Body.Bytes())
		}
		if len(wantFailed) == 0 {
			if w.Code != http.StatusNoContent {
				t.Fatalf("every handle good, answer %d %s", w.Code, w.Body.Bytes())
			}
			return
		}
		if ans == nil || len(ans.Errors) != len(wantFailed) {
			t.Fatalf("want the failed handles %q, got %d %s", wantFailed, w.Code, w.Body.Bytes())
		}
		for i, e := range ans.Errors {
			if e.Handle != wantFailed[i] {
				t.Fatalf("failed handle %d: %q, want %q", i, e.Handle, wantFailed[i])
			}
			if (e.Handle == live || used != "" && e.Handle == used) && e.Code != "MessageNotExist" {
				t.Fatalf("a handle already used answered %s", e.Code)
			}
		}
	})
}
