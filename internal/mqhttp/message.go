package mqhttp

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Reserved property keys: the four the SDKs set through their own methods. They
// travel inside Properties both ways; the broker keeps them as message fields, so a
// message published over TCP shows them too.
const (
	propKeys           = "KEYS"
	propStartDeliver   = "__STARTDELIVERTIME"
	propTransCheckTime = "__TransCheckT"
	propShardingKey    = "__SHARDINGKEY"
)

// maxPropertiesText bounds the Properties text before it is parsed into a map,
// which costs some ten times the text. Every message the broker accepts fits:
// its properties, keys and sharding key within broker.MaxPropertiesSize, plus the
// reserved names, the delivery and check times and the separators, well under
// 1 KiB.
const maxPropertiesText = broker.MaxPropertiesSize + 1<<10

// Transactional check immunity bounds, from the SDKs' documentation.
const (
	minTransCheck = 10 * time.Second
	maxTransCheck = 300 * time.Second
)

// publishBody is the <Message> a producer sends. Element names match in any
// namespace and any order; encoding/xml handles the prolog, entities and CDATA.
type publishBody struct {
	XMLName    xml.Name `xml:"Message"`
	Body       *string  `xml:"MessageBody"`
	Tag        string   `xml:"MessageTag"`
	Properties string   `xml:"Properties"`
}

// handlesBody is the <ReceiptHandles> of an ack, commit or rollback.
type handlesBody struct {
	XMLName xml.Name `xml:"ReceiptHandles"`
	Handles []string `xml:"ReceiptHandle"`
}

// maxHandles bounds one ack, as the SDKs document it.
const maxHandles = 16

// decodeXML parses body into v, answering MalformedXML for anything it cannot read.
func decodeXML(body []byte, v any) *Error {
	d := xml.NewDecoder(bytes.NewReader(body))
	if err := d.Decode(v); err != nil {
		return &Error{http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed: " + err.Error()}
	}
	return nil
}

// decodePublish reads a publish body, on the fast path when it can.
func decodePublish(body []byte) (publishBody, *Error) {
	if root, children, ok := parseFlat(body); ok && root == "Message" {
		var p publishBody
		for _, c := range children {
			switch c.name {
			case "MessageBody":
				text := c.text
				p.Body = &text
			case "MessageTag":
				p.Tag = c.text
			case "Properties":
				p.Properties = c.text
			}
		}
		return p, nil
	}
	var p publishBody
	return p, decodeXML(body, &p)
}

// decodeHandles reads an ack, commit or rollback body, on the fast path when it can.
func decodeHandles(body []byte) (handlesBody, *Error) {
	if root, children, ok := parseFlat(body); ok && root == "ReceiptHandles" {
		var h handlesBody
		for _, c := range children {
			if c.name == "ReceiptHandle" {
				h.Handles = append(h.Handles, c.text)
			}
		}
		return h, nil
	}
	var h handlesBody
	return h, decodeXML(body, &h)
}

// parsePublish turns a publish body into a broker message.
func parsePublish(body []byte, now time.Time) (broker.Message, *Error) {
	p, e := decodePublish(body)
	if e != nil {
		return broker.Message{}, e
	}
	if p.Body == nil || *p.Body == "" {
		// The Python SDK cannot consume an empty body; refusing it keeps them safe.
		return broker.Message{}, invalidArgument("MessageBody is empty.")
	}
	if len(p.Properties) > maxPropertiesText {
		return broker.Message{}, invalidArgument(fmt.Sprintf("Properties take %d bytes, over the %d-byte limit.", len(p.Properties), maxPropertiesText))
	}
	// The body's text was decoded into a buffer of its own, which nothing else
	// holds; the broker only reads a message's body.
	m := broker.Message{Body: unsafe.Slice(unsafe.StringData(*p.Body), len(*p.Body)), Tag: p.Tag, Queue: broker.AnyQueue, BornAt: now}
	props := parseProperties(p.Properties)
	if v, ok := props[propKeys]; ok {
		m.Keys = strings.Fields(v)
		delete(props, propKeys)
	}
	if v, ok := props[propShardingKey]; ok {
		m.ShardingKey = v
		delete(props, propShardingKey)
	}
	if v, ok := props[propStartDeliver]; ok {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return broker.Message{}, invalidArgument(propStartDeliver + " must be a time in milliseconds since the epoch.")
		}
		if ms > 0 {
			m.DeliverAt = time.UnixMilli(ms) // the broker delivers a past time at once
		}
		delete(props, propStartDeliver)
	}
	if v, ok := props[propTransCheckTime]; ok {
		// Bounded in seconds first: a Duration of that many seconds can overflow.
		s, err := strconv.Atoi(v)
		if err != nil || s < int(minTransCheck/time.Second) || s > int(maxTransCheck/time.Second) {
			return broker.Message{}, invalidArgument(fmt.Sprintf("%s must be %d to %d seconds.", propTransCheckTime, int(minTransCheck.Seconds()), int(maxTransCheck.Seconds())))
		}
		m.Transactional = true
		m.CheckImmunity = time.Duration(s) * time.Second
		delete(props, propTransCheckTime)
	}
	if len(props) > 0 {
		m.Properties = props
	}
	return m, nil
}

// parseProperties reads "k:v|k:v|" as every SDK writes it: items split on '|', kept
// only with exactly one ':' and both sides non-empty, in any order, with or without
// a trailing '|'.
func parseProperties(s string) map[string]string {
	props := map[string]string{}
	for item := range strings.SplitSeq(s, "|") {
		k, v, ok := strings.Cut(item, ":")
		if !ok || k == "" || v == "" || strings.Contains(v, ":") {
			continue
		}
		props[k] = v
	}
	return props
}

// appendProperties writes m's properties, the reserved ones rebuilt from its fields,
// as "k:v|" pairs in name order.
func appendProperties(b []byte, m *broker.StoredMessage) []byte {
	if len(m.Properties) == 0 && len(m.Keys) == 0 && m.ShardingKey == "" && m.DeliverAt.IsZero() && !m.Transactional {
		return b // most messages: no map to build
	}
	props := make(map[string]string, len(m.Properties)+4)
	for k, v := range m.Properties {
		props[k] = v
	}
	if len(m.Keys) > 0 {
		props[propKeys] = strings.Join(m.Keys, " ")
	}
	if m.ShardingKey != "" {
		props[propShardingKey] = m.ShardingKey
	}
	if !m.DeliverAt.IsZero() {
		props[propStartDeliver] = strconv.FormatInt(m.DeliverAt.UnixMilli(), 10)
	}
	if m.Transactional {
		props[propTransCheckTime] = strconv.Itoa(int(m.CheckImmunity.Seconds()))
	}
	names := make([]string, 0, len(props))
	for k, v := range props {
		// A key or value the SDKs cannot split back apart is left out rather than
		// corrupting the others.
		if !strings.ContainsAny(k, ":|") && !strings.ContainsAny(v, ":|") && k != "" && v != "" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		b = appendEscaped(b, k)
		b = append(b, ':')
		b = appendEscaped(b, props[k])
		b = append(b, '|')
	}
	return b
}

const xmlHeader = `<?xml version="1.0" encoding="UTF-8"?>`

// appendPublished writes the 201 body of a publish.
func appendPublished(b []byte, res broker.PublishResult) []byte {
	b = append(b, xmlHeader+`<Message xmlns="`+xmlNamespace+`"><MessageId>`...)
	b = append(b, res.ID...)
	b = append(b, `</MessageId><MessageBodyMD5>`...)
	b = append(b, res.BodyMD5...)
	b = append(b, `</MessageBodyMD5>`...)
	if res.TxnHandle != "" {
		b = append(b, `<ReceiptHandle>`...)
		b = append(b, res.TxnHandle...)
		b = append(b, `</ReceiptHandle>`...)
	}
	return append(b, `</Message>`...)
}

// messageFrame is what appendMessages writes around one message's values: its
// element names, and room for its four numbers.
const messageFrame = len(`<Message><MessageId></MessageId><ReceiptHandle></ReceiptHandle>`+
	`<MessageBodyMD5></MessageBodyMD5><MessageBody></MessageBody><PublishTime></PublishTime>`+
	`<FirstConsumeTime></FirstConsumeTime><NextConsumeTime></NextConsumeTime><ConsumedTimes>`+
	`</ConsumedTimes><MessageTag></MessageTag></Message>`) + 4*20

// bodyText is a delivered body as a string, without the copy string(body) makes:
// a delivery's body is the broker's copy of the record, which nothing writes
// once it is decoded. Each conversion was a second and third copy of every
// consumed body (a fifth of what a consume allocated).
func bodyText(body []byte) string { return unsafe.String(unsafe.SliceData(body), len(body)) }

// messagesSize is what appendMessages writes for ds, but for properties: the
// answer is allocated once at its size instead of doubling on the way (a batch of
// 16 1 KiB messages grew three times, a third of the bytes a consume allocated).
// plain, if not nil, is set for each body that needs no escaping, so that the
// answer does not scan a body twice (the scan was 6% of a consume's CPU).
func messagesSize(ds []broker.Delivery, plain []bool) int {
	n := len(xmlHeader + `<Messages xmlns="` + xmlNamespace + `">` + `</Messages>`)
	for i := range ds {
		d := &ds[i]
		body := bodyText(d.Body)
		p := !needsEscape(body)
		if plain != nil {
			plain[i] = p
		}
		bodyLen := len(body)
		if !p {
			bodyLen = escapedLen(body)
		}
		n += messageFrame + len(d.ID) + len(d.Handle) + len(d.BodyMD5) + bodyLen + escapedLen(d.Tag)
	}
	return n
}

// appendMessages writes the 200 body of a consume. Compact, no attributes on child
// elements, numbers in plain decimal: what every SDK's parser accepts.
func appendMessages(b []byte, ds []broker.Delivery) []byte {
	var small [broker.MaxPopMessages]bool
	plain := small[:]
	if len(ds) > len(small) {
		plain = make([]bool, len(ds))
	}
	b = slices.Grow(b, messagesSize(ds, plain))
	b = append(b, xmlHeader+`<Messages xmlns="`+xmlNamespace+`">`...)
	for i := range ds {
		d := &ds[i]
		b = append(b, `<Message><MessageId>`...)
		b = append(b, d.ID...)
		b = append(b, `</MessageId><ReceiptHandle>`...)
		b = append(b, d.Handle...)
		b = append(b, `</ReceiptHandle><MessageBodyMD5>`...)
		b = append(b, d.BodyMD5...)
		b = append(b, `</MessageBodyMD5><MessageBody>`...)
		if plain[i] {
			b = append(b, d.Body...)
		} else {
			b = appendEscaped(b, bodyText(d.Body))
		}
		b = append(b, `</MessageBody><PublishTime>`...)
		b = strconv.AppendInt(b, d.StoreTime.UnixMilli(), 10)
		b = append(b, `</PublishTime><FirstConsumeTime>`...)
		b = strconv.AppendInt(b, d.FirstConsumeTime.UnixMilli(), 10)
		b = append(b, `</FirstConsumeTime><NextConsumeTime>`...)
		b = strconv.AppendInt(b, d.NextConsumeTime.UnixMilli(), 10)
		b = append(b, `</NextConsumeTime><ConsumedTimes>`...)
		b = strconv.AppendInt(b, int64(d.ConsumedTimes), 10)
		b = append(b, `</ConsumedTimes>`...)
		if d.Tag != "" {
			b = append(b, `<MessageTag>`...)
			b = appendEscaped(b, d.Tag)
			b = append(b, `</MessageTag>`...)
		}
		mark := len(b)
		b = append(b, `<Properties>`...)
		start := len(b)
		if b = appendProperties(b, &d.StoredMessage); len(b) == start {
			b = b[:mark] // none to write, or every one was left out
		} else {
			b = append(b, `</Properties>`...)
		}
		b = append(b, `</Message>`...)
	}
	return append(b, `</Messages>`...)
}

// handleError is one failed handle of an ack, commit or rollback.
type handleError struct {
	handle string
	err    *Error
}

// appendHandleErrors writes the <Errors> list of failed handles: exactly ErrorCode,
// ErrorMessage and ReceiptHandle, all non-empty, at least one entry.
func appendHandleErrors(b []byte, errs []handleError) []byte {
	b = append(b, xmlHeader+`<Errors xmlns="`+xmlNamespace+`">`...)
	for _, e := range errs {
		b = append(b, `<Error><ErrorCode>`...)
		b = append(b, e.err.Code...)
		b = append(b, `</ErrorCode><ErrorMessage>`...)
		b = appendEscaped(b, e.err.Message)
		b = append(b, `</ErrorMessage><ReceiptHandle>`...)
		handle := e.handle
		if handle == "" {
			handle = "(empty)" // the SDKs require every element non-empty
		}
		b = appendEscaped(b, handle)
		b = append(b, `</ReceiptHandle></Error>`...)
	}
	return append(b, `</Errors>`...)
}

// appendEscaped writes s as XML character data, byte for byte as xml.EscapeText
// writes it (the SDKs were tested against that). It writes straight into b: a
// consume answer is sized once (messagesSize) and never grows on the way.
func appendEscaped(b []byte, s string) []byte {
	if !needsEscape(s) {
		return append(b, s...)
	}
	last := 0
	for i := 0; i < len(s); {
		r, width := utf8.DecodeRuneInString(s[i:])
		if esc := escapeOf(r, width); esc != "" {
			b = append(b, s[last:i]...)
			b = append(b, esc...)
			last = i + width
		}
		i += width
	}
	return append(b, s[last:]...)
}

// escapedLen is len(appendEscaped(nil, s)), without writing it.
func escapedLen(s string) int {
	if !needsEscape(s) {
		return len(s)
	}
	n := 0
	for i := 0; i < len(s); {
		r, width := utf8.DecodeRuneInString(s[i:])
		if esc := escapeOf(r, width); esc != "" {
			n += len(esc)
		} else {
			n += width
		}
		i += width
	}
	return n
}

// escapeOf is what XML text holds in place of the rune r, width bytes of its
// input, or "" to keep it: the five markup characters, tab and line ends as
// character references, and anything that is not an XML character (invalid UTF-8
// included) as U+FFFD.
func escapeOf(r rune, width int) string {
	switch r {
	case '"':
		return "&#34;"
	case '\'':
		return "&#39;"
	case '&':
		return "&amp;"
	case '<':
		return "&lt;"
	case '>':
		return "&gt;"
	case '\t':
		return "&#x9;"
	case '\n':
		return "&#xA;"
	case '\r':
		return "&#xD;"
	}
	if !isXMLChar(r) || (r == utf8.RuneError && width == 1) {
		return "\uFFFD"
	}
	return ""
}

// isXMLChar reports whether r is a character XML 1.0 allows (its Char production).
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF
}

// needsEscape reports whether s has anything xml.EscapeText would change. It runs
// over every body of every consume answer, twice: one table load per byte.
func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		if escapeStop[s[i]] {
			return true
		}
	}
	return false
}

// escapeStop marks the bytes that may need escaping: the markup characters, tab,
// line ends and other control characters, and every non-ASCII byte (decided rune
// by rune).
var escapeStop = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c < 0x20 || c >= 0x80
	}
	for _, c := range []byte("<>&'\"") {
		t[c] = true
	}
	return t
}()

func invalidArgument(msg string) *Error {
	return &Error{http.StatusBadRequest, "InvalidArgument", msg}
}
