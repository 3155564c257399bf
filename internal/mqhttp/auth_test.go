package mqhttp

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The signature test vectors of the protocol spec (§5.5): the Node SDK's own unit
// test and three captured SDK requests.
func TestSignatureVectors(t *testing.T) {
	for _, tc := range []struct {
		name, secret, sts, want string
	}{
		{"node unit test", "ACCESS_KEY_SECRET",
			"PUT\n574683b3684e3cff610afa155cc2506d\ntext/xml\nTue, 11 Apr 2017 10:09:19 GMT\nx-mq-version:2015-06-06\n/",
			"G7NRBqmP9XfhTJ/pV3AgYQtXaaU="},
		{"go get", "testsecret",
			"GET\nZDQxZDhjZDk4ZjAwYjIwNGU5ODAwOTk4ZWNmODQyN2U=\ntext/xml;charset=utf-8\nSat, 21 Nov 2026 09:44:14 GMT\nx-mq-version:2015-06-06\n/topics/T1/messages?consumer=GID_1&ns=MQ_INST_123_abc&numOfMessages=3&waitseconds=3&tag=TagA%7C%7CTag+B",
			"3z4jxC1oFIzvVr3Wvr8sfdXlCvM="},
		{"go post", "testsecret",
			"POST\nYmU0NjJjYmU1NDEwNzE4MDhjMDA5ZGJkYWI5OWE3ZGE=\ntext/xml;charset=utf-8\nSat, 21 Nov 2026 09:44:14 GMT\nx-mq-version:2015-06-06\n/topics/T1/messages?ns=MQ_INST_123_abc",
			"I0tZ1WtU/aGK45nbxKtMlPu+hgY="},
		{"python get", "testsecret",
			"GET\n\n\nSat, 21 Nov 2026 09:44:30 GMT\nx-mq-version:2015-06-06\n/topics/T1/messages?consumer=GID_1&numOfMessages=3&ns=MQ_INST_123_abc&waitseconds=3&tag=TagA%7C%7CTag%20B",
			"K6kYvbG42+EF/7aipnb45yVJpWY="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := base64.StdEncoding.EncodeToString(sign(tc.secret, tc.sts)); got != tc.want {
				t.Fatalf("signature %s, want %s", got, tc.want)
			}
		})
	}
}

type staticCreds map[string]string

func (c staticCreds) LookupAccessKey(ak string) (string, string, bool) {
	sk, ok := c[ak]
	return "MQ_INST_x", sk, ok
}

// TestStringToSignFromARequest rebuilds the captured Python GET from an http.Request
// (no Content-Type, no Content-MD5, raw query) and checks the signature verifies.
func TestStringToSignFromARequest(t *testing.T) {
	target := "/topics/T1/messages?consumer=GID_1&numOfMessages=3&ns=MQ_INST_123_abc&waitseconds=3&tag=TagA%7C%7CTag%20B"
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r.Header.Set("Date", "Sat, 21 Nov 2026 09:44:30 GMT")
	r.Header.Set("x-mq-version", "2015-06-06")
	r.Header.Set("security-token", "not signed")
	r.Header.Set("Authorization", "MQ testak:K6kYvbG42+EF/7aipnb45yVJpWY=")
	now, _ := http.ParseTime("Sat, 21 Nov 2026 09:50:00 GMT")
	if inst, e := authenticate(r, staticCreds{"testak": "testsecret"}, now); e != nil || inst != "MQ_INST_x" {
		t.Fatalf("authenticate = %q, %v", inst, e)
	}
	// The same request an hour later is past the clock-skew limit.
	if _, e := authenticate(r, staticCreds{"testak": "testsecret"}, now.Add(time.Hour)); e == nil || e.Code != "TimeExpired" {
		t.Fatalf("skewed date: %v", e)
	}
	// Any change to the signed resource breaks it.
	r2 := httptest.NewRequest(http.MethodGet, strings.Replace(target, "GID_1", "GID_2", 1), nil)
	r2.Header = r.Header.Clone()
	if _, e := authenticate(r2, staticCreds{"testak": "testsecret"}, now); e == nil || e.Code != "SignatureDoesNotMatch" {
		t.Fatalf("altered query: %v", e)
	}
	for header, code := range map[string]string{"": "MissingAuthorizationHeader", "Basic abc": "InvalidAuthorizationHeader", "MQ nokey": "InvalidAuthorizationHeader"} {
		r3 := httptest.NewRequest(http.MethodGet, target, nil)
		r3.Header = r.Header.Clone()
		r3.Header.Set("Authorization", header)
		if _, e := authenticate(r3, staticCreds{"testak": "testsecret"}, now); e == nil || e.Code != code || e.Status != http.StatusForbidden {
			t.Fatalf("Authorization %q: %v, want %s", header, e, code)
		}
	}
}

func TestContentMD5(t *testing.T) {
	body := []byte(`<Message><MessageBody>b2</MessageBody><Properties>a:1|KEYS:key1|__STARTDELIVERTIME:1609826458000|__SHARDINGKEY:sk1|</Properties></Message>`)
	r := httptest.NewRequest(http.MethodPost, "/topics/T1/messages", nil)
	r.Header.Set("Content-MD5", "YmU0NjJjYmU1NDEwNzE4MDhjMDA5ZGJkYWI5OWE3ZGE=") // captured from the Go SDK
	if e := checkContentMD5(r, body); e != nil {
		t.Fatalf("captured digest refused: %v", e)
	}
	if e := checkContentMD5(r, append(body, ' ')); e == nil || e.Code != "InvalidDigest" {
		t.Fatalf("wrong digest: %v", e)
	}
}

func TestParseProperties(t *testing.T) {
	got := parseProperties("a:1|KEYS:key1||bad|x:y:z|:v|k:|__SHARDINGKEY:sk1")
	want := map[string]string{"a": "1", "KEYS": "key1", "__SHARDINGKEY": "sk1"}
	if len(got) != len(want) {
		t.Fatalf("parsed %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("parsed %v, want %v", got, want)
		}
	}
}
