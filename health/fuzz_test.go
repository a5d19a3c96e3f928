package health

import (
	"strings"
	"testing"
)

// FuzzParseGreeting feeds arbitrary first packets to the greeting parser: it
// must never panic, and whatever it accepts must start with protocol 10.
// Seeds (testdata/fuzz/FuzzParseGreeting): a real MariaDB greeting, an error
// packet with and without SQL state, a truncated handshake, a version with no
// NUL, protocol 9.
func FuzzParseGreeting(f *testing.F) {
	f.Add([]byte("\x0a11.8.3-MariaDB\x00\x03\x00\x00\x00abcdefgh\x00\xfe\xf7"))
	f.Fuzz(func(t *testing.T, p []byte) {
		v, err := parseGreeting(p)
		if err == nil && (len(p) == 0 || p[0] != 10 || len(v) >= len(p)) {
			t.Fatalf("accepted %q as version %q", p, v)
		}
	})
}

func TestParseGreeting(t *testing.T) {
	for _, tc := range []struct {
		name, in, version, err string
	}{
		{"mariadb", "\x0a11.8.3-MariaDB\x00\x03\x00\x00\x00abcdefgh\x00\xfe\xf7", "11.8.3-MariaDB", ""},
		{"error", "\xff\x6a\x04Host 'x' is not allowed", "", "error packet 1130: Host 'x' is not allowed"},
		{"error with state", "\xff\x10\x04#08004Too many connections", "", "error packet 1040: Too many connections"},
		{"empty", "", "", "empty packet"},
		{"short error", "\xff\x01", "", "short error packet"},
		{"protocol 9", "\x095.0\x00", "", "protocol version 9, want 10"},
		{"no nul", "\x0a5.7.1", "", "not terminated"},
		{"truncated", "\x0a5.7.1\x00\x01\x00", "", "truncated"},
		{"bad filler", "\x0a5.7.1\x00\x03\x00\x00\x00abcdefgh\x01\xfe\xf7", "", "filler"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := parseGreeting([]byte(tc.in))
			if tc.err == "" {
				if err != nil || v != tc.version {
					t.Errorf("got %q, %v; want %q", v, err, tc.version)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %q, %v; want error %q", v, err, tc.err)
			}
		})
	}
}
