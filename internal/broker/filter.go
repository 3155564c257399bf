package broker

import (
	"fmt"
	"strings"
)

// TagFilter selects messages by tag: RocketMQ's subscription expression, "*" (or
// empty) for every message, or tags joined by "||". The zero value selects every
// message.
type TagFilter struct {
	tags   map[string]struct{} // nil: every message
	hashes map[uint32]struct{}
}

// ParseTagFilter parses a subscription expression.
func ParseTagFilter(expr string) (TagFilter, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" || expr == "*" {
		return TagFilter{}, nil
	}
	f := TagFilter{tags: map[string]struct{}{}, hashes: map[uint32]struct{}{}}
	for _, tag := range strings.Split(expr, "||") {
		tag = strings.TrimSpace(tag)
		if tag == "" {
			continue
		}
		if tag == "*" {
			return TagFilter{}, nil
		}
		if len(tag) > MaxTagLength {
			return TagFilter{}, fmt.Errorf("%w: tag longer than %d characters in filter", ErrInvalidArgument, MaxTagLength)
		}
		f.tags[tag] = struct{}{}
		f.hashes[tagHash(tag)] = struct{}{}
	}
	if len(f.tags) == 0 {
		return TagFilter{}, fmt.Errorf("%w: tag filter %q names no tag", ErrInvalidArgument, expr)
	}
	return f, nil
}

// mayMatch reports from an index entry's tag hash whether the message can match;
// a true answer is confirmed against the record with matches.
func (f TagFilter) mayMatch(hash uint32) bool {
	if f.tags == nil {
		return true
	}
	_, ok := f.hashes[hash]
	return ok
}

// matches reports whether a message with tag matches.
func (f TagFilter) matches(tag string) bool {
	if f.tags == nil {
		return true
	}
	_, ok := f.tags[tag]
	return ok
}
