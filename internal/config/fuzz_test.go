package config

import (
	"context"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the loader. Properties: no panic, no
// hang; a config that loads passes validation again unchanged (validate is
// idempotent on its own output); a failure always carries *Error values.
// Seeds live in testdata/fuzz/FuzzParse, one per edge case: the example
// file, a syntax error, unicode keys and values, huge numbers, deep nesting.
// Host names go to a fake resolver, so the fuzzer never waits on DNS.
// The example seed is large: pass -fuzzminimizetime=3s or the fuzzer spends
// a minute minimising each new input (0 execs/sec meanwhile, not a hang).
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse("fuzz.toml", data, testResolver)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			if len(Errors(err)) == 0 {
				t.Fatalf("error without *Error values: %v", err)
			}
			for _, e := range Errors(err) {
				if e.Line < 0 || e.Line > countLines(data)+1 {
					t.Fatalf("line %d out of the file: %v", e.Line, e)
				}
			}
			return
		}
		if errs := c.validate(context.Background(), testResolver); len(errs) != 0 {
			t.Fatalf("accepted config fails re-validation: %v", errs)
		}
	})
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
