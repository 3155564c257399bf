package remoting

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// The binary ROCKETMQ header, serialize type 1 (1.3; docs/remoting.md, "Binary
// header"). Big-endian throughout:
//
//	+-------+------+---------+--------+-------+-----------+--------+--------+-----------+
//	| code  | lang | version | opaque | flag  | remarkLen | remark | extLen | extFields |
//	| int16 | int8 | int16   | int32  | int32 | int32     | UTF-8  | int32  | extLen    |
//	+-------+------+---------+--------+-------+-----------+--------+--------+-----------+
//
//	extFields: { keyLen int16 | key | valueLen int32 | value } ... filling extLen bytes
//
// Every length is checked against what is left of the header before anything is
// taken, so a header allocates no more than its own size. A zero-length remark or
// value is the empty string (Java reads it as null, which its headers treat as
// absent; the empty string is what the sender had).

// binaryFixed is the size of the fields before the remark.
const binaryFixed = 2 + 1 + 2 + 4 + 4

// maxBinaryKey is the longest extFields key: Java reads key lengths as signed 16
// bits.
const maxBinaryKey = 1<<15 - 1

// languageNames are RocketMQ's LanguageCode values by code, the same in every
// version so far; the binary header carries the code, JSON the name (or, from some
// clients, the code).
var languageNames = [...]string{"JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP", "OMS", "RUST"}

// languageOther is the code of OTHER, which stands for codes and names not in the
// table.
const languageOther = 7

func languageName(code int64) string {
	if code >= 0 && code < int64(len(languageNames)) {
		return languageNames[code]
	}
	return languageNames[languageOther]
}

// languageCode is the code of a language name. The server's own commands, which
// name none, are JAVA's, as a Java broker's are.
func languageCode(name string) byte {
	if name == "" {
		return 0
	}
	if i := slices.Index(languageNames[:], name); i >= 0 {
		return byte(i)
	}
	return languageOther
}

var errBinaryHeader = errors.New("binary header")

// decodeBinaryHeader decodes a ROCKETMQ header into cmd.
func decodeBinaryHeader(data []byte, cmd *Command) error {
	if len(data) < binaryFixed {
		return fmt.Errorf("%w of %d bytes is shorter than its fixed fields", errBinaryHeader, len(data))
	}
	be := binary.BigEndian
	cmd.Code = int16(be.Uint16(data))
	cmd.Language = languageName(int64(data[2]))
	cmd.Version = int32(int16(be.Uint16(data[3:])))
	cmd.Opaque = int32(be.Uint32(data[5:]))
	cmd.Flag = int32(be.Uint32(data[9:]))
	remark, rest, ok := cutLength32(data[binaryFixed:])
	if !ok {
		return fmt.Errorf("%w: the remark's length does not fit the %d bytes after the fixed fields", errBinaryHeader, len(data)-binaryFixed)
	}
	cmd.Remark = string(remark)
	ext, _, ok := cutLength32(rest)
	if !ok {
		return fmt.Errorf("%w: the extFields length does not fit the %d bytes after the remark", errBinaryHeader, len(rest))
	}
	// Whatever follows extFields is not read, as Java does not read it.
	if len(ext) == 0 {
		return nil
	}
	cmd.ExtFields = make(map[string]string)
	for len(ext) > 0 {
		if len(ext) < 2 {
			return fmt.Errorf("%w: %d byte left in extFields, too few for a key length", errBinaryHeader, len(ext))
		}
		n := int16(be.Uint16(ext))
		if n < 0 || int(n) > len(ext)-2 {
			return fmt.Errorf("%w: key length %d with %d bytes left in extFields", errBinaryHeader, n, len(ext)-2)
		}
		key := ext[2 : 2+int(n)]
		var value []byte
		if value, ext, ok = cutLength32(ext[2+int(n):]); !ok {
			return fmt.Errorf("%w: the length of the value of %q does not fit the rest of extFields", errBinaryHeader, key)
		}
		cmd.ExtFields[string(key)] = string(value)
	}
	return nil
}

// cutLength32 splits a field prefixed by its int32 length off the front of b,
// reporting false if the length is negative or more than b holds.
func cutLength32(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := int32(binary.BigEndian.Uint32(b))
	if n < 0 || int64(n) > int64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+int(n)], b[4+int(n):], true
}

// appendBinaryHeader appends c's header in the ROCKETMQ layout, extFields in key
// order.
func appendBinaryHeader(b []byte, c *Command) ([]byte, error) {
	be := binary.BigEndian
	b = be.AppendUint16(b, uint16(c.Code))
	b = append(b, languageCode(c.Language))
	b = be.AppendUint16(b, uint16(c.Version)) // cut to 16 bits, as Java's (short) cast does
	b = be.AppendUint32(b, uint32(c.Opaque))
	b = be.AppendUint32(b, uint32(c.Flag))
	b = be.AppendUint32(b, uint32(len(c.Remark)))
	b = append(b, c.Remark...)
	at := len(b)
	b = append(b, 0, 0, 0, 0) // extLen, once the fields are written
	var buf [24]string
	keys := buf[:0]
	for k := range c.ExtFields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if len(k) > maxBinaryKey {
			return b, fmt.Errorf("extFields key of %d bytes", len(k))
		}
		v := c.ExtFields[k]
		b = be.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
		b = be.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	be.PutUint32(b[at:], uint32(len(b)-at-4))
	return b, nil
}
