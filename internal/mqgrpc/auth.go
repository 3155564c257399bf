package mqgrpc

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/membudget"
	pb "github.com/orderly-dev/orderly/internal/mqgrpc/apiv2"
)

// Request metadata the clients send with every call and at the start of every
// Telemetry stream (specs/rocketmq-grpc-protocol.md 2.1).
const (
	mdAuthorization = "authorization"
	mdDateTime      = "x-mq-date-time"
	mdClientID      = "x-mq-client-id"
	mdNamespace     = "x-mq-namespace"
)

// call is what an authenticated call's metadata resolves to.
type call struct {
	// instance is the AccessKey's: a key authenticates for its own instance only.
	instance string
	clientID string
	// namespace is the x-mq-namespace header, possibly empty.
	namespace string
	// hold is what the call holds of the memory budgets (memory.go).
	hold *membudget.Hold
}

// lastValue returns the last value of an incoming metadata key. The Go client
// signs its already signed context again on each send retry, so a retry carries
// every x-mq-* header and authorization once per attempt, oldest first (2.1); the
// last authorization goes with the last x-mq-date-time. It reads the key alone
// rather than copying the whole metadata (which cost 2% of a send's CPU).
func lastValue(ctx context.Context, key string) string {
	vs := metadata.ValueFromIncomingContext(ctx, key)
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// authenticate verifies a call's signature (2.2) and reads its client id. Every
// call must be signed: each instance's topics are reached with its own keys.
func (s *Server) authenticate(ctx context.Context) (*call, *pb.Status) {
	auth := lastValue(ctx, mdAuthorization)
	if auth == "" {
		s.Broker.NoteAuthFailure("")
		return nil, statusf(pb.Code_UNAUTHORIZED, "the request is not signed: set the client's credentials to the Instance's AccessKey pair")
	}
	dateTime := lastValue(ctx, mdDateTime)
	if dateTime == "" {
		s.Broker.NoteAuthFailure("")
		return nil, statusf(pb.Code_UNAUTHORIZED, "the request is signed but carries no %s", mdDateTime)
	}
	accessKey, sig, err := parseAuthorization(auth)
	if err != nil {
		s.Broker.NoteAuthFailure("")
		return nil, statusf(pb.Code_UNAUTHORIZED, "%v", err)
	}
	instance, secret, ok := s.Broker.LookupAccessKey(accessKey)
	if !ok {
		s.Broker.NoteAuthFailure("")
		return nil, statusf(pb.Code_UNAUTHORIZED, "unknown AccessKey %q", accessKey)
	}
	if !hmac.Equal(sig, sign(secret, dateTime)) {
		s.Broker.NoteAuthFailure(instance)
		return nil, statusf(pb.Code_UNAUTHORIZED, "the request signature does not match")
	}
	// No clock-skew check: the Go client writes its local time with a literal Z,
	// up to 14 hours off, and the Apache proxy checks none either (2.2).
	clientID := lastValue(ctx, mdClientID)
	if clientID == "" {
		return nil, statusf(pb.Code_CLIENT_ID_REQUIRED, "the request carries no %s", mdClientID)
	}
	return &call{instance: instance, clientID: clientID, namespace: lastValue(ctx, mdNamespace)}, nil
}

// sign is the signature both clients compute: HMAC-SHA1 keyed with the secret
// over the x-mq-date-time value, nothing else.
func sign(secret, dateTime string) []byte {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(dateTime))
	return mac.Sum(nil)
}

// SignedMetadata is the metadata of a client's call, signed at now as the Node
// client signs it (plain AccessKey, upper-case hex): what Orderly's own tools and
// tests send with the generated stubs. An empty secret leaves it unsigned.
func SignedMetadata(accessKey, secret, namespace, clientID string, now time.Time) metadata.MD {
	dt := now.UTC().Format("20060102T150405Z")
	md := metadata.Pairs(mdClientID, clientID, mdDateTime, dt, "x-mq-language", "HTTP", "x-mq-protocol", "v2")
	if namespace != "" {
		md.Set(mdNamespace, namespace)
	}
	if secret != "" {
		md.Set(mdAuthorization, "MQv2-HMAC-SHA1 Credential="+accessKey+", SignedHeaders=x-mq-date-time, Signature="+
			strings.ToUpper(hex.EncodeToString(sign(secret, dt))))
	}
	return md
}

// maxAuthorization bounds the header parsed: a real one is about 120 bytes.
const maxAuthorization = 1024

var errBadAuthorization = errors.New("the authorization header is not \"MQv2-HMAC-SHA1 Credential=<AccessKey>, SignedHeaders=x-mq-date-time, Signature=<hex>\"")

// parseAuthorization reads the AccessKey and the signature bytes out of an
// authorization value, as the Apache proxy does (2.2): the algorithm word, then
// comma-separated name=value pairs. The Credential is "AK" (Node) or
// "AK//Rocketmq" (Go, an empty region between the slashes): the AccessKey is what
// precedes the first slash. The signature is hex in either case.
func parseAuthorization(v string) (accessKey string, sig []byte, err error) {
	if len(v) > maxAuthorization {
		return "", nil, errBadAuthorization
	}
	_, rest, ok := strings.Cut(v, " ")
	if !ok {
		return "", nil, errBadAuthorization
	}
	var signature string
	for item := range strings.SplitSeq(rest, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(name) {
		case "Credential":
			accessKey, _, _ = strings.Cut(strings.TrimSpace(value), "/")
		case "Signature":
			signature = strings.TrimSpace(value)
		}
	}
	if accessKey == "" || signature == "" {
		return "", nil, errBadAuthorization
	}
	if sig, err = hex.DecodeString(signature); err != nil || len(sig) != sha1.Size {
		return "", nil, errBadAuthorization
	}
	return accessKey, sig, nil
}

// name returns the broker-side name of a resource the call names: a topic or a
// group of the AccessKey's instance. Its namespace, if any, and the call's
// x-mq-namespace, if any, must both be that instance (6): the Go client sends the
// namespace in both, Node in some resources only.
func (c *call) name(r *pb.Resource, what string, illegal pb.Code) (string, *pb.Status) {
	if r == nil || r.Name == "" {
		return "", statusf(illegal, "the request names no %s", what)
	}
	for _, ns := range []string{c.namespace, r.ResourceNamespace} {
		if err := broker.CheckNamespace(ns, c.instance); err != nil {
			return "", statusf(pb.Code_UNAUTHORIZED, "%s %q: %v", what, r.Name, err)
		}
	}
	return r.Name, nil
}

func (c *call) topic(r *pb.Resource) (string, *pb.Status) {
	return c.name(r, "topic", pb.Code_ILLEGAL_TOPIC)
}

func (c *call) group(r *pb.Resource) (string, *pb.Status) {
	return c.name(r, "consumer group", pb.Code_ILLEGAL_CONSUMER_GROUP)
}
