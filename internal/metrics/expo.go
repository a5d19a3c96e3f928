package metrics

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The Prometheus text exposition format, version 0.0.4, written by hand:
// l4lb's metrics are all read at scrape time, so what is needed is the
// encoder, not a registry. (The Prometheus client cost every l4lb process
// 2 MiB of resident memory at rest, metrics on or off; see
// docs/PERFORMANCE.md.)

// contentType is what a scrape answers with.
const contentType = "text/plain; version=0.0.4; charset=utf-8"

// kind is a family's TYPE.
type kind string

const (
	counter kind = "counter"
	gauge   kind = "gauge"
)

// family is one metric family: a name, its HELP and TYPE, and the label
// names every series of it has, in order.
type family struct {
	name   string
	help   string
	kind   kind
	labels []string
}

func newFamily(name string, k kind, help string, labels ...string) *family {
	return &family{name: name, help: help, kind: k, labels: labels}
}

// exposition gathers one scrape's series by family, so that each family's
// lines come together under one HELP and TYPE, as the format requires,
// whatever order they are added in.
type exposition struct {
	lines map[*family][]byte
}

func newExposition() *exposition { return &exposition{lines: map[*family][]byte{}} }

// add appends a series of f with the label values lv (as many as f has
// label names) and the value written by val.
func (e *exposition) add(f *family, lv []string, val func([]byte) []byte) {
	if len(lv) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s has %d labels, given %d values", f.name, len(f.labels), len(lv)))
	}
	b := append(e.lines[f], f.name...)
	if len(lv) > 0 {
		b = append(b, '{')
		for i, name := range f.labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, name...)
			b = append(b, `="`...)
			b = appendEscaped(b, lv[i], true)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = val(b)
	e.lines[f] = append(b, '\n')
}

// u64 adds a series with an integer value: exact, where a float64 would
// round a counter above 2^53.
func (e *exposition) u64(f *family, v uint64, lv ...string) {
	e.add(f, lv, func(b []byte) []byte { return strconv.AppendUint(b, v, 10) })
}

// f64 adds a series with a float value.
func (e *exposition) f64(f *family, v float64, lv ...string) {
	e.add(f, lv, func(b []byte) []byte { return appendFloat(b, v) })
}

// writeTo writes the families that have series, those of fams first in
// that order and then any others by name (a family missing from fams is a
// slip, not a reason to hide it), each with its HELP and TYPE.
func (e *exposition) writeTo(w io.Writer, fams []*family) error {
	listed := make(map[*family]bool, len(fams))
	order := make([]*family, 0, len(e.lines))
	for _, f := range fams {
		listed[f] = true
		order = append(order, f)
	}
	var rest []*family
	for f := range e.lines {
		if !listed[f] {
			rest = append(rest, f)
		}
	}
	slices.SortFunc(rest, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	var b []byte
	for _, f := range append(order, rest...) {
		lines := e.lines[f]
		if len(lines) == 0 {
			continue
		}
		b = append(b, "# HELP "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = appendEscaped(b, f.help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, f.name...)
		b = append(b, ' ')
		b = append(b, f.kind...)
		b = append(b, '\n')
		b = append(b, lines...)
	}
	_, err := w.Write(b)
	return err
}

// appendEscaped appends s escaped for a label value (backslash, newline
// and double quote) or for HELP (backslash and newline). Invalid UTF-8,
// which the format does not allow, becomes U+FFFD.
func appendEscaped(b []byte, s string, quote bool) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat appends v as the format spells it: shortest exact decimal,
// +Inf, -Inf, NaN.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
