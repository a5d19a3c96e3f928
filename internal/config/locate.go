package config

import "strings"

// BurntSushi/toml keeps key positions private, so errors found after decoding
// get their line from this scanner. It reads the source once and notes the line
// of every key path as Error.Key spells it ("listener[1].connect_timeout",
// "upstream.redis.pool[0].hosts[1].weight"): table and array-of-tables
// headers (counting occurrences for the index), key = value lines, dotted
// keys, and elements of inline arrays and tables. It only runs on text TOML
// has already accepted, so it can be lenient; on anything it does not follow
// it skips to the next line. Best effort: 0 means "not found".

// lines maps key paths to 1-based line numbers.
type lines map[string]int

// maxDepth bounds nesting of inline arrays and tables.
const maxDepth = 64

func locate(src []byte) lines {
	l := &locator{s: src, line: 1, pos: lines{}, arrays: map[string]int{}}
	l.run()
	return l.pos
}

// find returns the line of key, or of its nearest ancestor the file names
// (a missing key is reported at its table), or 0.
func (ls lines) find(key string) int {
	for key != "" {
		if n, ok := ls[key]; ok {
			return n
		}
		key = parentKey(key)
	}
	return 0
}

func parentKey(k string) string {
	if strings.HasSuffix(k, "]") {
		if i := strings.LastIndexByte(k, '['); i >= 0 {
			return k[:i]
		}
	}
	if i := strings.LastIndexByte(k, '.'); i >= 0 {
		return k[:i]
	}
	return ""
}

type locator struct {
	s      []byte
	i      int
	line   int
	pos    lines
	arrays map[string]int // [[header]] occurrences per resolved path
	table  string         // the current table's path
}

func (l *locator) eof() bool { return l.i >= len(l.s) }

func (l *locator) peek(off int) byte {
	if l.i+off < len(l.s) {
		return l.s[l.i+off]
	}
	return 0
}

func (l *locator) next() {
	if l.s[l.i] == '\n' {
		l.line++
	}
	l.i++
}

// record notes key and, where not yet known, its ancestors.
func (l *locator) record(key string) {
	for k := key; k != ""; k = parentKey(k) {
		if _, ok := l.pos[k]; ok {
			if k == key {
				continue
			}
			break
		}
		l.pos[k] = l.line
	}
	if _, ok := l.pos[key]; !ok {
		l.pos[key] = l.line
	}
}

func (l *locator) run() {
	for !l.eof() {
		l.skipSpace(true)
		if l.eof() {
			return
		}
		if l.s[l.i] == '[' {
			l.header()
		} else if segs := l.key(); segs != nil && l.peek(0) == '=' {
			l.i++
			k := l.table
			for _, s := range segs {
				k = join(k, s)
			}
			l.record(k)
			l.skipSpace(false)
			l.value(k, 0)
		}
		l.skipLine()
	}
}

// header reads [a.b] or [[a.b]].
func (l *locator) header() {
	aot := l.peek(1) == '['
	l.i++
	if aot {
		l.i++
	}
	segs := l.key()
	if segs == nil {
		return
	}
	path := ""
	for n, s := range segs {
		path = join(path, s)
		last := n == len(segs)-1
		switch c, isArray := l.arrays[path]; {
		case last && aot:
			l.arrays[path] = c + 1
			path = index(path, c)
		case isArray && c > 0:
			path = index(path, c-1) // a sub-table of the latest element
		}
	}
	l.table = path
	l.record(path)
}

// key reads a possibly dotted key and the spaces after it.
func (l *locator) key() []string {
	var segs []string
	for {
		l.skipSpace(false)
		if l.eof() {
			return nil
		}
		var seg string
		switch c := l.s[l.i]; c {
		case '"', '\'':
			start := l.i
			l.str()
			if l.i-start < 2 {
				return nil
			}
			seg = unquote(string(l.s[start:l.i]))
		default:
			start := l.i
			for !l.eof() && !strings.ContainsRune(" \t\r\n=.[]\"'#,{}", rune(l.s[l.i])) {
				l.i++
			}
			if l.i == start {
				return nil
			}
			seg = string(l.s[start:l.i])
		}
		segs = append(segs, seg)
		l.skipSpace(false)
		if l.peek(0) != '.' {
			return segs
		}
		l.i++
	}
}

// unquote handles the escapes a key is likely to hold; an exotic one just
// leaves the key unmatched.
func unquote(q string) string {
	body := q[1 : len(q)-1]
	if q[0] == '"' {
		body = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(body)
	}
	return body
}

// value skips one value, noting the keys and elements inside it.
func (l *locator) value(k string, depth int) {
	if l.eof() || depth > maxDepth {
		return
	}
	switch l.s[l.i] {
	case '"', '\'':
		l.str()
	case '[':
		l.i++
		for n := 0; ; {
			l.skipSpace(true)
			if l.eof() {
				return
			}
			switch l.s[l.i] {
			case ']':
				l.i++
				return
			case ',':
				l.i++
				continue
			}
			start := l.i
			ek := index(k, n)
			l.record(ek)
			l.value(ek, depth+1)
			n++
			if l.i == start {
				l.next() // never stall
			}
		}
	case '{':
		l.i++
		for {
			l.skipSpace(true)
			if l.eof() {
				return
			}
			switch l.s[l.i] {
			case '}':
				l.i++
				return
			case ',':
				l.i++
				continue
			}
			start := l.i
			segs := l.key()
			if segs != nil && l.peek(0) == '=' {
				l.i++
				ek := k
				for _, s := range segs {
					ek = join(ek, s)
				}
				l.record(ek)
				l.skipSpace(false)
				l.value(ek, depth+1)
			}
			if l.i == start {
				l.next()
			}
		}
	default:
		for !l.eof() && !strings.ContainsRune(",]}\r\n#", rune(l.s[l.i])) {
			l.i++
		}
	}
}

// str skips a basic, literal or multi-line string.
func (l *locator) str() {
	q := l.s[l.i]
	if l.peek(1) == q && l.peek(2) == q {
		l.i += 3
		for !l.eof() {
			if q == '"' && l.s[l.i] == '\\' {
				l.i++
				if l.eof() {
					return
				}
				l.next()
				continue
			}
			if l.s[l.i] == q && l.peek(1) == q && l.peek(2) == q {
				l.i += 3
				for l.peek(0) == q { // up to two quotes may end the content
					l.i++
				}
				return
			}
			l.next()
		}
		return
	}
	l.i++
	for !l.eof() && l.s[l.i] != '\n' {
		c := l.s[l.i]
		l.i++
		if c == '\\' && q == '"' && !l.eof() && l.s[l.i] != '\n' {
			l.i++
		} else if c == q {
			return
		}
	}
}

// skipSpace skips blanks and, with newlines set, line ends and comments.
func (l *locator) skipSpace(newlines bool) {
	for !l.eof() {
		switch l.s[l.i] {
		case ' ', '\t', '\r':
			l.i++
		case '\n':
			if !newlines {
				return
			}
			l.next()
		case '#':
			if !newlines {
				return
			}
			for !l.eof() && l.s[l.i] != '\n' {
				l.i++
			}
		default:
			return
		}
	}
}

func (l *locator) skipLine() {
	for !l.eof() {
		if l.s[l.i] == '\n' {
			l.next()
			return
		}
		l.i++
	}
}
