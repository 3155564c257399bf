// Package sqlfilter is RocketMQ's SQL92 message selector: the language a
// consumer subscribes with to filter messages by their properties (remoting's
// expressionType "SQL92", gRPC's FilterType SQL). Parse compiles an expression;
// Match evaluates it against one message's properties. docs/sqlfilter.md has the
// language and where its rules come from.
//
// The semantics are Apache RocketMQ's, not textbook SQL's, where the two part:
// NOT binds tighter than a comparison, a property compared with a number is
// converted to the number's type (and a value that does not convert rejects the
// message), and three-valued logic leaves a message whose expression is unknown
// (a property missing) unmatched. An expression that cannot be evaluated for a
// message never matches it: that message is filtered out, not delivered.
package sqlfilter

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxLength bounds an expression, maxDepth its nesting and maxLeaves its
// properties and literals (an IN list counts as one): a selector arrives from
// the network, and is evaluated for every message a read scans, so what one
// costs is bounded (at most about 4 µs a message here).
const (
	MaxLength = 8 << 10
	maxDepth  = 64
	maxLeaves = 64
	// maxTokens bounds what lexing holds before the parse refuses an expression
	// (an IN list of a thousand strings is 2,000).
	maxTokens = 2048
)

// Expr is a compiled selector. It is immutable and safe for concurrent use.
type Expr struct {
	root node
	src  string
}

// String returns the expression as it was written.
func (e *Expr) String() string { return e.src }

// Properties looks a message's property up by name.
type Properties func(name string) (value string, ok bool)

// Match reports whether the message whose properties get returns is selected:
// only an expression that evaluates to TRUE selects it.
func (e *Expr) Match(get Properties) bool {
	v, err := e.root.eval(get)
	return err == nil && v.k == kBool && v.b
}

// Parse compiles a selector. Its error says what is wrong and where.
func Parse(src string) (*Expr, error) {
	if len(src) > MaxLength {
		return nil, fmt.Errorf("the expression is %d bytes; at most %d", len(src), MaxLength)
	}
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("the expression is empty")
	}
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	root, err := p.or()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, fmt.Errorf("unexpected %s at offset %d", t, t.pos)
	}
	return &Expr{root: root, src: src}, nil
}

// value is what an expression evaluates to: SQL's NULL, a boolean, a whole or a
// floating-point number, or a string (every property is one).
type value struct {
	k kind
	b bool
	i int64
	f float64
	s string
}

type kind uint8

const (
	kNull kind = iota
	kBool
	kInt
	kFloat
	kStr
)

var (
	null      = value{}
	trueValue = value{k: kBool, b: true}
	falseVal  = value{k: kBool}
)

func boolean(b bool) value { return value{k: kBool, b: b} }

// errNoMatch ends an evaluation that cannot go on, a property that does not
// convert to the number it is compared with: the message is not selected.
var errNoMatch = errors.New("the expression cannot be evaluated for this message")

type node interface {
	eval(Properties) (value, error)
}

type constNode struct{ v value }

func (n constNode) eval(Properties) (value, error) { return n.v, nil }

type propNode struct{ name string }

func (n propNode) eval(get Properties) (value, error) {
	if s, ok := get(n.name); ok {
		return value{k: kStr, s: s}, nil
	}
	return null, nil
}

// asBoolean is how an operand of AND, OR and NOT is read: NULL stays NULL, a
// boolean is itself, anything else (a string, a number) is FALSE.
func asBoolean(v value) value {
	switch v.k {
	case kNull, kBool:
		return v
	}
	return falseVal
}

type notNode struct{ x node }

func (n notNode) eval(get Properties) (value, error) {
	v, err := n.x.eval(get)
	if err != nil {
		return null, err
	}
	v = asBoolean(v)
	if v.k == kNull {
		return null, nil
	}
	return boolean(!v.b), nil
}

type negNode struct{ x node }

func (n negNode) eval(get Properties) (value, error) {
	v, err := n.x.eval(get)
	if err != nil {
		return null, err
	}
	switch v.k {
	case kInt:
		return value{k: kInt, i: -v.i}, nil
	case kFloat:
		return value{k: kFloat, f: -v.f}, nil
	}
	return null, nil
}

// logicNode is AND or OR over Kleene's three values, evaluated left to right
// and stopping as soon as the answer is known.
type logicNode struct {
	and  bool
	l, r node
}

func (n logicNode) eval(get Properties) (value, error) {
	l, err := n.l.eval(get)
	if err != nil {
		return null, err
	}
	l = asBoolean(l)
	if l.k == kBool && l.b != n.and {
		return l, nil // FALSE AND x, TRUE OR x
	}
	r, err := n.r.eval(get)
	if err != nil {
		return null, err
	}
	r = asBoolean(r)
	switch {
	case r.k == kBool && r.b != n.and:
		return r, nil
	case l.k == kNull || r.k == kNull:
		return null, nil
	}
	return boolean(n.and), nil
}

type cmpOp uint8

const (
	opEq cmpOp = iota
	opLt
	opLe
	opGt
	opGe
)

type cmpNode struct {
	op   cmpOp
	l, r node
}

func (n cmpNode) eval(get Properties) (value, error) {
	l, err := n.l.eval(get)
	if err != nil {
		return null, err
	}
	r, err := n.r.eval(get)
	if err != nil {
		return null, err
	}
	if n.op == opEq {
		switch {
		case l.k == kNull && r.k == kNull:
			return trueValue, nil
		case l.k == kNull:
			return null, nil
		case r.k == kNull:
			return falseVal, nil
		}
		c, err := compare(l, r)
		return boolean(c == 0), err
	}
	if l.k == kNull || r.k == kNull {
		return null, nil
	}
	if l.k == kStr && r.k == kStr {
		// Two strings are ordered as numbers, or not at all.
		lf, lok := javaDouble(l.s)
		rf, rok := javaDouble(r.s)
		if !lok || !rok {
			return null, errNoMatch
		}
		l, r = value{k: kFloat, f: lf}, value{k: kFloat, f: rf}
	}
	c, err := compare(l, r)
	if err != nil {
		return null, err
	}
	switch n.op {
	case opLt:
		return boolean(c < 0), nil
	case opLe:
		return boolean(c <= 0), nil
	case opGt:
		return boolean(c > 0), nil
	}
	return boolean(c >= 0), nil
}

// compare orders two values that are not NULL. A string meets a number or a
// boolean by being converted to its type; a value that does not convert ends the
// evaluation (errNoMatch). Values of kinds that do not convert, a boolean and a
// number, are unequal (and the left one the lesser).
func compare(l, r value) (int, error) {
	if l.k == kStr && r.k != kStr {
		c, err := convert(l.s, r)
		if err != nil {
			return 0, err
		}
		l = c
	} else if r.k == kStr && l.k != kStr {
		if l.k == kBool {
			// RocketMQ fails on a boolean constant left of a property.
			return 0, errNoMatch
		}
		c, err := convert(r.s, l)
		if err != nil {
			return 0, err
		}
		r = c
	}
	switch {
	case l.k == kInt && r.k == kInt:
		return cmpOrdered(l.i, r.i), nil
	case isNumber(l) && isNumber(r):
		return javaCompare(asFloat(l), asFloat(r)), nil
	case l.k == kStr && r.k == kStr:
		return strings.Compare(l.s, r.s), nil
	case l.k == kBool && r.k == kBool:
		return cmpOrdered(b2i(l.b), b2i(r.b)), nil
	}
	return -1, nil
}

// convert reads a property as a value of the kind of the constant it meets. A
// whole number that fits 32 bits is Java's Integer in RocketMQ, which reads the
// property with Integer.valueOf: "3000000000" does not convert to meet 5.
func convert(s string, against value) (value, error) {
	switch against.k {
	case kInt:
		bits := 64
		if against.i >= math.MinInt32 && against.i <= math.MaxInt32 {
			bits = 32
		}
		i, err := strconv.ParseInt(s, 10, bits)
		if err != nil {
			return null, errNoMatch
		}
		return value{k: kInt, i: i}, nil
	case kFloat:
		f, ok := javaDouble(s)
		if !ok {
			return null, errNoMatch
		}
		return value{k: kFloat, f: f}, nil
	case kBool:
		return boolean(strings.EqualFold(s, "true")), nil
	}
	return value{k: kStr, s: s}, nil
}

func isNumber(v value) bool { return v.k == kInt || v.k == kFloat }

func asFloat(v value) float64 {
	if v.k == kInt {
		return float64(v.i)
	}
	return v.f
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// javaDouble reads s as Java's Double.valueOf does, which RocketMQ uses to read
// a property that meets a floating constant: surrounding control characters and
// spaces trimmed (String.trim), an optional sign, then "NaN", "Infinity", or a
// decimal or hexadecimal number with an optional f, F, d or D suffix. Go's
// ParseFloat also takes "inf", "nan" and "infinity" in any case and digits
// separated by underscores, which Java refuses; a number past the largest
// double is Infinity in Java, not an error.
func javaDouble(s string) (float64, bool) {
	s = strings.TrimFunc(s, func(r rune) bool { return r <= ' ' })
	body := strings.TrimLeft(s, "+-")
	if len(s)-len(body) > 1 {
		return 0, false
	}
	neg := strings.HasPrefix(s, "-")
	switch body {
	case "NaN":
		return math.NaN(), true
	case "Infinity":
		if neg {
			return math.Inf(-1), true
		}
		return math.Inf(1), true
	}
	if n := len(body); n > 1 && strings.ContainsRune("fFdD", rune(body[n-1])) {
		// A suffix after a hexadecimal number's exponent, or after decimal digits:
		// a hexadecimal mantissa's own d or f is taken by ParseFloat's need for p.
		s = s[:len(s)-1]
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9', c == '.', c == '+', c == '-', c == 'e', c == 'E',
			c == 'x', c == 'X', c == 'p', c == 'P', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return 0, false // underscores, "inf", "nan" and anything else
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

// javaCompare orders doubles as Java's Double.compare, which RocketMQ's
// comparisons use (Double.compareTo): NaN above every other value and equal to
// itself, -0.0 below 0.0.
func javaCompare(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	bits := func(f float64) int64 {
		if math.IsNaN(f) {
			return 0x7ff8000000000000 // doubleToLongBits's one NaN
		}
		return int64(math.Float64bits(f))
	}
	return cmpOrdered(bits(a), bits(b))
}

func cmpOrdered[T int | int64 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// inNode is [NOT] IN over a property and string literals.
type inNode struct {
	prop propNode
	set  map[string]struct{}
	not  bool
}

func (n inNode) eval(get Properties) (value, error) {
	v, _ := n.prop.eval(get)
	if v.k == kNull {
		return null, nil
	}
	_, in := n.set[v.s]
	return boolean(in != n.not), nil
}

// isNullNode is IS [NOT] NULL: never NULL itself.
type isNullNode struct {
	x   node
	not bool
}

func (n isNullNode) eval(get Properties) (value, error) {
	v, err := n.x.eval(get)
	if err != nil {
		return null, err
	}
	return boolean((v.k == kNull) != n.not), nil
}

type strOp uint8

const (
	opContains strOp = iota
	opStartsWith
	opEndsWith
)

// strNode is [NOT] CONTAINS, STARTSWITH or ENDSWITH: case-sensitive, and FALSE,
// in either form, for a value that is not a string and for an empty literal.
type strNode struct {
	op  strOp
	x   node
	lit string
	not bool
}

func (n strNode) eval(get Properties) (value, error) {
	v, err := n.x.eval(get)
	if err != nil {
		return null, err
	}
	if v.k != kStr || n.lit == "" {
		return falseVal, nil
	}
	var ok bool
	switch n.op {
	case opContains:
		ok = strings.Contains(v.s, n.lit)
	case opStartsWith:
		ok = strings.HasPrefix(v.s, n.lit)
	default:
		ok = strings.HasSuffix(v.s, n.lit)
	}
	return boolean(ok != n.not), nil
}
