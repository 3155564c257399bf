package sqlfilter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tInt
	tFloat
	tOp      // = <> > >= < <= + - ( ) ,
	tKeyword // NOT AND OR BETWEEN IN IS NULL TRUE FALSE CONTAINS STARTSWITH ENDSWITH
)

type token struct {
	kind tokKind
	text string // an operator, a keyword in upper case, an identifier, a string's value
	i    int64
	f    float64
	pos  int
}

func (t token) String() string {
	switch t.kind {
	case tEOF:
		return "the end of the expression"
	case tString:
		return fmt.Sprintf("string '%s'", t.text)
	case tInt, tFloat, tIdent:
		return fmt.Sprintf("%q", t.text)
	}
	return t.text
}

var keywords = map[string]bool{
	"NOT": true, "AND": true, "OR": true, "BETWEEN": true, "IN": true, "IS": true, "NULL": true,
	"TRUE": true, "FALSE": true, "CONTAINS": true, "STARTSWITH": true, "ENDSWITH": true,
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// lex splits src into tokens, skipping white space and comments (-- to the end of
// the line, /* to */).
func lex(src string) ([]token, error) {
	var toks []token
	for i := 0; i < len(src); {
		if len(toks) == maxTokens {
			return nil, fmt.Errorf("the expression has more than %d tokens", maxTokens)
		}
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f':
			i++
		case c == '-' && i+1 < len(src) && src[i+1] == '-':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, fmt.Errorf("a comment opened at offset %d is not closed", i)
			}
			i += end + 4
		case isIdentStart(c):
			start := i
			for i < len(src) && (isIdentStart(src[i]) || isDigit(src[i])) {
				i++
			}
			word := src[start:i]
			if up := strings.ToUpper(word); keywords[up] {
				toks = append(toks, token{kind: tKeyword, text: up, pos: start})
			} else {
				toks = append(toks, token{kind: tIdent, text: word, pos: start})
			}
		case c == '\'':
			start := i
			var sb strings.Builder
			for i++; ; i++ {
				if i >= len(src) {
					return nil, fmt.Errorf("the string opened at offset %d is not closed", start)
				}
				if src[i] == '\'' {
					if i+1 < len(src) && src[i+1] == '\'' {
						sb.WriteByte('\'') // '' is a quote inside a string
						i++
						continue
					}
					i++
					break
				}
				sb.WriteByte(src[i])
			}
			toks = append(toks, token{kind: tString, text: sb.String(), pos: start})
		case isDigit(c) || c == '.' && i+1 < len(src) && isDigit(src[i+1]):
			t, n, err := lexNumber(src, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, t)
			i += n
		default:
			op := ""
			for _, o := range []string{"<>", ">=", "<=", "=", ">", "<", "+", "-", "(", ")", ","} {
				if strings.HasPrefix(src[i:], o) {
					op = o
					break
				}
			}
			if op == "" {
				hint := ""
				if strings.HasPrefix(src[i:], "!=") {
					hint = " (not equal is <>)"
				}
				return nil, fmt.Errorf("unexpected character %q at offset %d%s", src[i], i, hint)
			}
			toks = append(toks, token{kind: tOp, text: op, pos: i})
			i += len(op)
		}
	}
	return append(toks, token{kind: tEOF, pos: len(src)}), nil
}

// lexNumber reads the number at src[i:]: a decimal integer (0, or no leading
// zero), with an optional L; or a decimal floating-point number with a point, an
// exponent or both. It returns the token and its length.
func lexNumber(src string, i int) (token, int, error) {
	j := i
	for j < len(src) && isDigit(src[j]) {
		j++
	}
	float := false
	if j < len(src) && src[j] == '.' {
		float = true
		for j++; j < len(src) && isDigit(src[j]); j++ {
		}
	}
	if j < len(src) && (src[j] == 'e' || src[j] == 'E') {
		k := j + 1
		if k < len(src) && (src[k] == '+' || src[k] == '-') {
			k++
		}
		if k < len(src) && isDigit(src[k]) {
			float = true
			for j = k; j < len(src) && isDigit(src[j]); j++ {
			}
		}
	}
	text := src[i:j]
	if float {
		// Past the largest double is Infinity, as Java's Double.valueOf reads
		// RocketMQ's floating literals, not an error.
		f, err := strconv.ParseFloat(text, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return token{}, 0, fmt.Errorf("number %q at offset %d does not parse", text, i)
		}
		return token{kind: tFloat, text: text, f: f, pos: i}, j - i, nil
	}
	if len(text) > 1 && text[0] == '0' {
		return token{}, 0, fmt.Errorf("number %q at offset %d has a leading zero", text, i)
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return token{}, 0, fmt.Errorf("number %q at offset %d is out of range", text, i)
	}
	if j < len(src) && (src[j] == 'l' || src[j] == 'L') {
		j++
	}
	if j < len(src) && (isIdentStart(src[j]) || isDigit(src[j])) {
		return token{}, 0, fmt.Errorf("unexpected %q after number %q at offset %d", src[j], text, i)
	}
	return token{kind: tInt, text: text, i: n, pos: i}, j - i, nil
}

// parser is a recursive descent over RocketMQ's grammar, from the loosest
// binding to the tightest: OR; AND; equality (=, <>, IS [NOT] NULL); comparison
// (<, <=, >, >=, [NOT] BETWEEN, [NOT] IN, [NOT] CONTAINS, STARTSWITH, ENDSWITH);
// unary (+, -, NOT); literals, properties and parentheses.
type parser struct {
	toks   []token
	at     int
	depth  int
	leaves int
}

func (p *parser) peek() token { return p.toks[p.at] }

func (p *parser) next() token {
	t := p.toks[p.at]
	if t.kind != tEOF {
		p.at++
	}
	return t
}

func (p *parser) isOp(op string) bool {
	t := p.peek()
	return t.kind == tOp && t.text == op
}

func (p *parser) isKeyword(kw string) bool {
	t := p.peek()
	return t.kind == tKeyword && t.text == kw
}

// isKeywordAt reports whether the token n ahead is keyword kw.
func (p *parser) isKeywordAt(n int, kw string) bool {
	if p.at+n >= len(p.toks) {
		return false
	}
	t := p.toks[p.at+n]
	return t.kind == tKeyword && t.text == kw
}

func (p *parser) expected(what string) error {
	t := p.peek()
	return fmt.Errorf("expected %s at offset %d, found %s", what, t.pos, t)
}

func (p *parser) enter() error {
	if p.depth++; p.depth > maxDepth {
		return fmt.Errorf("the expression nests deeper than %d at offset %d", maxDepth, p.peek().pos)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

func (p *parser) or() (node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.isKeyword("OR") {
		p.next()
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = logicNode{and: false, l: l, r: r}
	}
	return l, nil
}

func (p *parser) and() (node, error) {
	l, err := p.equality()
	if err != nil {
		return nil, err
	}
	for p.isKeyword("AND") {
		p.next()
		r, err := p.equality()
		if err != nil {
			return nil, err
		}
		l = logicNode{and: true, l: l, r: r}
	}
	return l, nil
}

func (p *parser) equality() (node, error) {
	l, err := p.comparison()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.isOp("=") || p.isOp("<>"):
			op := p.next()
			r, err := p.comparison()
			if err != nil {
				return nil, err
			}
			if err := checkEqualOperands(l, r, op); err != nil {
				return nil, err
			}
			l = cmpNode{op: opEq, l: l, r: r}
			if op.text == "<>" {
				l = notNode{x: l}
			}
		case p.isKeyword("IS"):
			p.next()
			not := false
			if p.isKeyword("NOT") {
				p.next()
				not = true
			}
			if !p.isKeyword("NULL") {
				return nil, p.expected("NULL")
			}
			p.next()
			l = isNullNode{x: l, not: not}
		default:
			return l, nil
		}
	}
}

func (p *parser) comparison() (node, error) {
	l, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		not := false
		kw := ""
		switch {
		case t.kind == tOp && (t.text == "<" || t.text == "<=" || t.text == ">" || t.text == ">="):
			p.next()
			r, err := p.unary()
			if err != nil {
				return nil, err
			}
			if err := checkOrderOperands(t, l, r); err != nil {
				return nil, err
			}
			l = cmpNode{op: map[string]cmpOp{"<": opLt, "<=": opLe, ">": opGt, ">=": opGe}[t.text], l: l, r: r}
			continue
		case t.kind == tKeyword && t.text == "NOT":
			// NOT here belongs to the operator after it; otherwise it is not ours.
			for _, k := range []string{"BETWEEN", "IN", "CONTAINS", "STARTSWITH", "ENDSWITH"} {
				if p.isKeywordAt(1, k) {
					kw = k
				}
			}
			if kw == "" {
				return l, nil
			}
			p.next()
			p.next()
			not = true
		case t.kind == tKeyword && (t.text == "BETWEEN" || t.text == "IN" || t.text == "CONTAINS" || t.text == "STARTSWITH" || t.text == "ENDSWITH"):
			p.next()
			kw = t.text
		default:
			return l, nil
		}
		switch kw {
		case "BETWEEN":
			if l, err = p.between(t, l, not); err != nil {
				return nil, err
			}
		case "IN":
			if l, err = p.in(t, l, not); err != nil {
				return nil, err
			}
		default:
			s := p.next()
			if s.kind != tString {
				return nil, fmt.Errorf("%s at offset %d takes a string, found %s", kw, t.pos, s)
			}
			op := map[string]strOp{"CONTAINS": opContains, "STARTSWITH": opStartsWith, "ENDSWITH": opEndsWith}[kw]
			l = strNode{op: op, x: l, lit: s.text, not: not}
		}
	}
}

func (p *parser) between(at token, x node, not bool) (node, error) {
	lo, err := p.unary()
	if err != nil {
		return nil, err
	}
	if !p.isKeyword("AND") {
		return nil, p.expected("AND of BETWEEN")
	}
	p.next()
	hi, err := p.unary()
	if err != nil {
		return nil, err
	}
	for _, b := range []node{lo, hi} {
		if c, ok := b.(constNode); ok && c.v.k == kNull {
			return nil, fmt.Errorf("BETWEEN at offset %d has a NULL bound", at.pos)
		}
		if err := checkOrderOperands(at, x, b); err != nil {
			return nil, err
		}
	}
	if l, ok := lo.(constNode); ok {
		if h, ok := hi.(constNode); ok {
			if c, err := compare(l.v, h.v); err == nil && c > 0 {
				return nil, fmt.Errorf("BETWEEN at offset %d: the low bound is above the high one", at.pos)
			}
		}
	}
	if not {
		return logicNode{and: false, l: cmpNode{op: opLt, l: x, r: lo}, r: cmpNode{op: opGt, l: x, r: hi}}, nil
	}
	return logicNode{and: true, l: cmpNode{op: opGe, l: x, r: lo}, r: cmpNode{op: opLe, l: x, r: hi}}, nil
}

func (p *parser) in(at token, x node, not bool) (node, error) {
	prop, ok := x.(propNode)
	if !ok {
		return nil, fmt.Errorf("IN at offset %d needs a property on its left", at.pos)
	}
	if !p.isOp("(") {
		return nil, p.expected("( after IN")
	}
	p.next()
	set := map[string]struct{}{}
	for {
		s := p.next()
		if s.kind != tString {
			return nil, fmt.Errorf("IN at offset %d lists strings, found %s", at.pos, s)
		}
		set[s.text] = struct{}{}
		if p.isOp(",") {
			p.next()
			continue
		}
		if !p.isOp(")") {
			return nil, p.expected(", or ) in the IN list")
		}
		p.next()
		return inNode{prop: prop, set: set, not: not}, nil
	}
}

func (p *parser) unary() (node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	switch {
	case p.isOp("+"):
		p.next()
		return p.unary()
	case p.isOp("-"):
		p.next()
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		if c, ok := x.(constNode); ok && isNumber(c.v) {
			v, _ := negNode{x: c}.eval(nil)
			return constNode{v}, nil
		}
		return negNode{x: x}, nil
	case p.isKeyword("NOT"):
		p.next()
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return notNode{x: x}, nil
	}
	return p.primary()
}

func (p *parser) primary() (node, error) {
	if p.leaves++; p.leaves > maxLeaves {
		return nil, fmt.Errorf("the expression has more than %d properties and literals", maxLeaves)
	}
	t := p.next()
	switch t.kind {
	case tIdent:
		return propNode{name: t.text}, nil
	case tString:
		return constNode{value{k: kStr, s: t.text}}, nil
	case tInt:
		return constNode{value{k: kInt, i: t.i}}, nil
	case tFloat:
		return constNode{value{k: kFloat, f: t.f}}, nil
	case tKeyword:
		switch t.text {
		case "TRUE":
			return constNode{trueValue}, nil
		case "FALSE":
			return constNode{falseVal}, nil
		case "NULL":
			return constNode{null}, nil
		}
	case tOp:
		if t.text == "(" {
			x, err := p.or()
			if err != nil {
				return nil, err
			}
			if !p.isOp(")") {
				return nil, p.expected(")")
			}
			p.next()
			return x, nil
		}
	}
	return nil, fmt.Errorf("expected a property, a literal or ( at offset %d, found %s", t.pos, t)
}

// isBooleanNode reports whether n is a boolean expression (a comparison, a
// logical operation, TRUE or FALSE), which RocketMQ does not order.
func isBooleanNode(n node) bool {
	switch x := n.(type) {
	case cmpNode, logicNode, notNode, inNode, isNullNode, strNode:
		return true
	case constNode:
		return x.v.k == kBool
	}
	return false
}

// checkOrderOperands is RocketMQ's rule for <, <=, > and >=: a constant operand
// must be a number, and no operand a boolean expression.
func checkOrderOperands(op token, l, r node) error {
	for _, n := range []node{l, r} {
		if c, ok := n.(constNode); ok && !isNumber(c.v) && c.v.k != kBool {
			return fmt.Errorf("%s at offset %d compares numbers; %s is not one", op.text, op.pos, describe(c))
		}
		if isBooleanNode(n) {
			return fmt.Errorf("%s at offset %d compares numbers, not a condition", op.text, op.pos)
		}
	}
	return nil
}

// checkEqualOperands is RocketMQ's rule for = and <>: NULL is tested with IS
// NULL, and a boolean constant is compared with booleans only.
func checkEqualOperands(l, r node, op token) error {
	lc, lok := l.(constNode)
	rc, rok := r.(constNode)
	if lok && lc.v.k == kNull || rok && rc.v.k == kNull {
		return fmt.Errorf("%s at offset %d compares with NULL, which is never equal: use IS NULL", op.text, op.pos)
	}
	if lok && rok && (lc.v.k == kBool) != (rc.v.k == kBool) {
		return fmt.Errorf("%s at offset %d compares a boolean with %s", op.text, op.pos, describe(rc))
	}
	return nil
}

func describe(c constNode) string {
	switch c.v.k {
	case kStr:
		return fmt.Sprintf("string '%s'", c.v.s)
	case kBool:
		return strings.ToUpper(strconv.FormatBool(c.v.b))
	case kNull:
		return "NULL"
	}
	return "a number"
}
