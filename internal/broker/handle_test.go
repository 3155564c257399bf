package broker

import (
	"strings"
	"testing"
)

// TestHandlesKeepTheirWireForm pins both forms byte for byte: handles handed out
// by an earlier version must still be understood after an upgrade.
func TestHandlesKeepTheirWireForm(t *testing.T) {
	for _, c := range []struct {
		h    handle
		want string
	}{
		{handle{kind: receiptHandle, topic: 7, queue: 3, pos: 42, token: 0xDEADBEEF, expiry: 1_700_000_000_000},
			"1" + "00000007" + "00000003" + "000000000000002A" + "00000000DEADBEEF" + "0000018BCFE56800"},
		{handle{kind: transactionHandle, topic: 9, pos: 1234, token: 1, expiry: 5},
			"T" + "00000009" + "00000000000004D2" + "0000000000000001" + "0000000000000005"},
	} {
		if got := c.h.String(); got != c.want {
			t.Errorf("%+v: %s, want %s", c.h, got, c.want)
		}
		back, ok := parseHandle(c.want, c.h.kind)
		if !ok || back != c.h {
			t.Errorf("%s parsed as %+v %v, want %+v", c.want, back, ok, c.h)
		}
		// Neither form passes for the other, nor with a character changed in kind.
		other := byte(receiptHandle)
		if c.h.kind == receiptHandle {
			other = transactionHandle
		}
		if _, ok := parseHandle(c.want, other); ok {
			t.Errorf("%s parsed as the other kind", c.want)
		}
		if _, ok := parseHandle(c.want[:len(c.want)-1]+"G", c.h.kind); ok {
			t.Errorf("a handle with a non-hex digit parsed")
		}
	}
}

func FuzzParseHandle(f *testing.F) {
	f.Add("1" + strings.Repeat("0", 64))
	f.Add("T" + strings.Repeat("A", 56))
	f.Add("1zz")
	f.Fuzz(func(t *testing.T, s string) {
		for _, kind := range []byte{receiptHandle, transactionHandle} {
			h, ok := parseHandle(s, kind)
			if !ok {
				continue
			}
			if !strings.EqualFold(h.String(), s) {
				t.Fatalf("%q parsed as %+v, which prints %q", s, h, h.String())
			}
			if back, ok := parseHandle(h.String(), kind); !ok || back != h {
				t.Fatalf("%+v does not survive its own form", h)
			}
		}
	})
}
