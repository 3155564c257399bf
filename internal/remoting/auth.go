package remoting

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"hash"
	"slices"
	"strings"
	"sync"

	"github.com/orderly-dev/orderly/internal/broker"
)

// reqContext is what a request's credentials and names resolve to.
type reqContext struct {
	// instance is the AccessKey's instance: a key authenticates for its own only.
	instance string
}

// authenticate checks the request's ACL signature (6; docs/remoting.md,
// "Signatures"): HMAC-SHA1 with the AccessKey's secret over the values of the
// request's extFields in name order, then the body, base64. The Java, ONS, C++ and
// Node clients sign every field they send but Signature (AccessKey, OnsChannel and
// SecurityToken included), which is what RocketMQ's broker checks; the Go client
// leaves SecurityToken out, so a request that carries one is checked both ways. The
// values are the text the header carries, which is the text each client signed.
// Every request must be signed: the name server's routes and the broker's data are
// both per instance.
func (s *Server) authenticate(req *Command) (reqContext, *Command) {
	ak := req.ExtFields["AccessKey"]
	sig := req.ExtFields["Signature"]
	if ak == "" || sig == "" {
		s.Broker.NoteAuthFailure("")
		return reqContext{}, response(req, codeNoPermission, "the request is not signed: set the client's credentials to the Instance's AccessKey pair")
	}
	instance, secret, ok := s.Broker.LookupAccessKey(ak)
	if !ok {
		s.Broker.NoteAuthFailure("")
		return reqContext{}, response(req, codeNoPermission, fmt.Sprintf("unknown AccessKey %q", ak))
	}
	got, err := base64.StdEncoding.DecodeString(sig)
	ok = err == nil && hmac.Equal(got, signature(&s.macs, secret, req.ExtFields, req.Body, true))
	if !ok && err == nil && req.ExtFields["SecurityToken"] != "" {
		ok = hmac.Equal(got, signature(&s.macs, secret, req.ExtFields, req.Body, false))
	}
	if !ok {
		s.Broker.NoteAuthFailure(instance)
		return reqContext{}, response(req, codeNoPermission, "the request signature does not match")
	}
	return reqContext{instance: instance}, nil
}

// signature computes the ACL signature of a request's fields and body, with or
// without its SecurityToken among the fields. _UNIQUE_KEY_QUERY is never signed,
// as RocketMQ's broker leaves it out.
func signature(cache *macCache, secret string, ext map[string]string, body []byte, withToken bool) []byte {
	var names [32]string // headers have about a dozen fields; more spill to the heap
	keys := names[:0]
	for k := range ext {
		if k != "Signature" && k != "_UNIQUE_KEY_QUERY" && (withToken || k != "SecurityToken") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	signed := signBuffers.Get().(*[]byte)
	values := (*signed)[:0]
	for _, k := range keys {
		values = append(values, ext[k]...)
	}
	macs := cache.pool(secret)
	mac := macs.Get().(hash.Hash)
	mac.Reset()
	mac.Write(values)
	mac.Write(body)
	sum := mac.Sum(nil)
	macs.Put(mac)
	*signed = values
	signBuffers.Put(signed)
	return sum
}

var signBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// macCache keeps HMAC-SHA1 states keyed with each secret: keying costs two SHA-1
// blocks and three allocations, which every request would otherwise repeat. A
// secret no longer in use is dropped with the rest when the set grows past a bound.
// Each server has its own; the zero value is ready.
type macCache struct {
	mu    sync.RWMutex
	pools map[string]*sync.Pool
}

const maxCachedSecrets = 4096

func (c *macCache) pool(secret string) *sync.Pool {
	c.mu.RLock()
	p := c.pools[secret]
	c.mu.RUnlock()
	if p != nil {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pools == nil {
		c.pools = map[string]*sync.Pool{}
	}
	if p = c.pools[secret]; p == nil {
		if len(c.pools) >= maxCachedSecrets {
			clear(c.pools)
		}
		key := []byte(secret)
		p = &sync.Pool{New: func() any { return hmac.New(sha1.New, key) }}
		c.pools[secret] = p
	}
	return p
}

// Sign adds the AccessKey and Signature fields to a request, as the Go client
// does (a SecurityToken already among the fields is not signed). For tests and
// benchmarks.
func Sign(cmd *Command, accessKey, secret string) {
	if cmd.ExtFields == nil {
		cmd.ExtFields = map[string]string{}
	}
	cmd.ExtFields["AccessKey"] = accessKey
	delete(cmd.ExtFields, "Signature")
	cmd.ExtFields["Signature"] = base64.StdEncoding.EncodeToString(signature(new(macCache), secret, cmd.ExtFields, cmd.Body, false))
}

// namer maps one client's names between the wire and the broker (3.15). A client
// with a namespace (the instance id) prefixes it: "ns%T" for topic T, "ns%G" for
// group G, "%RETRY%ns%G" for G's retry topic. One without sends plain names; its
// AccessKey says the instance either way.
type namer struct{ ns string }

const (
	retryPrefix = "%RETRY%"
	dlqPrefix   = "%DLQ%"
)

func (n namer) prefix() string {
	if n.ns == "" {
		return ""
	}
	return n.ns + "%"
}

// topic returns a broker topic's wire name.
func (n namer) topic(name string) string {
	for _, p := range []string{retryPrefix, dlqPrefix} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			return p + n.prefix() + rest
		}
	}
	return n.prefix() + name
}

// group returns a broker group's wire name.
func (n namer) group(id string) string { return n.prefix() + id }

// resolveName splits a wire topic or group name into the namer the client uses and
// the broker-side name, checking that the namespace is the AccessKey's instance.
func (rc reqContext) resolveName(wire string) (namer, string, error) {
	sys := ""
	for _, p := range []string{retryPrefix, dlqPrefix} {
		if rest, ok := strings.CutPrefix(wire, p); ok {
			sys, wire = p, rest
		}
	}
	ns, name, found := strings.Cut(wire, "%")
	if !found {
		ns, name = "", wire
	}
	if err := broker.CheckNamespace(ns, rc.instance); err != nil {
		return namer{}, "", err
	}
	if name == "" {
		return namer{}, "", fmt.Errorf("empty name %q", wire)
	}
	return namer{ns: ns}, sys + name, nil
}
