package broker

import (
	"fmt"
	"strings"

	"github.com/orderly-dev/orderly/internal/sqlfilter"
)

// Filter selects the messages a consumer sees: by tag (RocketMQ's subscription
// expression, "*" or empty for every message, or tags joined by "||"), or by a
// SQL92 expression over the message's properties. The zero value selects every
// message.
type Filter struct {
	tags   map[string]struct{} // nil: every message, unless sql is set
	hashes map[uint32]struct{}
	sql    *sqlfilter.Expr
}

// ParseSQLFilter compiles a SQL92 subscription expression (internal/sqlfilter).
// It sees the message's properties as RocketMQ's broker does: the user's, TAGS
// (the tag), KEYS (the keys, space-separated) and the protocols' own.
func ParseSQLFilter(expr string) (Filter, error) {
	e, err := sqlfilter.Parse(expr)
	if err != nil {
		return Filter{}, fmt.Errorf("%w: SQL92 filter %.64q: %v", ErrInvalidArgument, expr, err)
	}
	return Filter{sql: e}, nil
}

// ParseTagFilter parses a subscription expression.
func ParseTagFilter(expr string) (Filter, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" || expr == "*" {
		return Filter{}, nil
	}
	f := Filter{tags: map[string]struct{}{}, hashes: map[uint32]struct{}{}}
	for _, tag := range strings.Split(expr, "||") {
		tag = strings.TrimSpace(tag)
		if tag == "" {
			continue
		}
		if tag == "*" {
			return Filter{}, nil
		}
		if len(tag) > MaxTagLength {
			return Filter{}, fmt.Errorf("%w: tag longer than %d characters in filter", ErrInvalidArgument, MaxTagLength)
		}
		f.tags[tag] = struct{}{}
		f.hashes[tagHash(tag)] = struct{}{}
	}
	if len(f.tags) == 0 {
		return Filter{}, fmt.Errorf("%w: tag filter %q names no tag", ErrInvalidArgument, expr)
	}
	return f, nil
}

// mayMatch reports from an index entry's tag hash whether the message can match;
// a true answer is confirmed against the record with matches.
func (f Filter) mayMatch(hash uint32) bool {
	if f.tags == nil { // every message, or a SQL92 filter, which needs the record
		return true
	}
	_, ok := f.hashes[hash]
	return ok
}

// matches reports whether m matches.
func (f Filter) matches(m *Message) bool {
	if f.sql != nil {
		return f.sql.Match(func(name string) (string, bool) { return m.property(name) })
	}
	if f.tags == nil {
		return true
	}
	_, ok := f.tags[m.Tag]
	return ok
}

// property is what a SQL92 filter reads of m by name: TAGS and KEYS as RocketMQ
// stores them among the properties, the rest from Properties.
func (m *Message) property(name string) (string, bool) {
	switch name {
	case "TAGS":
		return m.Tag, m.Tag != ""
	case "KEYS":
		return strings.Join(m.Keys, " "), len(m.Keys) > 0
	}
	v, ok := m.Properties[name]
	return v, ok
}
