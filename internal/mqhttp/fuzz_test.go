package mqhttp

import (
	"bytes"
	"context"
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// fuzzBroker is an in-memory broker with one instance and topic, shared by a fuzz
// run: requests that pass authentication must reach real broker code.
func fuzzBroker(tb testing.TB) *broker.Broker {
	b, err := broker.Open(broker.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	_ = b.EnsureInstance(broker.InstanceConfig{ID: "MQ_INST_f", Owner: "o", Credentials: []broker.Credential{{AccessKeyID: "ak", AccessKeySecret: "sk"}}})
	_, _ = b.EnsureTopic("MQ_INST_f", broker.TopicConfig{Name: "T", Owner: "o", Type: broker.Normal, Queues: 2})
	_, _ = b.EnsureGroup("MQ_INST_f", broker.GroupConfig{ID: "G", Protocol: broker.HTTP, Owner: "o"})
	return b
}

// signedRequest builds a request the way the Go SDK does, correctly signed, so the
// fuzzer explores past authentication.
// It returns nil for a method or target net/http would never hand a handler.
func signedRequest(method, target string, body []byte, date time.Time) *http.Request {
	r, err := http.NewRequest(method, "http://mq.local"+target, bytes.NewReader(body))
	if err != nil || !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n\t#") {
		return nil
	}
	r.RequestURI = target
	r.Header.Set("Date", date.UTC().Format(http.TimeFormat))
	r.Header.Set("x-mq-version", "2015-06-06")
	r.Header.Set("Content-Type", "text/xml;charset=utf-8")
	r.Header.Set("Authorization", "MQ ak:"+encodeSignature(sign("sk", stringToSign(r))))
	return r
}

// FuzzServe sends arbitrary methods, request-targets and bodies, signed, through
// the whole handler: it must never panic and must always answer with a status and,
// for an error, a well-formed XML <Error> with a Code.
func FuzzServe(f *testing.F) {
	b := fuzzBroker(f)
	h := newHandler(b, time.Now, Limits{}.withDefaults())
	f.Add("POST", "/topics/T/messages", []byte(`<Message><MessageBody>hi</MessageBody><MessageTag>A</MessageTag><Properties>a:1|KEYS:k|</Properties></Message>`))
	f.Add("POST", "/topics/T/messages?ns=MQ_INST_f", []byte(`<?xml version="1.0"?><Message xmlns="http://mq.aliyuncs.com/doc/v1/"><Properties><![CDATA[__TransCheckT:10]]></Properties><MessageBody><![CDATA[x<y]]></MessageBody></Message>`))
	f.Add("GET", "/topics/T/messages?consumer=G&numOfMessages=3&tag=A%7C%7CB", []byte(nil))
	f.Add("GET", "/topics/T/messages?consumer=G&trans=order&numOfMessages=undefined", []byte(nil))
	f.Add("DELETE", "/topics/T/messages?consumer=G", []byte(`<ReceiptHandles><ReceiptHandle>1AB</ReceiptHandle></ReceiptHandles>`))
	f.Add("DELETE", "/topics/T/messages?consumer=&trans=commit", []byte(`<ReceiptHandles><ReceiptHandle>T00</ReceiptHandle></ReceiptHandles>`))
	f.Add("PUT", "/other", []byte("garbage"))
	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		r := signedRequest(method, target, body, time.Now())
		if r == nil {
			return
		}
		// Long polls end fast: a cancelled one must still answer well-formed.
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Millisecond)
		defer cancel()
		r = r.WithContext(ctx)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		checkResponse(t, w)
	})
}

// FuzzHeaders keeps a valid request but fuzzes the authentication headers.
func FuzzHeaders(f *testing.F) {
	b := fuzzBroker(f)
	h := newHandler(b, time.Now, Limits{}.withDefaults())
	f.Add("MQ ak:abc=", "Sat, 21 Nov 2026 09:44:30 GMT", "ZDQxZDhjZDk4ZjAwYjIwNGU5ODAwOTk4ZWNmODQyN2U=")
	f.Add("", "", "")
	f.Add("MQ :", "not a date", "%%%")
	f.Fuzz(func(t *testing.T, auth, date, md5 string) {
		r := httptest.NewRequest("GET", "/topics/T/messages?consumer=G&numOfMessages=1", nil)
		r.Header.Set("Authorization", auth)
		r.Header.Set("Date", date)
		r.Header.Set("Content-MD5", md5)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code < 400 {
			t.Fatalf("unsigned request accepted: %d", w.Code)
		}
		checkResponse(t, w)
	})
}

// checkResponse asserts the answer is one the SDKs can read, with a code and
// status of the protocol's.
func checkResponse(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	checkAnswer(t, w.Code, w.Header(), w.Body.Bytes())
}

// FuzzParsePublish feeds arbitrary publish bodies to the parser.
func FuzzParsePublish(f *testing.F) {
	f.Add([]byte(`<Message><MessageBody>b2</MessageBody><Properties>a:1|KEYS:key1|__STARTDELIVERTIME:1609826458000|__SHARDINGKEY:sk1|</Properties></Message>`))
	f.Add([]byte(`<Message><MessageBody></MessageBody><MessageTag/></Message>`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, e := parsePublish(body, time.Now())
		if e == nil && len(m.Body) == 0 {
			t.Fatal("accepted an empty body")
		}
		if e != nil && (e.Code == "" || e.Status < 400) {
			t.Fatalf("malformed error %+v", e)
		}
	})
}

// FuzzFlatXML checks the fast parser against encoding/xml: wherever the fast path
// answers, encoding/xml must read the same document the same way.
func FuzzFlatXML(f *testing.F) {
	for _, seed := range []string{
		`<Message><MessageBody>hello &lt;&amp;&gt; world&#xA;</MessageBody><MessageTag>TagA</MessageTag></Message>`,
		`<?xml version="1.0" encoding="UTF-8" standalone="no"?><Message xmlns="http://mq.aliyuncs.com/doc/v1"><MessageBody>b</MessageBody><MessageTag/><Properties>a:1|</Properties></Message>`,
		`<?xml version="1.0" encoding="utf-8"?><Message xmlns="http://mq.aliyuncs.com/doc/v1/"><MessageBody><![CDATA[a<b>&c]]></MessageBody><Properties><![CDATA[k:v]]></Properties></Message>`,
		"<ReceiptHandles>\n <ReceiptHandle>h1</ReceiptHandle>\r\n<ReceiptHandle>h2</ReceiptHandle></ReceiptHandles>",
		`<x:Message xmlns:x="u"><x:MessageBody>p</x:MessageBody></x:Message>`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		root, children, ok := parseFlat(doc)
		if !ok {
			return
		}
		var generic struct {
			XMLName  xml.Name
			Children []struct {
				XMLName xml.Name
				Text    string `xml:",chardata"`
			} `xml:",any"`
		}
		if err := xml.NewDecoder(bytes.NewReader(doc)).Decode(&generic); err != nil {
			t.Fatalf("fast path accepted what encoding/xml refuses (%v): %q", err, doc)
		}
		if generic.XMLName.Local != root || len(generic.Children) != len(children) {
			t.Fatalf("fast %q %+v, encoding/xml %+v, for %q", root, children, generic, doc)
		}
		for i, c := range children {
			if g := generic.Children[i]; g.XMLName.Local != c.name || g.Text != c.text {
				t.Fatalf("child %d: fast %+v, encoding/xml %+v, for %q", i, c, g, doc)
			}
		}
	})
}
