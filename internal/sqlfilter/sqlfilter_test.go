package sqlfilter

import (
	"strings"
	"testing"
)

func props(kv ...string) Properties {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		expr  string
		props []string
		want  bool
	}{
		// RocketMQ's own example (example/filter/SqlFilterConsumer): numbers sent
		// as strings compare as numbers.
		{"(TAGS is not null and TAGS in ('TagA', 'TagB')) and (a is not null and a between 0 and 3)", []string{"TAGS", "TagA", "a", "2"}, true},
		{"(TAGS is not null and TAGS in ('TagA', 'TagB')) and (a is not null and a between 0 and 3)", []string{"TAGS", "TagC", "a", "2"}, false},
		{"(TAGS is not null and TAGS in ('TagA', 'TagB')) and (a is not null and a between 0 and 3)", []string{"TAGS", "TagB", "a", "4"}, false},
		{"(TAGS is not null and TAGS in ('TagA', 'TagB')) and (a is not null and a between 0 and 3)", []string{"TAGS", "TagB"}, false},

		{"a > 5", []string{"a", "10"}, true},
		{"a > 5", []string{"a", "5"}, false},
		{"a >= 5", []string{"a", "5"}, true},
		{"a < 5.5", []string{"a", "5.25"}, true},
		{"a <= -1", []string{"a", "-1"}, true},
		{"a > 5", []string{}, false},                          // missing: unknown
		{"a > 5", []string{"a", "x"}, false},                  // not a number: the message is not selected
		{"a > 3", []string{"a", "3.5"}, false},                // an integer constant wants an integer
		{"a > 3.0", []string{"a", "3.5"}, true},               // a floating one takes either
		{"a = 3", []string{"a", "03"}, true},                  // as Java's Integer.valueOf reads it
		{"a = 3", []string{"a", "3.0"}, false},                // ... and not this
		{"a > 5", []string{"a", "3000000000"}, false},         // a 32-bit constant reads 32 bits
		{"a > 5000000000", []string{"a", "6000000000"}, true}, // a 64-bit one 64
		{"a < 5000000000", []string{"a", "3000000000"}, true},
		// A property meeting a floating constant is read as Java's Double.valueOf
		// reads it, and ordered as Double.compare orders: NaN above everything.
		{"a > 1.0", []string{"a", "NaN"}, true},
		{"a < 1.0", []string{"a", "NaN"}, false},
		{"a = 1.0", []string{"a", "NaN"}, false},
		{"a BETWEEN 0.0 AND 1.0", []string{"a", "NaN"}, false},
		{"a > 1.0", []string{"a", "Infinity"}, true},
		{"a < 1.0", []string{"a", "-Infinity"}, true},
		{"a > 1.0", []string{"a", "1e999"}, true},   // Infinity, not an error
		{"a < 1e999", []string{"a", "1e300"}, true}, // a literal past the largest double is Infinity too
		{"a = 1e999", []string{"a", "Infinity"}, true},
		{"a > 1.0", []string{"a", "2.5d"}, true}, // Java's suffix
		{"a > 1.0", []string{"a", " 2.5\t"}, true},
		{"a = 0.0", []string{"a", "-0.0"}, false}, // Double.equals tells the zeros apart
		{"a < 0.0", []string{"a", "-0.0"}, true},
		{"a > 1.0", []string{"a", "nan"}, false}, // Go's spellings Java refuses
		{"a > 1.0", []string{"a", "inf"}, false},
		{"a > 1.0", []string{"a", "+Inf"}, false},
		{"a > 1.0", []string{"a", "infinity"}, false},
		{"a > 1.0", []string{"a", "2_5"}, false},
		{"a > 1.0", []string{"a", "+-2"}, false},
		{"a > b", []string{"a", "NaN", "b", "1"}, true},
		{"a = '3'", []string{"a", "3"}, true},  // strings compare as strings
		{"a = 'x'", []string{"a", "X"}, false}, // case-sensitively
		{"a <> 'x'", []string{"a", "y"}, true}, //
		{"a <> 'x'", []string{}, false},        // NOT of unknown is unknown
		{"'x' <> a", []string{}, true},         // RocketMQ's asymmetry: constant = missing is FALSE
		{"a = b", []string{"a", "1", "b", "1"}, true},
		{"a > b", []string{"a", "2", "b", "10"}, false}, // two properties order as numbers
		{"a > b", []string{"a", "x", "b", "10"}, false},
		{"flag = TRUE", []string{"flag", "True"}, true},
		{"flag = TRUE", []string{"flag", "yes"}, false},
		{"flag = FALSE", []string{"flag", "no"}, true},
		{"TRUE", nil, true},
		{"FALSE OR TRUE", nil, true},
		{"a", []string{"a", "true"}, false}, // a property as a condition is FALSE
		{"NOT a", []string{"a", "x"}, true}, // ... so its NOT is TRUE
		{"NOT a", nil, false},               // and unknown when missing
		{"a IS NULL", nil, true},
		{"a IS NULL", []string{"a", ""}, false},
		{"a IS NOT NULL", []string{"a", ""}, true},
		{"a IN ('x', 'y')", []string{"a", "y"}, true},
		{"a IN ('x', 'y')", []string{"a", "z"}, false},
		{"a NOT IN ('x', 'y')", []string{"a", "z"}, true},
		{"a NOT IN ('x', 'y')", nil, false},
		{"a BETWEEN 1 AND 3", []string{"a", "3"}, true},
		{"a NOT BETWEEN 1 AND 3", []string{"a", "4"}, true},
		{"a NOT BETWEEN 1 AND 3", []string{"a", "2"}, false},
		{"a CONTAINS 'ell'", []string{"a", "hello"}, true},
		{"a CONTAINS 'ELL'", []string{"a", "hello"}, false},
		{"a NOT CONTAINS 'x'", []string{"a", "hello"}, true},
		{"a NOT CONTAINS 'x'", nil, false}, // missing: FALSE in both forms
		{"a CONTAINS ''", []string{"a", "hello"}, false},
		{"a STARTSWITH 'he'", []string{"a", "hello"}, true},
		{"a ENDSWITH 'lo'", []string{"a", "hello"}, true},
		{"a NOT ENDSWITH 'lo'", []string{"a", "hello"}, false},
		{"a = 'it''s'", []string{"a", "it's"}, true},
		{"a = 1 OR b = 2", []string{"b", "2"}, true},            // unknown OR TRUE
		{"a = 1 AND b = 2", []string{"b", "2"}, false},          // unknown AND TRUE
		{"a = 1 OR b = 2", []string{"b", "3"}, false},           // unknown OR FALSE
		{"b = 3 OR a > 1", []string{"b", "3", "a", "x"}, true},  // short-circuit before the bad value
		{"a > 1 OR b = 3", []string{"b", "3", "a", "x"}, false}, // the bad value first: not selected
		{"x = 1 and y = 2 or z = 3", []string{"z", "3"}, true},
		{"x = 1 and (y = 2 or z = 3)", []string{"z", "3"}, false},
		{"a = -5", []string{"a", "-5"}, true},
		{"a > 1e3", []string{"a", "1001"}, true},
		{"a = 10L", []string{"a", "10"}, true},
		{"$a_1 = 1", []string{"$a_1", "1"}, true},
		{"a = 1 -- a comment\n AND b = 2 /* another */", []string{"a", "1", "b", "2"}, true},
		{"a = 1 and not (b = 2)", []string{"a", "1", "b", "3"}, true},
	} {
		e, err := Parse(tc.expr)
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		if got := e.Match(props(tc.props...)); got != tc.want {
			t.Errorf("%q with %v: %v, want %v", tc.expr, tc.props, got, tc.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for expr, want := range map[string]string{
		"":                         "empty",
		"   ":                      "empty",
		"a = NULL":                 "IS NULL",
		"a > 'x'":                  "not one",
		"a > TRUE":                 "not a condition",
		"a < (b = 1)":              "not a condition",
		"a BETWEEN 3 AND 1":        "low bound",
		"a BETWEEN NULL AND 1":     "NULL bound",
		"a BETWEEN 1":              "AND of BETWEEN",
		"1 IN ('x')":               "property on its left",
		"a IN (1, 2)":              "lists strings",
		"a IN ()":                  "lists strings",
		"a IN ('x'":                ", or )",
		"a CONTAINS b":             "takes a string",
		"a != 1":                   "<>",
		"a = 'x":                   "not closed",
		"a = 1 /* x":               "not closed",
		"a = 1 b":                  "unexpected",
		"(a = 1":                   "expected )",
		"a =":                      "expected a property",
		"a IS 1":                   "expected NULL",
		"a = 99999999999999999999": "out of range",
		"a = 007":                  "leading zero",
		"a = 1x":                   "after number",
		"a.b = 1":                  "unexpected character",
		"TRUE = 1":                 "compares a boolean",
		"a = 1 AND":                "expected a property",
	} {
		_, err := Parse(expr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", expr, err, want)
		}
	}
	if _, err := Parse(strings.Repeat("(", 100) + "a = 1" + strings.Repeat(")", 100)); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("deep nesting: %v", err)
	}
	if _, err := Parse(strings.Repeat("NOT ", 100) + "a"); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("deep NOTs: %v", err)
	}
	if _, err := Parse(strings.Repeat("a = 1 OR ", 32) + "a = 1"); err == nil || !strings.Contains(err.Error(), "more than 64") {
		t.Errorf("66 leaves: %v", err)
	}
	if _, err := Parse(strings.Repeat("a = 1 OR ", 31) + "a = 1"); err != nil {
		t.Errorf("64 leaves: %v", err)
	}
	if _, err := Parse("a IN ('" + strings.Repeat("x', '", 1000) + "y')"); err != nil {
		t.Errorf("an IN list of 1001 strings: %v", err)
	}
	if _, err := Parse(strings.Repeat("(", 3000)); err == nil || !strings.Contains(err.Error(), "tokens") {
		t.Errorf("3000 parentheses: %v", err)
	}
	if _, err := Parse("a = '" + strings.Repeat("x", MaxLength) + "'"); err == nil {
		t.Error("an expression over MaxLength was accepted")
	}
}

func TestKeywordsAreCaseInsensitive(t *testing.T) {
	e, err := Parse("a Is Not Null AnD a bEtWeEn 1 aNd 3 oR b iN ('x')")
	if err != nil {
		t.Fatal(err)
	}
	if !e.Match(props("a", "2")) || !e.Match(props("b", "x")) || e.Match(props("a", "5")) {
		t.Fatal("mixed-case keywords do not evaluate as keywords")
	}
	if e.String() != "a Is Not Null AnD a bEtWeEn 1 aNd 3 oR b iN ('x')" {
		t.Fatalf("String() = %q", e.String())
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"(TAGS is not null and TAGS in ('TagA', 'TagB')) and (a is not null and a between 0 and 3)",
		"a > 5.5e3 OR NOT b CONTAINS 'x' AND c NOT IN ('1','2')", "- - 1 = a", "a = 'it''s' /* c */ -- d",
		"NOT NOT a IS NULL", "a <> b", "TRUE", "x STARTSWITH 'a' or y ENDSWITH 'b'",
	} {
		f.Add(s, "a", "1")
	}
	f.Fuzz(func(t *testing.T, expr, name, val string) {
		e, err := Parse(expr)
		if err != nil {
			return
		}
		_ = e.Match(props(name, val))
		_ = e.Match(props())
		if e.String() != expr {
			t.Fatalf("String() = %q, parsed %q", e.String(), expr)
		}
	})
}

// BenchmarkMatch: a typical subscription, and the costliest the bounds allow
// (every leaf a comparison the message makes the evaluator go through).
func BenchmarkMatch(b *testing.B) {
	get := props("TAGS", "TagA", "a", "7", "region", "eu-west", "KEYS", "k1 k2")
	for name, expr := range map[string]string{
		"typical": "TAGS IN ('TagA', 'TagB') AND a BETWEEN 1 AND 10 AND region STARTSWITH 'eu'",
		"largest": strings.Repeat("a = 1 OR ", 31) + "a = 2",
	} {
		e, err := Parse(expr)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				e.Match(get)
			}
		})
	}
}
