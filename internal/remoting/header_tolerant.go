package remoting

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// The tolerant JSON header decoder takes what RocketMQ's Java broker takes
// (docs/remoting.md, "JSON header"): extFields values that are strings, numbers,
// booleans or null; code, version, opaque and flag as numbers or numeric strings;
// a language name or code; a null remark; and any field it does not know. It is the
// fallback of the fast decoder in header.go and agrees with it on everything the fast
// one decodes (FuzzHeaderAgreement). It keeps encoding/json's reading of the JSON
// itself: names matched without regard to case, the last of duplicate fields,
// invalid UTF-8 read as U+FFFD.

// fieldError is a header that was read but holds a value this server cannot use;
// ReadCommand answers its request instead of closing the connection.
type fieldError struct {
	field, problem string
}

func (e *fieldError) Error() string {
	return fmt.Sprintf("header field %s: %s", e.field, e.problem)
}

// tolerantHeader is a JSON header before its values are read.
type tolerantHeader struct {
	Code      json.RawMessage            `json:"code"`
	Language  json.RawMessage            `json:"language"`
	Version   json.RawMessage            `json:"version"`
	Opaque    json.RawMessage            `json:"opaque"`
	Flag      json.RawMessage            `json:"flag"`
	Remark    json.RawMessage            `json:"remark"`
	ExtFields map[string]json.RawMessage `json:"extFields"`
}

// decodeHeaderTolerant decodes a JSON header into cmd. A header that is not a JSON
// object, or whose opaque is not a 32-bit integer, cannot be answered and is an
// error; one that can be answered but holds a value this server cannot use is a
// *fieldError, with cmd filled in as far as it goes.
func decodeHeaderTolerant(data []byte, cmd *Command) error {
	var h tolerantHeader
	var problem *fieldError
	if err := json.Unmarshal(data, &h); err != nil {
		// encoding/json fills in what it can around a value of the wrong type: an
		// extFields that is not an object leaves the rest usable.
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) || typeErr.Field != "extFields" {
			return err
		}
		problem = &fieldError{"extFields", "is " + typeErr.Value + ", not an object"}
	}
	*cmd = Command{}
	opaque, err := integer(h.Opaque, 32)
	if err != nil {
		return fmt.Errorf("opaque: %w", err)
	}
	cmd.Opaque = int32(opaque)
	note := func(field string, err error) {
		if err != nil && problem == nil {
			problem = &fieldError{field, err.Error()}
		}
	}
	// The flag first: it says whether the sender waits for an answer.
	flag, err := integer(h.Flag, 32)
	note("flag", err)
	cmd.Flag = int32(flag)
	code, err := integer(h.Code, 16)
	note("code", err)
	cmd.Code = int16(code)
	version, err := integer(h.Version, 32)
	note("version", err)
	cmd.Version = int32(version)
	cmd.Language, err = language(h.Language)
	note("language", err)
	cmd.Remark, _, err = scalarText(h.Remark)
	note("remark", err)
	if h.ExtFields != nil {
		cmd.ExtFields = make(map[string]string, len(h.ExtFields))
		for k, raw := range h.ExtFields {
			v, present, err := scalarText(raw)
			note(fmt.Sprintf("extFields[%q]", k), err)
			if present {
				cmd.ExtFields[k] = v
			}
		}
	}
	if problem != nil {
		return problem
	}
	return nil
}

var (
	errNotScalar  = errors.New("is an object or an array, not a string, number, boolean or null")
	errNotInteger = errors.New("is not an integer")
)

// scalarText returns a value as the text a client signs for it: a string's
// contents, a number as written, true or false. null is no value (present is
// false), as it is for an absent field.
func scalarText(raw json.RawMessage) (text string, present bool, err error) {
	if len(raw) == 0 {
		return "", false, nil
	}
	switch c := raw[0]; {
	case c == '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return "", false, err
		}
		return text, true, nil
	case c == 'n':
		return "", false, nil
	case c == 't' || c == 'f' || c == '-' || (c >= '0' && c <= '9'):
		// encoding/json has checked that it is true, false or a JSON number.
		return string(raw), true, nil
	}
	return "", false, errNotScalar
}

// integer reads a number or a numeric string that is an integer of bits bits; an
// absent field or null is 0. A number with a fraction or exponent is taken if its
// value is a whole number (10.0, 1e2).
func integer(raw json.RawMessage, bits int) (int64, error) {
	text, present, err := scalarText(raw)
	if err != nil || !present {
		return 0, err
	}
	if raw[0] == 't' || raw[0] == 'f' {
		return 0, errNotInteger
	}
	v, err := strconv.ParseInt(text, 10, bits)
	if err == nil {
		return v, nil
	}
	if raw[0] != '"' {
		// A JSON number that is not written as an integer.
		f, ferr := strconv.ParseFloat(text, 64)
		limit := math.Ldexp(1, bits-1)
		if ferr == nil && f == math.Trunc(f) && f >= -limit && f < limit {
			return int64(f), nil
		}
	}
	if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("%s does not fit %d bits", text, bits)
	}
	return 0, errNotInteger
}

// language reads a language name, or a code as the binary header carries it.
func language(raw json.RawMessage) (string, error) {
	if len(raw) > 0 && (raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')) {
		code, err := integer(raw, 64)
		return languageName(code), err
	}
	if len(raw) > 0 && (raw[0] == 't' || raw[0] == 'f') {
		return "", errors.New("is a boolean, not a name or a code")
	}
	name, _, err := scalarText(raw)
	return name, err
}
