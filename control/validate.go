package control

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/l4lb/l4lb/pool"
)

// Limits of what a request may carry. They are syntax checks done by the
// server before the API sees a request.
const (
	DefaultWeight = 1         // weight of a host added without one
	MaxWeight     = 1000      // weights are 0..MaxWeight, as in the config file; 0 takes no new connections
	MaxPriority   = 1_000_000 // priorities are 0..MaxPriority; lower is used first
	MaxTries      = 100       // tries are 0..MaxTries; 0 means the default
	MaxNameLen    = 64        // upstream and pool names
	MaxIDLen      = 256       // host ids and addresses
)

// Methods the API accepts (SPEC §2); "" means the default (the upstream's, or
// round_robin). Whether the running binary implements one is its business.
var methods = []pool.Method{"round_robin", "least_conn", "hash", "random2", "fastest"}

// checkName checks an upstream or pool name being created: 1 to MaxNameLen
// bytes of letters, digits, '_', '-' and '.'.
func checkName(field, s string) *FieldError {
	if s == "" {
		return fieldErr(field, "required")
	}
	if len(s) > MaxNameLen {
		return fieldErr(field, "longer than %d bytes", MaxNameLen)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return fieldErr(field, "%q: only letters, digits, '_', '-' and '.' are allowed", s)
		}
	}
	return nil
}

// checkRef checks a name or id that refers to something (from a path or an
// id field): valid UTF-8, 1 to MaxIDLen bytes, printable, no spaces. It is
// looser than checkName so that any id the config file allows can be named.
func checkRef(field, s string) *FieldError {
	if s == "" {
		return fieldErr(field, "required")
	}
	if len(s) > MaxIDLen {
		return fieldErr(field, "longer than %d bytes", MaxIDLen)
	}
	if !utf8.ValidString(s) {
		return fieldErr(field, "not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fieldErr(field, "%q: control characters and spaces are not allowed", s)
		}
	}
	return nil
}

func checkWeight(field string, w int) *FieldError {
	if w < 0 || w > MaxWeight {
		return fieldErr(field, "%d is out of range: must be between 0 and %d", w, MaxWeight)
	}
	return nil
}

func checkPriority(field string, p int) *FieldError {
	if p < 0 || p > MaxPriority {
		return fieldErr(field, "%d is out of range: must be between 0 and %d", p, MaxPriority)
	}
	return nil
}

func checkMethod(field string, m pool.Method) *FieldError {
	if m == "" {
		return nil
	}
	for _, k := range methods {
		if m == k {
			return nil
		}
	}
	return fieldErr(field, "unknown method %q: want round_robin, least_conn, hash, random2 or fastest", m)
}

// checkAddress checks the shape of a host address: "unix:/absolute/path", or
// host:port with a port in 1..65535 (the host is resolved by the API).
func checkAddress(field, a string) *FieldError {
	if err := checkRef(field, a); err != nil {
		return err
	}
	if path, ok := strings.CutPrefix(a, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			return fieldErr(field, "%q: a unix socket address needs an absolute path (unix:/path.sock)", a)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fieldErr(field, "%q: want host:port, [ipv6]:port or unix:/path", a)
	}
	if host == "" {
		return fieldErr(field, "%q: missing host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fieldErr(field, "%q: port must be a number between 1 and 65535", a)
	}
	return nil
}

// Validate checks the syntax of a pool to be created.
func (p PoolSpec) Validate() error {
	if err := checkName("name", p.Name); err != nil {
		return err
	}
	if err := checkPriority("priority", p.Priority); err != nil {
		return err
	}
	if err := checkMethod("method", p.Method); err != nil {
		return err
	}
	return nil
}

// Validate checks a pool patch: at least one field, each in range.
func (p PoolPatch) Validate() error {
	if p.Priority == nil && p.Method == nil {
		return fieldErr("", "nothing to change: give priority, method or both")
	}
	if p.Priority != nil {
		if err := checkPriority("priority", *p.Priority); err != nil {
			return err
		}
	}
	if p.Method != nil {
		if err := checkMethod("method", *p.Method); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the syntax of a host to be added.
func (h HostSpec) Validate() error {
	if err := checkAddress("address", h.Address); err != nil {
		return err
	}
	if h.ID != "" {
		if err := checkRef("id", h.ID); err != nil {
			return err
		}
	}
	if err := checkWeight("weight", h.Weight); err != nil {
		return err
	}
	return nil
}

// Validate checks a host patch: the weight is required.
func (p HostPatch) Validate() error {
	if p.Weight == nil {
		return fieldErr("weight", "required")
	}
	if err := checkWeight("weight", *p.Weight); err != nil {
		return err
	}
	return nil
}

// Validate checks the syntax of a whole upstream: names, ranges, at least one
// pool, no pool name twice, no host id twice within the upstream.
func (u Upstream) Validate() error {
	if err := checkName("name", u.Name); err != nil {
		return err
	}
	if err := checkMethod("method", u.Method); err != nil {
		return err
	}
	if u.Tries < 0 || u.Tries > MaxTries {
		return fieldErr("tries", "%d is out of range: must be between 0 and %d", u.Tries, MaxTries)
	}
	if len(u.Pools) == 0 {
		return fieldErr("pools", "an upstream needs at least one pool")
	}
	pools := make(map[string]bool, len(u.Pools))
	ids := make(map[string]string)
	for i, p := range u.Pools {
		f := fmt.Sprintf("pools[%d]", i)
		if err := (PoolSpec{Name: p.Name, Priority: p.Priority, Method: p.Method}).Validate(); err != nil {
			return prefixed(f, err)
		}
		if pools[p.Name] {
			return fieldErr(f+".name", "duplicate pool %q", p.Name)
		}
		pools[p.Name] = true
		for j, h := range p.Hosts {
			hf := fmt.Sprintf("%s.hosts[%d]", f, j)
			if err := (HostSpec{ID: h.ID, Address: h.Address, Weight: h.Weight}).Validate(); err != nil {
				return prefixed(hf, err)
			}
			id := h.ID
			if id == "" {
				id = h.Address
			}
			if other, dup := ids[id]; dup {
				return fieldErr(hf+".id", "duplicate host %q (also in %s)", id, other)
			}
			ids[id] = hf
		}
	}
	return nil
}

// prefixed puts the path of a nested object in front of a FieldError's field.
func prefixed(prefix string, err error) error {
	if fe, ok := err.(*FieldError); ok {
		return &FieldError{Field: prefix + "." + fe.Field, Msg: fe.Msg}
	}
	return err
}
