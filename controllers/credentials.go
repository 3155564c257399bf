package controllers

import (
	"crypto/rand"
	"fmt"

	"github.com/orderly-dev/orderly/internal/broker"
)

const alphanumeric = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newCredential generates an AccessKey pair shaped like the cloud's (an id of 24 and a
// secret of 30 alphanumeric characters), so applications that validate key lengths
// accept it.
func newCredential() (broker.Credential, error) {
	id, err := randomString(20)
	if err != nil {
		return broker.Credential{}, err
	}
	secret, err := randomString(30)
	if err != nil {
		return broker.Credential{}, err
	}
	return broker.Credential{AccessKeyID: "ORDL" + id, AccessKeySecret: secret}, nil
}

// randomString returns n characters drawn uniformly from alphanumeric with crypto/rand.
func randomString(n int) (string, error) {
	out := make([]byte, 0, n)
	var buf [64]byte
	for len(out) < n {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("failed to generate credentials: %w", err)
		}
		for _, b := range buf {
			// Rejection sampling: 248 is the largest multiple of 62 below 256, so every
			// character is equally likely.
			if b < 248 && len(out) < n {
				out = append(out, alphanumeric[int(b)%len(alphanumeric)])
			}
		}
	}
	return string(out), nil
}

// secretLabels marks the Secrets this operator creates; the manager's cache holds only
// Secrets carrying them.
func secretLabels(inst interface{ GetName() string }) map[string]string {
	return map[string]string{
		ManagedByLabel:            ManagedByValue,
		"mq.orderly.dev/instance": inst.GetName(),
	}
}

// ManagedByLabel and ManagedByValue label every object the operator creates.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "orderly"
)
