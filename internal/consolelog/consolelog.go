// Package consolelog prints zerolog's JSON events as console lines, the
// same bytes as zerolog.ConsoleWriter with NoColor, for an eighth of the
// CPU.
//
// zerolog's ConsoleWriter decodes every event with encoding/json into a
// map of interfaces before printing it: about 10 µs per line here
// (BenchmarkConnectionLine), and with one "connection closed" line per
// connection 15–20 µs of l4lb's CPU per connection (docs/OPERATING.md).
// Writer scans the flat object zerolog writes and copies its values out.
// An event it does not expect (a nested object or array, an unknown level,
// an empty key or timestamp, anything that is not plain JSON) is handed to
// zerolog's ConsoleWriter whole. TestSameAsZerolog, TestSameOnHandWrittenJSON
// and FuzzSameAsZerolog hold the two writers to the same bytes.
//
// Colours are not done here: on a terminal use zerolog.ConsoleWriter
// itself (a person reading does not log thousands of lines a second).
package consolelog

import (
	"bytes"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/rs/zerolog"
)

// Writer writes console lines to Out. TimeFormat is as ConsoleWriter's.
type Writer struct {
	out      io.Writer
	format   string
	fallback zerolog.ConsoleWriter
}

// New returns a Writer to out with the timestamp layout timeFormat.
func New(out io.Writer, timeFormat string) *Writer {
	if timeFormat == "" {
		timeFormat = time.Kitchen // ConsoleWriter's default
	}
	return &Writer{
		out:      out,
		format:   timeFormat,
		fallback: zerolog.ConsoleWriter{Out: out, TimeFormat: timeFormat, NoColor: true},
	}
}

type field struct {
	key string
	raw []byte // the value's JSON text; for a string, unescaped in str
	str string
	isS bool
}

type scratch struct {
	fields []field
	keys   []string
	line   []byte
}

var scratchPool = sync.Pool{New: func() any { return &scratch{} }}

var levels = map[string]string{
	zerolog.LevelTraceValue: "TRC",
	zerolog.LevelDebugValue: "DBG",
	zerolog.LevelInfoValue:  "INF",
	zerolog.LevelWarnValue:  "WRN",
	zerolog.LevelErrorValue: "ERR",
	zerolog.LevelFatalValue: "FTL",
	zerolog.LevelPanicValue: "PNC",
}

// Write prints one event (zerolog writes one per call).
func (w *Writer) Write(p []byte) (int, error) {
	sc := scratchPool.Get().(*scratch)
	defer func() {
		clear(sc.fields) // holds slices of p, which must not be kept
		scratchPool.Put(sc)
	}()
	line, ok := w.format1(sc, p)
	if !ok {
		return w.fallback.Write(p)
	}
	if _, err := w.out.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}

// format1 renders p into sc.line, or reports that it cannot.
func (w *Writer) format1(sc *scratch, p []byte) ([]byte, bool) {
	fields, ok := parse(sc.fields[:0], p)
	sc.fields = fields
	if !ok {
		return nil, false
	}
	// Later duplicates win, as in a decoded map.
	get := func(key string) (field, bool) {
		for i := len(fields) - 1; i >= 0; i-- {
			if fields[i].key == key {
				return fields[i], true
			}
		}
		return field{}, false
	}
	b := sc.line[:0]

	// Parts: timestamp, level, caller, message.
	ts, ok := get(zerolog.TimestampFieldName)
	if !ok || !ts.isS || ts.str == "" {
		return nil, false // "<nil>", a number or nothing to print: leave it to zerolog
	}
	if t, err := time.ParseInLocation(zerolog.TimeFieldFormat, ts.str, time.Local); err == nil {
		b = t.In(time.Local).AppendFormat(b, w.format)
	} else {
		b = append(b, ts.str...)
	}
	lv, ok := get(zerolog.LevelFieldName)
	if !ok || !lv.isS || levels[lv.str] == "" {
		return nil, false
	}
	b = append(b, ' ')
	b = append(b, levels[lv.str]...)
	if _, ok := get(zerolog.CallerFieldName); ok {
		return nil, false
	}
	if m, ok := get(zerolog.MessageFieldName); ok {
		if !m.isS {
			return nil, false
		}
		if m.str != "" {
			b = append(b, ' ')
			b = append(b, m.str...)
		}
	}

	// Fields: sorted by name, error first, each once (the last value).
	keys := sc.keys[:0]
	for _, f := range fields {
		if f.key == "" {
			return nil, false // zerolog drops it, or not, depending on an error field
		}
		switch f.key {
		case zerolog.LevelFieldName, zerolog.TimestampFieldName, zerolog.MessageFieldName, zerolog.CallerFieldName:
			continue
		}
		keys = append(keys, f.key)
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if i, found := slices.BinarySearch(keys, zerolog.ErrorFieldName); found {
		copy(keys[1:i+1], keys[:i])
		keys[0] = zerolog.ErrorFieldName
	}
	sc.keys = keys // kept for the next line
	if len(keys) > 0 {
		b = append(b, ' ')
	}
	for i, k := range keys {
		f, _ := get(k)
		b = append(b, k...)
		b = append(b, '=')
		switch {
		case f.isS && needsQuote(f.str):
			b = strconv.AppendQuote(b, f.str)
		case f.isS:
			b = append(b, f.str...)
		default:
			b = append(b, f.raw...)
		}
		if i < len(keys)-1 {
			b = append(b, ' ')
		}
	}
	b = append(b, '\n')
	sc.line = b
	return b, true
}

// needsQuote is ConsoleWriter's rule for quoting a string value.
func needsQuote(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == ' ' || c == '\\' || c == '"' {
			return true
		}
	}
	return false
}

// parse reads a flat JSON object: string keys, values that are strings,
// numbers, true, false or null. Anything else is not ok.
func parse(fields []field, p []byte) ([]field, bool) {
	p = bytes.TrimRight(p, " \t\r\n")
	i := skipSpace(p, 0)
	if i >= len(p) || p[i] != '{' {
		return fields, false
	}
	i = skipSpace(p, i+1)
	if i < len(p) && p[i] == '}' {
		return fields, skipSpace(p, i+1) == len(p)
	}
	for {
		key, j, ok := readString(p, i)
		if !ok {
			return fields, false
		}
		i = skipSpace(p, j)
		if i >= len(p) || p[i] != ':' {
			return fields, false
		}
		i = skipSpace(p, i+1)
		if i >= len(p) {
			return fields, false
		}
		f := field{key: key}
		switch c := p[i]; {
		case c == '"':
			s, j, ok := readString(p, i)
			if !ok {
				return fields, false
			}
			f.str, f.isS, i = s, true, j
		case c == '-' || (c >= '0' && c <= '9'):
			j, ok := scanNumber(p, i)
			if !ok {
				return fields, false
			}
			f.raw, i = p[i:j], j
		case bytes.HasPrefix(p[i:], []byte("true")):
			f.raw, i = p[i:i+4], i+4
		case bytes.HasPrefix(p[i:], []byte("false")):
			f.raw, i = p[i:i+5], i+5
		case bytes.HasPrefix(p[i:], []byte("null")):
			f.raw, i = p[i:i+4], i+4
		default:
			return fields, false // nested object or array
		}
		fields = append(fields, f)
		i = skipSpace(p, i)
		if i >= len(p) {
			return fields, false
		}
		switch p[i] {
		case ',':
			i = skipSpace(p, i+1)
		case '}':
			return fields, skipSpace(p, i+1) == len(p)
		default:
			return fields, false
		}
	}
}

// scanNumber reads a JSON number (RFC 8259, section 6) at p[i] and returns
// the index after it.
func scanNumber(p []byte, i int) (int, bool) {
	digits := func(i int) int {
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		return i
	}
	if i < len(p) && p[i] == '-' {
		i++
	}
	switch {
	case i < len(p) && p[i] == '0':
		i++
	case i < len(p) && p[i] >= '1' && p[i] <= '9':
		i = digits(i)
	default:
		return 0, false
	}
	if i < len(p) && p[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(p) && (p[i] == 'e' || p[i] == 'E') {
		i++
		if i < len(p) && (p[i] == '+' || p[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func skipSpace(p []byte, i int) int {
	for i < len(p) && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
		i++
	}
	return i
}

// readString reads the JSON string starting at p[i] (a quote) and returns
// it unescaped and the index after it. Invalid UTF-8 and lone surrogates
// become U+FFFD, as encoding/json makes them.
func readString(p []byte, i int) (string, int, bool) {
	if i >= len(p) || p[i] != '"' {
		return "", 0, false
	}
	i++
	start := i
	// The common case: no escapes, valid UTF-8.
	for i < len(p) && p[i] != '"' && p[i] != '\\' && p[i] >= 0x20 && p[i] < utf8.RuneSelf {
		i++
	}
	if i < len(p) && p[i] == '"' {
		return string(p[start:i]), i + 1, true
	}
	var b []byte
	b = append(b, p[start:i]...)
	for i < len(p) {
		c := p[i]
		switch {
		case c == '"':
			return string(b), i + 1, true
		case c < 0x20:
			return "", 0, false
		case c == '\\':
			if i+1 >= len(p) {
				return "", 0, false
			}
			i++
			switch p[i] {
			case '"', '\\', '/':
				b = append(b, p[i])
				i++
			case 'b':
				b, i = append(b, '\b'), i+1
			case 'f':
				b, i = append(b, '\f'), i+1
			case 'n':
				b, i = append(b, '\n'), i+1
			case 'r':
				b, i = append(b, '\r'), i+1
			case 't':
				b, i = append(b, '\t'), i+1
			case 'u':
				r, j, ok := readHex4(p, i+1)
				if !ok {
					return "", 0, false
				}
				i = j
				if utf16.IsSurrogate(r) {
					r2, j2, ok2 := rune(0), 0, false
					if i+1 < len(p) && p[i] == '\\' && p[i+1] == 'u' {
						r2, j2, ok2 = readHex4(p, i+2)
					}
					if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
						r, i = dec, j2
					} else {
						r = utf8.RuneError
					}
				}
				b = utf8.AppendRune(b, r)
			default:
				return "", 0, false
			}
		case c < utf8.RuneSelf:
			b, i = append(b, c), i+1
		default:
			r, size := utf8.DecodeRune(p[i:])
			if r == utf8.RuneError && size == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, p[i:i+size]...)
			}
			i += size
		}
	}
	return "", 0, false
}

func readHex4(p []byte, i int) (rune, int, bool) {
	if i+4 > len(p) {
		return 0, 0, false
	}
	v, err := strconv.ParseUint(string(p[i:i+4]), 16, 32)
	if err != nil {
		return 0, 0, false
	}
	return rune(v), i + 4, true
}
