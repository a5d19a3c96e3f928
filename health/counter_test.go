package health

import (
	"strings"
	"testing"
)

// TestCounter runs the reliability notes' test 15 patterns through the pure
// hysteresis with rise=2, fall=3. Results: o = ok, x = fail; the expected
// string has the state after each result, U or D.
func TestCounter(t *testing.T) {
	for _, tc := range []struct{ name, results, states string }{
		{"alternating never goes down", "xoxoxoxoxo", "UUUUUUUUUU"},
		{"two fails then ok", "xxoxxo", "UUUUUU"},
		{"three fails go down", "xxx", "UUD"},
		{"two oks after down", "xxxoo", "UUDDU"},
		{"one ok is not enough", "xxxoxoxo", "UUDDDDDD"},
		{"flap while down", "xxxoxoo", "UUDDDDU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := counter{rise: 2, fall: 3, up: true}
			var got strings.Builder
			transitions := 0
			for _, r := range tc.results {
				changed, up := c.observe(r == 'o')
				if changed {
					transitions++
				}
				got.WriteByte("DU"[b2i(up)])
			}
			if got.String() != tc.states {
				t.Errorf("%s: states %s, want %s", tc.results, got.String(), tc.states)
			}
			if want := countChanges(tc.states); transitions != want {
				t.Errorf("%d transitions reported, want %d", transitions, want)
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func countChanges(states string) int {
	n, prev := 0, byte('U')
	for i := range len(states) {
		if states[i] != prev {
			n++
			prev = states[i]
		}
	}
	return n
}
