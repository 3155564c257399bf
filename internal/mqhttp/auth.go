package mqhttp

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"time"
)

// MaxClockSkew is how far a request's Date may be from the server's clock. The SDK
// code does not show the real service's limit; MNS, whose protocol this is, uses
// 15 minutes.
const MaxClockSkew = 15 * time.Minute

// Credentials resolves an AccessKey id to the instance it belongs to and its secret.
type Credentials interface {
	LookupAccessKey(accessKeyID string) (instanceID, secret string, ok bool)
}

// authenticate verifies the request's signature and returns the instance its
// AccessKey belongs to. The string to sign is built from the headers as received and
// the raw request-target: the SDKs order their query parameters differently, and
// rebuilding or sorting it would break one of them.
//
// Choices where the protocol is silent: every authentication failure is a 403 (the
// SDKs only need a non-2xx with an XML code), a missing Date is 400
// MissingDateHeader and a skewed one 408 TimeExpired, as MNS documents them.
func authenticate(r *http.Request, creds Credentials, now time.Time) (string, *Error) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "", &Error{http.StatusForbidden, "MissingAuthorizationHeader", "The request carries no Authorization header."}
	}
	rest, ok := strings.CutPrefix(auth, "MQ ")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i <= 0 || i == len(rest)-1 {
		return "", &Error{http.StatusForbidden, "InvalidAuthorizationHeader", "The Authorization header is not \"MQ AccessKeyId:Signature\"."}
	}
	accessKeyID, signature := rest[:i], rest[i+1:]

	date := r.Header.Get("Date")
	if date == "" {
		return "", &Error{http.StatusBadRequest, "MissingDateHeader", "The request carries no Date header."}
	}
	t, err := http.ParseTime(date)
	if err != nil {
		return "", &Error{http.StatusBadRequest, "InvalidDateHeader", "The Date header is not an RFC 1123 date."}
	}
	if d := now.Sub(t); d > MaxClockSkew || d < -MaxClockSkew {
		return "", &Error{http.StatusRequestTimeout, "TimeExpired", "The http request you sent is expired."}
	}

	instanceID, secret, ok := creds.LookupAccessKey(accessKeyID)
	if !ok {
		return "", &Error{http.StatusForbidden, "InvalidAccessKeyId", "The AccessKey id you provided does not exist."}
	}
	want := sign(secret, stringToSign(r))
	got, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || !hmac.Equal(got, want) {
		// The instance is returned with the refusal, to count it against the
		// instance whose key was used.
		return instanceID, &Error{http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."}
	}
	return instanceID, nil
}

// stringToSign is the canonical string the SDKs sign:
//
//	VERB "\n" Content-MD5 "\n" Content-Type "\n" Date "\n"
//	each x-mq-* header, lowercase name ":" trimmed value "\n", sorted by name
//	raw request-target (path and query exactly as sent)
//
// The security-token header is added after signing by every SDK and is not signed
// (docs/mqhttp.md, "The signature").
func stringToSign(r *http.Request) string {
	var b strings.Builder
	b.Grow(256 + len(r.RequestURI))
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(r.Header.Get("Content-MD5"))
	b.WriteByte('\n')
	b.WriteString(r.Header.Get("Content-Type"))
	b.WriteByte('\n')
	b.WriteString(r.Header.Get("Date"))
	b.WriteByte('\n')
	var names []string
	for name := range r.Header {
		if lower := strings.ToLower(name); strings.HasPrefix(lower, "x-mq-") {
			names = append(names, lower)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(strings.TrimSpace(r.Header.Get(name)))
		b.WriteByte('\n')
	}
	b.WriteString(r.RequestURI)
	return b.String()
}

func encodeSignature(sig []byte) string { return base64.StdEncoding.EncodeToString(sig) }

func sign(secret, stringToSign string) []byte {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(stringToSign))
	return mac.Sum(nil)
}

// checkContentMD5 verifies the Content-MD5 header when there is one. The SDKs put
// base64 of the lowercase hex digest there, not of the raw digest (RFC 1864).
func checkContentMD5(r *http.Request, body []byte) *Error {
	got := r.Header.Get("Content-MD5")
	if got == "" {
		return nil
	}
	sum := md5.Sum(body)
	if got != base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum[:]))) {
		return &Error{http.StatusBadRequest, "InvalidDigest", "The Content-MD5 you specified did not match what we received."}
	}
	return nil
}
