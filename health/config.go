package health

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// Check types.
const (
	TypeNone       = "none"
	TypeTCP        = "tcp"
	TypeHTTP       = "http"
	TypeSendExpect = "send_expect"
	TypeUDP        = "udp" // send_expect over UDP: Send, then a reply starting with Expect (any reply if empty)
	TypeRedis      = "redis"
	TypeMySQL      = "mysql"
)

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("health: invalid check")

// Config describes an active check. It holds plain values: the binary maps its
// TOML into it, per upstream with a pool's overrides already applied. Every
// field's zero value means the default written beside it.
type Config struct {
	Type     string        // none|tcp|http|send_expect|redis|mysql; "" = none
	Interval time.Duration // between probes; 0 = 2s
	Timeout  time.Duration // per probe, < Interval; 0 = 1s, or Interval/2 if that is shorter
	Jitter   time.Duration // each wait is Interval ± a random part of Jitter, and the first probe waits a random part of it; 0 = none
	Rise     int           // consecutive successes to come back up; 0 = 2
	Fall     int           // consecutive failures to go down; 0 = 3

	// CheckAddress is where to probe: "" = the host's address; ":port" =
	// the host's IP with that port; "host:port" = that address; an absolute
	// path = that unix socket.
	CheckAddress string

	// http
	Path       string            // "" = "/"
	Method     string            // "" = GET
	Host       string            // Host header; "" = the probed address
	Headers    map[string]string // extra request headers
	FailStatus []string          // status masks that fail the check: "5xx", "403", "40x"; empty = 4xx and 5xx
	ExpectBody string            // substring the body (first 64 KiB) must contain; "" = no body check
	TLS        bool              // speak HTTPS; the certificate is not verified (a check tests liveness, not identity)

	// send_expect
	Send   string // bytes written after connecting; may be empty
	Expect string // the reply must start with these bytes; required

	// redis
	Password string // sent with AUTH before PING; "" = no AUTH
	Role     string // "master" or "replica" ("slave"): the role the server must have; "" = any
}

// withDefaults returns c with zero fields filled in.
func (c Config) withDefaults() Config {
	if c.Type == "" {
		c.Type = TypeNone
	}
	if c.Interval == 0 {
		c.Interval = 2 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = min(time.Second, c.Interval/2)
	}
	if c.Rise == 0 {
		c.Rise = 2
	}
	if c.Fall == 0 {
		c.Fall = 3
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.Method == "" {
		c.Method = "GET"
	}
	if len(c.FailStatus) == 0 {
		c.FailStatus = []string{"4xx", "5xx"}
	}
	if c.Role == "slave" {
		c.Role = "replica"
	}
	return c
}

// Validate reports every problem of c (after defaults), each naming its field.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, a...)))
	}
	switch c.Type {
	case TypeNone, TypeTCP, TypeHTTP, TypeSendExpect, TypeRedis, TypeMySQL, TypeUDP:
	default:
		bad("type", "unknown check type %q (want none, tcp, http, send_expect, redis, mysql or udp)", c.Type)
	}
	if c.Interval < 0 {
		bad("interval", "negative")
	}
	if c.Timeout <= 0 || c.Timeout >= c.Interval {
		bad("timeout", "%v must be above 0 and below interval %v", c.Timeout, c.Interval)
	}
	if c.Jitter < 0 || c.Jitter >= c.Interval {
		bad("jitter", "%v must be at least 0 and below interval %v", c.Jitter, c.Interval)
	}
	if c.Rise < 1 {
		bad("rise", "%d must be at least 1", c.Rise)
	}
	if c.Fall < 1 {
		bad("fall", "%d must be at least 1", c.Fall)
	}
	if c.CheckAddress != "" && !strings.HasPrefix(c.CheckAddress, "/") {
		if _, port, err := net.SplitHostPort(c.CheckAddress); err != nil {
			bad("check_address", "%v", err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			bad("check_address", "bad port %q", port)
		}
	}
	switch c.Type {
	case TypeHTTP:
		if !strings.HasPrefix(c.Path, "/") {
			bad("path", "%q must start with /", c.Path)
		}
		for _, m := range c.FailStatus {
			if !validMask(m) {
				bad("fail_status", "%q is not a status mask such as 5xx, 403 or 40x", m)
			}
		}
	case TypeSendExpect:
		if c.Expect == "" {
			bad("expect", "required for send_expect")
		}
	case TypeRedis:
		if c.Role != "" && c.Role != "master" && c.Role != "replica" {
			bad("role", "%q (want master or replica)", c.Role)
		}
	}
	return errors.Join(errs...)
}

// validMask reports whether m is three characters, digits or 'x', starting
// with a digit 1-5.
func validMask(m string) bool {
	if len(m) != 3 || m[0] < '1' || m[0] > '5' {
		return false
	}
	for i := 1; i < 3; i++ {
		if (m[i] < '0' || m[i] > '9') && m[i] != 'x' && m[i] != 'X' {
			return false
		}
	}
	return true
}

// matchMask reports whether status code matches mask m (see validMask).
func matchMask(m string, code int) bool {
	s := strconv.Itoa(code)
	if len(s) != 3 {
		return false
	}
	for i := range 3 {
		if m[i] != 'x' && m[i] != 'X' && m[i] != s[i] {
			return false
		}
	}
	return true
}

// Addr is where a probe connects.
type Addr struct {
	Network string // "tcp" or "unix"
	Address string
}

func (a Addr) String() string { return a.Address }

// CheckAddr returns where to probe host h under c (see Config.CheckAddress).
func (c Config) CheckAddr(h *pool.Host) (Addr, error) {
	ca := c.CheckAddress
	switch {
	case ca == "":
		return Addr{Network: h.Network, Address: h.Address}, nil
	case strings.HasPrefix(ca, "/"):
		return Addr{Network: "unix", Address: ca}, nil
	case strings.HasPrefix(ca, ":"):
		if h.Network == "unix" {
			return Addr{}, fmt.Errorf("%w: check_address %q: host %s is a unix socket, it has no IP", ErrConfig, ca, h.Address)
		}
		ip, _, err := net.SplitHostPort(h.Address)
		if err != nil {
			return Addr{}, fmt.Errorf("%w: check_address %q: host %s: %v", ErrConfig, ca, h.Address, err)
		}
		return Addr{Network: "tcp", Address: net.JoinHostPort(ip, ca[1:])}, nil
	}
	return Addr{Network: "tcp", Address: ca}, nil
}
