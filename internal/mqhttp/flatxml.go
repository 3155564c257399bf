package mqhttp

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"
)

// parseFlat reads the flat documents the SDKs send, a root element whose children
// hold only text:
//
//	[<?xml ...?>] <Root [attributes]> (<Child>text</Child> | <Child/>)* </Root>
//
// with entity references and CDATA in the text, whitespace between elements, and
// namespace prefixes ignored. It returns the root's local name and the children in
// order, or ok=false for anything else (comments, DOCTYPE, nesting, malformed
// input), which the caller then hands to encoding/xml. It exists because
// encoding/xml reads a 1 KiB body one byte at a time, the largest single cost of a
// publish; FuzzFlatXML checks it agrees with encoding/xml wherever it answers.
func parseFlat(doc []byte) (root string, children []flatChild, ok bool) {
	p := flatParser{b: doc}
	p.space()
	if bytes.HasPrefix(p.b[p.i:], []byte("<?xml")) {
		// Only the prologs the SDKs send; encoding/xml decides any other.
		m := prologPattern.Find(p.b[p.i:])
		if m == nil {
			return "", nil, false
		}
		p.i += len(m)
	}
	p.space()
	root, selfClosed, ok := p.startTag(true)
	if !ok {
		return "", nil, false
	}
	if selfClosed {
		p.space()
		return local(root), nil, p.i == len(p.b)
	}
	for {
		p.space()
		if p.i+1 < len(p.b) && p.b[p.i] == '<' && p.b[p.i+1] == '/' {
			name, ok := p.endTag()
			if !ok || name != root {
				return "", nil, false
			}
			p.space()
			return local(root), children, p.i == len(p.b)
		}
		name, selfClosed, ok := p.startTag(false)
		if !ok {
			return "", nil, false
		}
		if selfClosed {
			children = append(children, flatChild{name: local(name)})
			continue
		}
		text, ok := p.text()
		if !ok {
			return "", nil, false
		}
		end, ok := p.endTag()
		if !ok || end != name {
			return "", nil, false
		}
		children = append(children, flatChild{name: local(name), text: text})
	}
}

var prologPattern = regexp.MustCompile(`^<\?xml version=["']1\.0["'](\s+encoding=["'](?i:utf-8)["'])?(\s+standalone=["'](?:yes|no)["'])?\s*\?>`)

type flatChild struct {
	name, text string
}

type flatParser struct {
	b []byte
	i int
}

func (p *flatParser) space() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

// startTag reads <name ...> or <name .../>; attributes are allowed on the root only.
func (p *flatParser) startTag(root bool) (name string, selfClosed, ok bool) {
	if p.i >= len(p.b) || p.b[p.i] != '<' {
		return "", false, false
	}
	p.i++
	name, ok = p.name()
	if !ok {
		return "", false, false
	}
	end := bytes.IndexByte(p.b[p.i:], '>')
	if end < 0 {
		return "", false, false
	}
	attrs := p.b[p.i : p.i+end]
	p.i += end + 1
	if n := len(attrs); n > 0 && attrs[n-1] == '/' {
		selfClosed = true
		attrs = attrs[:n-1]
	}
	if len(bytes.TrimSpace(attrs)) > 0 && (!root || !validAttributes(attrs)) {
		return "", false, false
	}
	return name, selfClosed, true
}

// validAttributes accepts only ` name="value"` or ` name='value'` pairs whose values
// hold no '<', '&' or '>', a conservative subset of what encoding/xml accepts.
func validAttributes(a []byte) bool {
	q := flatParser{b: a}
	for {
		start := q.i
		q.space()
		if q.i == len(a) {
			return true
		}
		if q.i == start {
			return false // attributes must be separated by white space
		}
		if _, ok := q.name(); !ok {
			return false
		}
		q.space()
		if q.i >= len(a) || a[q.i] != '=' {
			return false
		}
		q.i++
		q.space()
		if q.i >= len(a) || (a[q.i] != '"' && a[q.i] != '\'') {
			return false
		}
		quote := a[q.i]
		end := bytes.IndexByte(a[q.i+1:], quote)
		if end < 0 || !printableASCII(a[q.i+1:q.i+1+end]) || bytes.ContainsAny(a[q.i+1:q.i+1+end], "<&>") {
			return false
		}
		q.i += end + 2
	}
}

func (p *flatParser) endTag() (string, bool) {
	if p.i+1 >= len(p.b) || p.b[p.i] != '<' || p.b[p.i+1] != '/' {
		return "", false
	}
	p.i += 2
	name, ok := p.name()
	if !ok {
		return "", false
	}
	p.space()
	if p.i >= len(p.b) || p.b[p.i] != '>' {
		return "", false
	}
	p.i++
	return name, true
}

// name reads an element name made of ASCII name characters, dropping a namespace
// prefix.
func (p *flatParser) name() (string, bool) {
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if c == '_' || c == '-' || c == '.' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9' && p.i > start) {
			p.i++
			continue
		}
		break
	}
	if p.i == start {
		return "", false
	}
	// The raw name, prefix included: a start and an end tag must match in full. At
	// most one colon, with both sides non-empty.
	n := p.b[start:p.i]
	if c := bytes.IndexByte(n, ':'); c >= 0 && (c == 0 || c == len(n)-1 || bytes.IndexByte(n[c+1:], ':') >= 0 || !nameStart(n[c+1])) {
		return "", false
	}
	if !nameStart(n[0]) {
		return "", false
	}
	return string(n), true
}

func nameStart(c byte) bool { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// local drops a name's namespace prefix.
func local(name string) string {
	if i := strings.IndexByte(name, ':'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// text reads character data up to the next '<' that does not open a CDATA section,
// resolving entity references. Raw '\r' and "\r\n" become '\n' as XML requires.
func (p *flatParser) text() (string, bool) {
	// Most text is one run up to the next tag: size the copy for it.
	run := bytes.IndexByte(p.b[p.i:], '<')
	if run < 0 {
		return "", false
	}
	out := make([]byte, 0, run)
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '<':
			if !bytes.HasPrefix(p.b[p.i:], []byte("<![CDATA[")) {
				return ownedString(out), validXMLText(out)
			}
			p.i += len("<![CDATA[")
			end := bytes.Index(p.b[p.i:], []byte("]]>"))
			if end < 0 {
				return "", false
			}
			out = appendNormalized(out, p.b[p.i:p.i+end])
			p.i += end + 3
		case c == '&':
			semi := bytes.IndexByte(p.b[p.i:], ';')
			if semi < 0 || semi > 12 {
				return "", false
			}
			r, ok := entity(p.b[p.i+1 : p.i+semi])
			if !ok {
				return "", false
			}
			out = utf8.AppendRune(out, r)
			p.i += semi + 1
		case c == ']' && bytes.HasPrefix(p.b[p.i:], []byte("]]>")):
			return "", false // not allowed in text
		default:
			start := p.i
			for p.i < len(p.b) && !textStop[p.b[p.i]] {
				p.i++
			}
			if p.i < len(p.b) && p.b[p.i] < 0x20 {
				return "", false // control characters are not XML: let encoding/xml decide
			}
			if p.i == start { // a lone ']'
				p.i++
			}
			out = appendNormalized(out, p.b[start:p.i])
		}
	}
	return "", false
}

// ownedString makes out a string without copying it: text has just allocated out
// and never touches it again, as strings.Builder does with its buffer. A 1 KiB
// message body is then copied once on its way from the request to the record,
// not twice.
func ownedString(out []byte) string {
	if len(out) == 0 {
		return ""
	}
	return unsafe.String(&out[0], len(out))
}

// textStop marks the bytes that end a run of plain text: markup, and the control
// characters XML does not allow.
var textStop = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = c != '\t' && c != '\n' && c != '\r'
	}
	t['<'], t['&'], t[']'] = true, true, true
	return t
}()

func appendNormalized(out, s []byte) []byte {
	if bytes.IndexByte(s, '\r') < 0 {
		return append(out, s...)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' {
			out = append(out, '\n')
			if i+1 < len(s) && s[i+1] == '\n' {
				i++
			}
			continue
		}
		out = append(out, s[i])
	}
	return out
}

func entity(name []byte) (rune, bool) {
	switch string(name) {
	case "lt":
		return '<', true
	case "gt":
		return '>', true
	case "amp":
		return '&', true
	case "quot":
		return '"', true
	case "apos":
		return '\'', true
	}
	if len(name) < 2 || name[0] != '#' {
		return 0, false
	}
	var n uint64
	var err error
	if name[1] == 'x' {
		n, err = strconv.ParseUint(string(name[2:]), 16, 32)
	} else {
		n, err = strconv.ParseUint(string(name[1:]), 10, 32)
	}
	if err != nil || n == 0 || n > utf8.MaxRune || (n >= 0xD800 && n <= 0xDFFF) {
		return 0, false
	}
	return rune(n), true
}

// printableASCII: the root's attributes are namespace URLs; anything else goes to
// encoding/xml.
func printableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

// validXMLText reports whether s is UTF-8 made only of characters XML allows.
func validXMLText(s []byte) bool {
	for len(s) > 0 {
		if c := s[0]; c >= 0x20 && c < utf8.RuneSelf || c == '\t' || c == '\n' || c == '\r' {
			s = s[1:]
			continue
		}
		r, n := utf8.DecodeRune(s)
		if r == utf8.RuneError && n == 1 {
			return false
		}
		if !(r == 0x09 || r == 0x0A || r == 0x0D || r >= 0x20 && r <= 0xD7FF || r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF) {
			return false
		}
		s = s[n:]
	}
	return true
}
