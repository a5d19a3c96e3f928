package consolelog

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Every event is printed exactly as zerolog's ConsoleWriter (NoColor)
// prints it: the lines l4lb logs, and random events with awkward strings,
// numbers, booleans, duplicate keys, an error field, nested values (which
// go to zerolog's writer) and every level. (zerolog's encoder writes only
// valid JSON with valid UTF-8; TestSameOnHandWrittenJSON and the fuzz
// target cover the rest.)
func TestSameAsZerolog(t *testing.T) {
	var events [][]byte
	var raw bytes.Buffer
	lg := zerolog.New(&lineSplitter{&events, &raw}).With().Timestamp().Logger()
	lg.Info().Str("listener", "redis").Str("client", "10.0.0.7:51234").Str("upstream", "redis").
		Str("pool", "primary").Str("host", "r1").Uint64("bytes_up", 1234).Uint64("bytes_down", 56789).
		Float64("duration", 12.5).Str("end", "closed").Bool("spliced", true).Msg("connection closed")
	lg.Warn().Str("pool", "primary").Str("host", "app-1").Str("reason", "1 failed connect in 10s: connection refused").Msg("host down")
	lg.Error().Err(errors.New("dial tcp 127.0.0.1:1: connect: connection refused")).Int("try", 1).Msg("connect failed")
	lg.Info().Msg("")
	lg.Debug().Str("x", "y").Send()
	lg.Info().Dur("duration", 1500*time.Millisecond).Msg("stopped")
	lg.Info().Strs("list", []string{"a", "b c"}).Msg("nested: zerolog's writer")
	lg.Info().Dict("d", zerolog.Dict().Str("k", "v")).Msg("nested object")
	lg.Info().Str("dup", "first").Str("dup", "second").Msg("duplicate key")

	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"", " ", "a", "Z9", "\"", "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "日本", "\xff", "\xed\xa0\x80", "😀", "=", "{", "}", ",", ":", "/"}
	str := func() string {
		var b strings.Builder
		for range rng.IntN(6) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	keys := []string{"a", "b", "error", "zeta", "host", "Upper", "é", "with space", "q\"uote"}
	levels := []zerolog.Level{zerolog.TraceLevel, zerolog.DebugLevel, zerolog.InfoLevel, zerolog.WarnLevel, zerolog.ErrorLevel, zerolog.FatalLevel, zerolog.PanicLevel}
	for range 3000 {
		e := lg.WithLevel(levels[rng.IntN(len(levels))])
		for range rng.IntN(6) {
			k := keys[rng.IntN(len(keys))]
			switch rng.IntN(6) {
			case 0:
				e = e.Int64(k, rng.Int64()-rng.Int64())
			case 1:
				e = e.Float64(k, rng.NormFloat64()*1e6)
			case 2:
				e = e.Bool(k, rng.IntN(2) == 0)
			case 3:
				e = e.Interface(k, nil)
			default:
				e = e.Str(k, str())
			}
		}
		e.Msg(str())
	}

	fast := 0
	for i, ev := range events {
		if _, ok := New(nil, "15:04:05.000").format1(&scratch{}, ev); ok {
			fast++
		}
		var want, got bytes.Buffer
		if _, err := (zerolog.ConsoleWriter{Out: &want, TimeFormat: "15:04:05.000", NoColor: true}).Write(ev); err != nil {
			t.Fatalf("event %d %q: zerolog: %v", i, ev, err)
		}
		n, err := New(&got, "15:04:05.000").Write(ev)
		if err != nil || n != len(ev) {
			t.Fatalf("event %d %q: wrote %d (%v), want %d", i, ev, n, err, len(ev))
		}
		if got.String() != want.String() {
			t.Fatalf("event %d %q:\n got %q\nwant %q", i, ev, got.String(), want.String())
		}
	}
	// Only the two nested events may have gone to zerolog's writer.
	if fast < len(events)-2 {
		t.Errorf("%d of %d events took the fast path, want all but 2", fast, len(events))
	}
}

// handWritten are events zerolog's encoder would not write but a JSON
// writer could (RawJSON, another encoder): escapes, invalid UTF-8, lone and
// reversed surrogates, odd numbers, empty and reserved keys, empty time.
var handWritten = []string{
	`{"level":"info","time":"2026-12-02T07:22:51Z","message":"esc \/ \b \f \r \t \n \" \\ \u00e9 \u0000"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","s":"\ud83d\ude00 pair","t":"\uD83D\uDE00 upper"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","s":"lone \ud83d x","t":"rev \ude00\ud83d","u":"hi \ud83d\u0041"}`,
	"{\"level\":\"info\",\"time\":\"2026-12-02T07:22:51Z\",\"s\":\"raw \xff\xfe bad \xed\xa0\x80 sur\"}",
	`{"level":"info","time":"2026-12-02T07:22:51Z","a":-0,"b":1e+06,"c":1E-7,"d":0.5,"e":-12.25e3}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","n":01}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","n":1.2.3}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","n":-}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","n":1.}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","n":.5}`,
	`{"level":"info","time":"","message":"empty time"}`,
	`{"level":"info","time":"not a time","message":"bad time"}`,
	`{"level":"info","time":"2026-12-02T07:22:51+05:00","time":"2026-12-02T08:00:00Z","message":"dup time"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","error":"e","":"empty"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","":"empty, no error"}`,
	`{"level":"warn","level":"error","time":"2026-12-02T07:22:51Z","message":"dup level"}`,
	`{"level":"fatal","time":"2026-12-02T07:22:51Z"}`,
	`{"level":"panic","time":"2026-12-02T07:22:51Z","message":null}`,
	`{"level":"INFO","time":"2026-12-02T07:22:51Z"}`,
	`{"time":"2026-12-02T07:22:51Z","message":"no level"}`,
	"{\"level\":\"info\",\"time\":\"2026-12-02T07:22:51Z\",\"message\":\"raw\nnewline\"}",
	`{"level":"info","time":"2026-12-02T07:22:51Z","message":"escaped\nnewline","caller":"x.go:1"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","k\u0001ey":"v","q\"k":"v"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","message":"two"}{"level":"info"}`,
	`{"level":"info","time":"2026-12-02T07:22:51Z","message":"trailing"} x`,
	"{\"level\":\"info\",\"time\":\"2026-12-02T07:22:51Z\",\"message\":\"crlf\"}\r\n",
	`{"level":"info","time":1764660171,"message":"unix time"}`,
	`{}`, `[]`, ``, `{"level":"info","time":"2026-12-02T07:22:51Z","v":tru}`,
}

// Events written by hand go through both writers to the same bytes (or,
// where zerolog cannot read them, both fail).
func TestSameOnHandWrittenJSON(t *testing.T) {
	for _, ev := range handWritten {
		sameAsZerolog(t, []byte(ev))
	}
}

// FuzzSameAsZerolog: any input, the same output as zerolog's writer.
func FuzzSameAsZerolog(f *testing.F) {
	for _, ev := range handWritten {
		f.Add([]byte(ev))
	}
	f.Fuzz(func(t *testing.T, ev []byte) { sameAsZerolog(t, ev) })
}

func sameAsZerolog(t *testing.T, ev []byte) {
	t.Helper()
	var want, got bytes.Buffer
	_, werr := (zerolog.ConsoleWriter{Out: &want, TimeFormat: "15:04:05.000", NoColor: true}).Write(ev)
	_, gerr := New(&got, "15:04:05.000").Write(ev)
	if (werr == nil) != (gerr == nil) || got.String() != want.String() {
		t.Errorf("%q:\n got %q (%v)\nwant %q (%v)", ev, got.String(), gerr, want.String(), werr)
	}
}

// The fast path is taken for l4lb's own lines (nothing to fall back on).
func TestFastPathTaken(t *testing.T) {
	line := []byte(`{"level":"info","listener":"redis","client":"10.0.0.7:51234","bytes_up":1234,"spliced":true,"error":"x y","time":"2026-12-02T07:22:51Z","message":"connection closed"}` + "\n")
	var sc scratch
	if _, ok := New(nil, "15:04:05.000").format1(&sc, line); !ok {
		t.Fatal("fell back to zerolog's writer")
	}
	for _, bad := range []string{`{"level":"info","a":[1],"time":"x"}`, `{"level":"info","a":{"b":1},"time":"x"}`, `{"level":"nope","time":"x"}`, `{}`, `[1]`, `{"level":"info","time":"x"`} {
		if _, ok := New(nil, "15:04:05.000").format1(&sc, []byte(bad)); ok {
			t.Errorf("%s: taken by the fast path", bad)
		}
	}
}

// lineSplitter keeps each event zerolog writes.
type lineSplitter struct {
	events *[][]byte
	all    *bytes.Buffer
}

func (l *lineSplitter) Write(p []byte) (int, error) {
	*l.events = append(*l.events, bytes.Clone(p))
	l.all.Write(p)
	return len(p), nil
}

func BenchmarkConnectionLine(b *testing.B) {
	line := []byte(`{"level":"info","listener":"redis","client":"10.0.0.7:51234","upstream":"redis","pool":"primary","host":"r1","bytes_up":1234,"bytes_down":56789,"duration":12.5,"end":"closed","spliced":true,"time":"2026-12-02T07:22:51Z","message":"connection closed"}` + "\n")
	b.Run("consolelog", func(b *testing.B) {
		w := New(discard{}, "15:04:05.000")
		b.ReportAllocs()
		for b.Loop() {
			w.Write(line)
		}
	})
	b.Run("zerolog.ConsoleWriter", func(b *testing.B) {
		w := zerolog.ConsoleWriter{Out: discard{}, TimeFormat: "15:04:05.000", NoColor: true}
		b.ReportAllocs()
		for b.Loop() {
			w.Write(line)
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
