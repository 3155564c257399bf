package mqgrpc

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// The worked examples of specs/rocketmq-grpc-protocol.md 2.3.
func TestSignatureOfBothClientForms(t *testing.T) {
	want, _ := hex.DecodeString("2fc1a53315454ac452ebcabea4cf42a74da2ff85")
	if got := sign("SK-example-secret", "20240315T083015Z"); !bytes.Equal(got, want) {
		t.Fatalf("sign = %x, want %x", got, want)
	}
	for _, v := range []string{
		"MQv2-HMAC-SHA1 Credential=AK-example//Rocketmq, SignedHeaders=x-mq-date-time, Signature=2fc1a53315454ac452ebcabea4cf42a74da2ff85", // Go
		"MQv2-HMAC-SHA1 Credential=AK-example, SignedHeaders=x-mq-date-time, Signature=2FC1A53315454AC452EBCABEA4CF42A74DA2FF85",           // Node
		"MQv2-HMAC-SHA1 Signature=2fc1a53315454ac452ebcabea4cf42a74da2ff85,Credential=AK-example/r/Rocketmq",                               // any order, no spaces
	} {
		ak, sig, err := parseAuthorization(v)
		if err != nil || ak != "AK-example" || !bytes.Equal(sig, want) {
			t.Errorf("parseAuthorization(%q) = %q, %x, %v", v, ak, sig, err)
		}
	}
	// A recomputed capture of the Go client (2.3).
	capture, _ := hex.DecodeString("6303b774c2958946835e0cba5752c3dc2f69e3cd")
	if got := sign("SK-demo", "20261202T185117Z"); !bytes.Equal(got, capture) {
		t.Fatalf("sign of the capture = %x", got)
	}
}

func TestMalformedAuthorizationIsRefused(t *testing.T) {
	for _, v := range []string{
		"",
		"MQv2-HMAC-SHA1",
		"MQv2-HMAC-SHA1 Credential=AK",
		"MQv2-HMAC-SHA1 Signature=2fc1a53315454ac452ebcabea4cf42a74da2ff85",
		"MQv2-HMAC-SHA1 Credential=/x, Signature=2fc1a53315454ac452ebcabea4cf42a74da2ff85",
		"MQv2-HMAC-SHA1 Credential=AK, Signature=zz",
		"MQv2-HMAC-SHA1 Credential=AK, Signature=2fc1a5",
		"MQv2-HMAC-SHA1 Credential=AK, Signature=" + string(bytes.Repeat([]byte("a"), 2000)),
	} {
		if ak, _, err := parseAuthorization(v); err == nil {
			t.Errorf("parseAuthorization(%q) accepted, AccessKey %q", v, ak)
		}
	}
}

func FuzzParseAuthorization(f *testing.F) {
	f.Add("MQv2-HMAC-SHA1 Credential=AK-example//Rocketmq, SignedHeaders=x-mq-date-time, Signature=2fc1a53315454ac452ebcabea4cf42a74da2ff85")
	f.Add("MQv2-HMAC-SHA1 Credential=AK, Signature=2FC1A53315454AC452EBCABEA4CF42A74DA2FF85")
	f.Add("x ,,=,Credential==,Signature")
	f.Fuzz(func(t *testing.T, v string) {
		ak, sig, err := parseAuthorization(v)
		if err != nil {
			return
		}
		if ak == "" || len(sig) != 20 {
			t.Fatalf("accepted %q as AccessKey %q, signature %x", v, ak, sig)
		}
	})
}
