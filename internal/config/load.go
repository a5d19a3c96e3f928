package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// resolveTimeout bounds all the host name lookups of one Parse.
const resolveTimeout = 10 * time.Second

// resolver is the part of *net.Resolver that Parse needs; tests put a fake in.
type resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Load reads and parses the file at path. See Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data, the contents of the file at path, rejects unknown keys,
// applies defaults, resolves host names and validates. On failure it returns
// nil and an errors.Join of *Error values, one per problem, in file order.
func Parse(path string, data []byte) (*Config, error) {
	return parse(path, data, net.DefaultResolver)
}

func parse(path string, data []byte, r resolver) (*Config, error) {
	p := &problems{file: path, src: data}

	// The generic decode catches syntax errors and gives the tree the schema
	// check walks: TOML's own struct decode stops at the first wrong type,
	// and we want every problem at once.
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: path, Line: pe.Position.Line, Column: pe.Position.Col, Msg: pe.Message}
		}
		return nil, &Error{File: path, Msg: err.Error()}
	}
	s := &schema{p: p, has: map[string]bool{}}
	s.walk(reflect.TypeFor[Config](), raw, "")

	c := &Config{File: path}
	text := string(data)
	if len(p.errs) > 0 {
		// The walk dropped every value of the wrong type; decode what is left.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
			p.add("", fmt.Sprintf("re-encode: %v", err))
			return nil, p.err()
		}
		text = buf.String()
	}
	md, err := toml.Decode(text, c)
	if err != nil {
		p.add("", err.Error())
		return nil, p.err()
	}
	for _, k := range md.Undecoded() {
		// The walk reported most of these already, with array indexes.
		if !s.unknown[k.String()] {
			p.add(k.String(), "unknown key")
		}
	}

	c.setDefaults(func(k string) bool { return s.has[k] })
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	for _, e := range c.validate(ctx, r) {
		if !p.dropped(e.Key) {
			p.errs = append(p.errs, e)
		}
	}
	if len(p.errs) > 0 {
		return nil, p.err()
	}
	return c, nil
}

// problems collects errors and, at the end, places them in the file.
type problems struct {
	file string
	src  []byte
	errs []*Error
	bad  []string // keys whose value was dropped: later errors under them are noise
}

func (p *problems) add(key, msg string) {
	p.errs = append(p.errs, &Error{Key: key, Msg: msg})
}

func (p *problems) err() error {
	lines := locate(p.src)
	var keep []*Error
	for _, e := range p.errs {
		e.File = p.file
		if e.Line == 0 {
			e.Line = lines.find(e.Key)
		}
		keep = append(keep, e)
	}
	// File order, unknown lines last; stable keeps the check order otherwise.
	sort.SliceStable(keep, func(i, j int) bool {
		a, b := keep[i].Line, keep[j].Line
		if a == 0 || b == 0 {
			return a != 0 && b == 0
		}
		return a < b
	})
	errs := make([]error, len(keep))
	for i, e := range keep {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// dropped reports whether key is, or is under, a key whose value the schema
// walk rejected and dropped: a validation error there would repeat it.
func (p *problems) dropped(key string) bool {
	for _, b := range p.bad {
		if key == b || strings.HasPrefix(key, b+".") || strings.HasPrefix(key, b+"[") {
			return true
		}
	}
	return false
}

// schema walks the generic decode against the Go types, reporting unknown keys
// and values of the wrong type (with their array indexes, which TOML's
// MetaData does not give), and dropping the bad values so the struct decode
// that follows succeeds.
type schema struct {
	p       *problems
	has     map[string]bool // key paths present in the file
	unknown map[string]bool // unknown keys reported, without indexes
}

var (
	durationType = reflect.TypeFor[Duration]()
	indexRE      = regexp.MustCompile(`\[[0-9]+\]`)
)

func (s *schema) reject(key, msg string) {
	s.p.add(key, msg)
	s.p.bad = append(s.p.bad, key)
}

// walk checks v against t and reports whether v may stay.
func (s *schema) walk(t reflect.Type, v any, key string) bool {
	if t == durationType {
		var d Duration
		switch x := v.(type) {
		case string:
			if err := d.UnmarshalText([]byte(x)); err != nil {
				s.reject(key, err.Error())
				return false
			}
		case int64, float64:
			s.reject(key, fmt.Sprintf("invalid duration %v: durations are strings like \"2s\"", x))
			return false
		default:
			s.reject(key, fmt.Sprintf("invalid duration: durations are strings like \"2s\", got %s", tomlType(v)))
			return false
		}
		s.has[key] = true
		return true
	}
	ok := true
	switch t.Kind() {
	case reflect.Pointer:
		return s.walk(t.Elem(), v, key)
	case reflect.String:
		_, ok = v.(string)
	case reflect.Int:
		var x int64
		if x, ok = v.(int64); ok && reflect.New(t).Elem().OverflowInt(x) {
			s.reject(key, fmt.Sprintf("%d is out of range", x))
			return false
		}
	case reflect.Bool:
		_, ok = v.(bool)
	case reflect.Struct:
		var m map[string]any
		if m, ok = v.(map[string]any); ok {
			fields := tomlFields(t)
			for _, k := range sortedKeys(m) {
				sub := join(key, k)
				ft, known := fields[k]
				if !known {
					s.reject(sub, "unknown key"+suggest(k, fields))
					if s.unknown == nil {
						s.unknown = map[string]bool{}
					}
					s.unknown[indexRE.ReplaceAllString(sub, "")] = true
					delete(m, k)
					continue
				}
				if !s.walk(ft, m[k], sub) {
					delete(m, k)
				}
			}
		}
	case reflect.Map:
		var m map[string]any
		if m, ok = v.(map[string]any); ok {
			for _, k := range sortedKeys(m) {
				if !s.walk(t.Elem(), m[k], join(key, k)) {
					delete(m, k)
				}
			}
		}
	case reflect.Slice:
		switch x := v.(type) {
		case []any:
			for i := range x {
				if !s.walk(t.Elem(), x[i], index(key, i)) {
					x[i] = zeroTOML(t.Elem())
				}
			}
		case []map[string]any:
			for i := range x {
				if !s.walk(t.Elem(), x[i], index(key, i)) {
					x[i] = map[string]any{}
				}
			}
		default:
			ok = false
		}
	}
	if !ok {
		s.reject(key, fmt.Sprintf("must be %s, got %s", goTOMLType(t), tomlType(v)))
		return false
	}
	s.has[key] = true
	return true
}

// tomlFields maps the TOML keys of struct type t to their field types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	return m
}

// suggest names a known key one or two edits away from k, if there is one.
func suggest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for _, f := range sortedKeys(fields) {
		if d := editDistance(k, f); d < bestD {
			best, bestD = f, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func zeroTOML(t reflect.Type) any {
	switch t.Kind() {
	case reflect.Pointer:
		return zeroTOML(t.Elem())
	case reflect.String:
		return ""
	case reflect.Int:
		return int64(0)
	case reflect.Bool:
		return false
	case reflect.Slice:
		return []any{}
	}
	return map[string]any{}
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a datetime"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%T", v)
}

func goTOMLType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int:
		return "an integer"
	case reflect.Bool:
		return "a boolean (true or false)"
	case reflect.Slice:
		return "an array"
	}
	return "a table"
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }
