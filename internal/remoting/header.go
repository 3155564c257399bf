package remoting

import (
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// The JSON header of every frame is flat: a few numbers, two strings and a map of
// scalars. encoding/json took a fifth of the CPU of a send (reflection, a map and
// a string per field); these hand-written paths handle the shapes clients send
// (strings from the Go and Java clients, numbers and booleans among them from the
// C++ and Node ones) and hand anything else to the tolerant decoder in
// header_tolerant.go, so that every header decodes exactly as that one decodes it
// (FuzzHeaderAgreement holds them to that).

// decodeHeader decodes a JSON frame header into cmd. An error is either a header
// that cannot be read or a *fieldError, a header whose request can be answered.
func decodeHeader(data []byte, cmd *Command) error {
	if fastDecodeHeader(data, cmd) {
		return nil
	}
	return decodeHeaderTolerant(data, cmd)
}

// headerScanner reads a header; any step it does not handle makes it give up.
type headerScanner struct {
	data []byte
	pos  int
}

func (s *headerScanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// consume skips spaces and then c, reporting whether c was there.
func (s *headerScanner) consume(c byte) bool {
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// str reads a JSON string. It handles the escapes clients produce (\" \\ \/ \b \f
// \n \r \t and \u for the basic multilingual plane outside the surrogates) and
// valid UTF-8; anything else is left to encoding/json.
func (s *headerScanner) str() (string, bool) {
	if !s.consume('"') {
		return "", false
	}
	start := s.pos
	ascii := true
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			raw := s.data[start:s.pos]
			s.pos++
			if !ascii && !utf8.Valid(raw) {
				return "", false // encoding/json would substitute U+FFFD
			}
			return string(raw), true
		case c == '\\':
			return s.escapedStr(start)
		case c < 0x20:
			return "", false
		case c >= 0x80:
			ascii = false
		}
		s.pos++
	}
	return "", false
}

// escapedStr finishes a string that has escapes, from start (after the quote).
func (s *headerScanner) escapedStr(start int) (string, bool) {
	out := make([]byte, 0, s.pos-start+16)
	out = append(out, s.data[start:s.pos]...)
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			if !utf8.Valid(out) {
				return "", false
			}
			return string(out), true
		case c < 0x20:
			return "", false
		case c != '\\':
			out = append(out, c)
			s.pos++
			continue
		}
		if s.pos+1 >= len(s.data) {
			return "", false
		}
		e := s.data[s.pos+1]
		s.pos += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if s.pos+4 > len(s.data) {
				return "", false
			}
			r, err := strconv.ParseUint(string(s.data[s.pos:s.pos+4]), 16, 32)
			if err != nil || (r >= 0xD800 && r < 0xE000) {
				return "", false
			}
			s.pos += 4
			out = utf8.AppendRune(out, rune(r))
		default:
			return "", false
		}
	}
	return "", false
}

// integer reads a JSON integer that fits bits bits, signed.
func (s *headerScanner) integer(bits int) (int64, bool) {
	s.skipSpace()
	start := s.pos
	if s.pos < len(s.data) && s.data[s.pos] == '-' {
		s.pos++
	}
	digits := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	n := s.pos - digits
	if n == 0 || n > 18 || (n > 1 && s.data[digits] == '0') {
		return 0, false
	}
	if s.pos < len(s.data) && (s.data[s.pos] == '.' || s.data[s.pos] == 'e' || s.data[s.pos] == 'E') {
		return 0, false
	}
	v, err := strconv.ParseInt(string(s.data[start:s.pos]), 10, bits)
	return v, err == nil
}

// number reads a JSON number (-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?) and
// returns it as written: the text a client signs for it.
func (s *headerScanner) number() (string, bool) {
	s.skipSpace()
	start := s.pos
	if s.pos < len(s.data) && s.data[s.pos] == '-' {
		s.pos++
	}
	switch {
	case s.pos < len(s.data) && s.data[s.pos] == '0':
		s.pos++
	case !s.digits():
		return "", false
	}
	if s.pos < len(s.data) && s.data[s.pos] == '.' {
		s.pos++
		if !s.digits() {
			return "", false
		}
	}
	if s.pos < len(s.data) && (s.data[s.pos] == 'e' || s.data[s.pos] == 'E') {
		s.pos++
		if s.pos < len(s.data) && (s.data[s.pos] == '+' || s.data[s.pos] == '-') {
			s.pos++
		}
		if !s.digits() {
			return "", false
		}
	}
	return string(s.data[start:s.pos]), true
}

// digits skips one or more decimal digits.
func (s *headerScanner) digits() bool {
	start := s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		s.pos++
	}
	return s.pos > start
}

// literal skips lit (true, false or null) if it comes next.
func (s *headerScanner) literal(lit string) bool {
	s.skipSpace()
	if len(s.data)-s.pos >= len(lit) && string(s.data[s.pos:s.pos+len(lit)]) == lit {
		s.pos += len(lit)
		return true
	}
	return false
}

// scalar reads a string, a number, true, false or null as the text a client signs
// for it: a string's contents, a number as written, true or false; null is no
// value (present is false).
func (s *headerScanner) scalar() (v string, present, ok bool) {
	s.skipSpace()
	if s.pos >= len(s.data) {
		return "", false, false
	}
	switch c := s.data[s.pos]; {
	case c == '"':
		v, ok = s.str()
		return v, true, ok
	case c == '-' || (c >= '0' && c <= '9'):
		v, ok = s.number()
		return v, true, ok
	case s.literal("true"):
		return "true", true, true
	case s.literal("false"):
		return "false", true, true
	case s.literal("null"):
		return "", false, true
	}
	return "", false, false
}

// nullableStr reads a string or null, which is the empty string.
func (s *headerScanner) nullableStr() (string, bool) {
	if s.literal("null") {
		return "", true
	}
	return s.str()
}

// fastDecodeHeader decodes the headers clients send, reporting false for anything
// it leaves to the tolerant decoder: numeric strings and non-integers for code,
// version, opaque and flag, a language code, an extFields that is null, nested
// values, duplicate extFields, names that differ from the fields' only in case
// (encoding/json matches those), and whatever str and number give up on.
func fastDecodeHeader(data []byte, cmd *Command) bool {
	s := headerScanner{data: data}
	if !s.consume('{') {
		return false
	}
	if s.consume('}') {
		return s.end()
	}
	for {
		key, ok := s.str()
		if !ok || !s.consume(':') {
			return false
		}
		switch key {
		case "code":
			v, ok := s.integer(16)
			if !ok {
				return false
			}
			cmd.Code = int16(v)
		case "version", "opaque", "flag":
			v, ok := s.integer(32)
			if !ok {
				return false
			}
			switch key {
			case "version":
				cmd.Version = int32(v)
			case "opaque":
				cmd.Opaque = int32(v)
			default:
				cmd.Flag = int32(v)
			}
		case "language", "remark":
			v, ok := s.nullableStr()
			if !ok {
				return false
			}
			if key == "language" {
				cmd.Language = v
			} else {
				cmd.Remark = v
			}
		case "extFields":
			if cmd.ExtFields != nil || !s.extFields(cmd) {
				return false
			}
		default:
			if foldsToField(key) {
				return false
			}
			if _, _, ok := s.scalar(); !ok {
				return false
			}
		}
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			return s.end()
		}
		return false
	}
}

func (s *headerScanner) extFields(cmd *Command) bool {
	if !s.consume('{') {
		return false
	}
	cmd.ExtFields = make(map[string]string, 16)
	if s.consume('}') {
		return true
	}
	for {
		k, ok := s.str()
		if !ok || !s.consume(':') {
			return false
		}
		v, present, ok := s.scalar()
		switch {
		case !ok:
			return false
		case present:
			cmd.ExtFields[k] = v
		default:
			delete(cmd.ExtFields, k) // null, as if absent
		}
		if s.consume(',') {
			continue
		}
		return s.consume('}')
	}
}

// end reports whether only spaces follow.
func (s *headerScanner) end() bool {
	s.skipSpace()
	return s.pos == len(s.data)
}

var headerFields = []string{"code", "language", "version", "opaque", "flag", "remark", "extFields"}

// foldsToField reports whether an unknown name would match a field in
// encoding/json's case-insensitive way.
func foldsToField(key string) bool {
	for _, f := range headerFields {
		if len(f) == len(key) && equalFoldASCII(f, key) {
			return true
		}
	}
	// Non-ASCII names can fold too (the Kelvin sign to k, the long s to s).
	for i := 0; i < len(key); i++ {
		if key[i] >= 0x80 {
			return true
		}
	}
	return false
}

func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// appendHeader appends c's header as encoding/json would marshal it: the same
// fields, omissions and sorted map keys. Strings that are not valid UTF-8 go
// through encoding/json, which substitutes U+FFFD.
func appendHeader(b []byte, c *Command) ([]byte, error) {
	if !validStrings(c) {
		header, err := json.Marshal(c)
		return append(b, header...), err
	}
	b = append(b, `{"code":`...)
	b = strconv.AppendInt(b, int64(c.Code), 10)
	if c.Language != "" {
		b = append(b, `,"language":`...)
		b = appendJSONString(b, c.Language)
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, int64(c.Version), 10)
	b = append(b, `,"opaque":`...)
	b = strconv.AppendInt(b, int64(c.Opaque), 10)
	b = append(b, `,"flag":`...)
	b = strconv.AppendInt(b, int64(c.Flag), 10)
	if c.Remark != "" {
		b = append(b, `,"remark":`...)
		b = appendJSONString(b, c.Remark)
	}
	if len(c.ExtFields) > 0 {
		var buf [24]string
		keys := buf[:0]
		for k := range c.ExtFields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, `,"extFields":{`...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, c.ExtFields[k])
		}
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

func validStrings(c *Command) bool {
	if !utf8.ValidString(c.Language) || !utf8.ValidString(c.Remark) {
		return false
	}
	for k, v := range c.ExtFields {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s (valid UTF-8) quoted, escaped as encoding/json escapes
// it: control characters, the quote and backslash, <, > and &, and U+2028/U+2029.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
