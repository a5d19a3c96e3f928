package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// Config is one loaded, defaulted and validated configuration file. Treat it as
// immutable once Load or Parse returned it: a reload builds a new one.
type Config struct {
	File      string               `toml:"-"` // the path it was read from
	Log       Log                  `toml:"log"`
	Control   Control              `toml:"control"`
	Metrics   Metrics              `toml:"metrics"`
	Consul    Consul               `toml:"consul"`
	Engine    Engine               `toml:"engine"`
	Listeners []*Listener          `toml:"listener"`
	Upstreams map[string]*Upstream `toml:"upstream"`
}

// Log configures the root logger.
type Log struct {
	Level  string    `toml:"level"`  // debug | info | warn | error; default info
	Format LogFormat `toml:"format"` // console | json; default console
	// Access is where the per-connection lines go, as JSON (docs/METRICS.md):
	// "" (default) = the main log, as every other line; "stderr" or "stdout";
	// or an absolute file path, reopened on SIGHUP for logrotate.
	Access string `toml:"access"`
}

// Access log destinations besides a file path.
const (
	AccessStderr = "stderr"
	AccessStdout = "stdout"
)

// Control configures the control API socket and where live edits are kept.
type Control struct {
	Socket string `toml:"socket"` // "" = no control API
	Mode   string `toml:"mode"`   // octal file mode of Socket; default "0600"
	Group  string `toml:"group"`  // "" = the process's group
	// Uids allowed to connect besides root, l4lb's own uid and members of Group.
	AllowUIDs []int  `toml:"allow_uids"`
	StateDir  string `toml:"state_dir"` // "" = live edits are not persisted
	Store     string `toml:"store"`     // local | consul; default local
	// KVPrefix is where fleet mode keeps its keys in Consul (the journal at
	// KVPrefix + "edits"); default "l4lb/default/".
	KVPrefix string      `toml:"kv_prefix"`
	FileMode os.FileMode `toml:"-"` // Mode, parsed
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string `toml:"listen"` // "ip:port" or ":port" serving /metrics; "" = off
}

// Engine tunes the TCP copy engine (docs/BEHAVIOUR.md), set up once at start.
type Engine struct {
	// Loops is how many epoll event loops move the bytes of TCP
	// connections: 1..MaxEngineLoops, or 0 (default) for one per two of
	// the CPUs Go runs on (GOMAXPROCS), at least one. l4lb run then
	// lowers GOMAXPROCS to it unless the GOMAXPROCS variable is set.
	Loops int `toml:"loops"`
}

// MaxEngineLoops bounds engine.loops: each loop is a goroutine, an epoll fd
// and an eventfd for the life of the process.
const MaxEngineLoops = 1024

// Consul says where the Consul agent is and how to watch it. It is used by
// pools with a consul table.
type Consul struct {
	Address        string   `toml:"address"`         // host:port of the agent's HTTP API; default "127.0.0.1:8500"
	Scheme         string   `toml:"scheme"`          // http | https; default http
	Token          string   `toml:"token"`           // ACL token; "" = token_file, or none
	TokenFile      string   `toml:"token_file"`      // file holding the ACL token, read once at start
	Datacenter     string   `toml:"datacenter"`      // "" = the agent's own
	TLSCAFile      string   `toml:"tls_ca_file"`     // "" = the system roots
	TLSCertFile    string   `toml:"tls_cert_file"`   // client certificate; with tls_key_file
	TLSKeyFile     string   `toml:"tls_key_file"`    //
	TLSSkipVerify  bool     `toml:"tls_skip_verify"` // do not check the agent's certificate
	Wait           Duration `toml:"wait"`            // blocking query wait; default 30s, at most 10m
	BackoffMin     Duration `toml:"backoff_min"`     // first retry delay after an error; default 1s
	BackoffMax     Duration `toml:"backoff_max"`     // retry delay cap; default 60s
	StartupTimeout Duration `toml:"startup_timeout"` // first answer wait before the last-known-good copy is used; default 3s
}

// Listener is an address l4lb accepts on and the upstream it forwards to.
type Listener struct {
	Name           string   `toml:"name"`
	Listen         string   `toml:"listen"`          // "ip:port", "[v6]:port", ":port" or "unix:/abs/path"
	Protocol       Protocol `toml:"protocol"`        // default tcp
	Upstream       string   `toml:"upstream"`        // a key of Config.Upstreams
	ConnectTimeout Duration `toml:"connect_timeout"` // default 5s
	IdleTimeout    Duration `toml:"idle_timeout"`    // default 1h (tcp), 30s (udp); never 0
	FinTimeout     Duration `toml:"fin_timeout"`     // inactivity bound once one side half-closed; default 30s
	DrainTimeout   Duration `toml:"drain_timeout"`   // default 30s; 0 = close at once on shutdown
	// TCP keepalive probes on both sockets of a connection after this much
	// silence; 0 (the default) = off, as in HAProxy and nginx.
	TCPKeepalive   Duration `toml:"tcp_keepalive"`
	MaxConnections int      `toml:"max_connections"` // 0 = no limit
	// Connections from one client IP at once; 0 = no limit.
	MaxConnectionsPerClient int    `toml:"max_connections_per_client"`
	ProxyProtocol           string `toml:"proxy_protocol"` // "" | v1 | v2: header sent to backends
	// Read a PROXY v1/v2 header from every client (a front balancer); only
	// peers in TrustedProxies may connect then.
	AcceptProxyProtocol  bool     `toml:"accept_proxy_protocol"`
	TrustedProxies       []string `toml:"trusted_proxies"`        // CIDRs or IPs; required with AcceptProxyProtocol
	ProxyProtocolTimeout Duration `toml:"proxy_protocol_timeout"` // the header must arrive within it; default 5s
	Allow                []string `toml:"allow"`                  // CIDRs or IPs; empty = all
	Deny                 []string `toml:"deny"`                   // CIDRs or IPs; checked first
	SourceAddress        string   `toml:"source_address"`         // local IP for connects to hosts; "" = the kernel's choice
	Responses            int      `toml:"responses"`              // udp: close a session after N replies; 0 = never
	MaxSessions          int      `toml:"max_sessions"`           // udp: session table bound; 0 = no limit

	// Resolved at load.
	Network string `toml:"-"` // "tcp", "udp" or "unix"
	Address string `toml:"-"` // host:port, or the socket path when Network is "unix"
	// Allow, Deny, TrustedProxies and SourceAddress, parsed.
	AllowNets, DenyNets, TrustedNets []netip.Prefix `toml:"-"`
	SourceIP                         netip.Addr     `toml:"-"`
}

// Upstream is a named set of pools and the rules for choosing among them.
type Upstream struct {
	Name        string   `toml:"-"`            // its key in Config.Upstreams
	Method      Method   `toml:"method"`       // default round_robin
	HashKey     HashKey  `toml:"hash_key"`     // default source_ip
	Tries       int      `toml:"tries"`        // connect attempts in total, 1..100; default 3
	MaxFails    int      `toml:"max_fails"`    // default 1; 0 = passive checks off
	FailTimeout Duration `toml:"fail_timeout"` // default 10s
	SlowStart   Duration `toml:"slow_start"`   // default 0 = off
	AllDown     AllDown  `toml:"all_down"`     // default reject
	CloseOnDown bool     `toml:"close_on_down"`
	Health      *Health  `toml:"health"` // nil = no active checks
	Pools       []*Pool  `toml:"pool"`   // in file order; sort by Priority to use
}

// Pool is a named group of hosts with a priority (lower is used first).
type Pool struct {
	Name     string         `toml:"name"`
	Priority int            `toml:"priority"` // >= 0
	Method   Method         `toml:"method"`   // "" = the upstream's
	Hosts    []*Host        `toml:"hosts"`
	Consul   *ConsulService `toml:"consul"` // nil = hosts come from Hosts only
	Health   *Health        `toml:"health"` // nil = the upstream's
}

// ConsulService names the Consul service a pool takes its hosts from.
type ConsulService struct {
	Service     string   `toml:"service"`
	Tag         string   `toml:"tag"`          // "" = any; or tags
	Tags        []string `toml:"tags"`         // every one of them; not with tag
	PassingOnly bool     `toml:"passing_only"` // default true: only instances whose checks all pass (or warn)
	Datacenter  string   `toml:"datacenter"`   // "" = [consul] datacenter
	Near        string   `toml:"near"`         // node name or "_agent": Consul sorts by round-trip time
}

// AllTags returns the tags an instance must carry: Tag or Tags, sorted,
// without duplicates.
func (c *ConsulService) AllTags() []string {
	var out []string
	if c.Tag != "" {
		out = append(out, c.Tag)
	}
	for _, t := range c.Tags {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// Host is one backend.
type Host struct {
	Address string `toml:"address"` // "ip:port", "[v6]:port", "name:port" or "unix:/abs/path"
	Weight  *int   `toml:"weight"`  // 0..1000; default 1; 0 = takes no new connections
	// Active connections at most; a full host is skipped like a down one. 0 = no limit.
	MaxConnections int    `toml:"max_connections"`
	ID             string `toml:"id"` // default: Address

	// Resolved at load.
	Network string `toml:"-"` // "tcp" or "unix"
	Dial    string `toml:"-"` // ip:port or the socket path
}

// W returns the host's weight; Weight is never nil after Load or Parse.
func (h *Host) W() int {
	if h.Weight == nil {
		return 1
	}
	return *h.Weight
}

// Health configures active health checks.
type Health struct {
	Type         HealthType `toml:"type"`          // default tcp when the table is present
	Interval     Duration   `toml:"interval"`      // default 2s
	Timeout      Duration   `toml:"timeout"`       // default 1s; < Interval
	Rise         int        `toml:"rise"`          // successes to come back up; default 2
	Fall         int        `toml:"fall"`          // failures to go down; default 3
	Jitter       Duration   `toml:"jitter"`        // random extra delay per check, < Interval; default Interval/10
	CheckAddress string     `toml:"check_address"` // "" = the host's address; ":port" = the host's IP, that port

	// type = "http"
	Path       string            `toml:"path"`        // default "/"
	Method     string            `toml:"method"`      // default GET
	Host       string            `toml:"host"`        // Host header; "" = the address
	Headers    map[string]string `toml:"headers"`     // extra request headers
	FailStatus []string          `toml:"fail_status"` // masks like "5xx", "403"; default ["5xx"]
	ExpectBody string            `toml:"expect_body"` // "" = any body
	TLS        bool              `toml:"tls"`

	// type = "send_expect"
	Send   string `toml:"send"`
	Expect string `toml:"expect"` // prefix the reply must start with

	// type = "redis"
	Password string `toml:"password"`
	Role     string `toml:"role"` // "" = any | master | replica
}

// Duration is a time.Duration written as a string such as "250ms", "2s" or "5m".
type Duration time.Duration

// UnmarshalText parses a duration string. Negative durations and bare numbers
// are errors.
func (d *Duration) UnmarshalText(b []byte) error {
	s := string(b)
	if strings.Trim(s, "+-0123456789.") == "" {
		return fmt.Errorf("invalid duration %q: durations are strings like \"2s\"", s)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q: %w", s, err)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration the way UnmarshalText reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Protocol is a listener's transport.
type Protocol string

// Protocols.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Method chooses a host within a pool.
type Method string

// Methods.
const (
	RoundRobin Method = "round_robin"
	LeastConn  Method = "least_conn"
	Hash       Method = "hash"
	Random2    Method = "random2"
	Fastest    Method = "fastest"
)

// LogFormat is the log output format.
type LogFormat string

// Log formats.
const (
	Console LogFormat = "console"
	JSON    LogFormat = "json"
)

// HashKey is what the hash method hashes.
type HashKey string

// Hash keys.
const (
	SourceIP     HashKey = "source_ip"
	SourceIPPort HashKey = "source_ip_port"
)

// AllDown says what to do when no host of any pool is usable.
type AllDown string

// All-down policies.
const (
	Reject AllDown = "reject"  // close the client at once
	TryAll AllDown = "try_all" // try the hosts anyway, as if they were up
)

// HealthType is the kind of active health check.
type HealthType string

// Health check types.
const (
	HealthNone       HealthType = "none"
	HealthTCP        HealthType = "tcp"
	HealthHTTP       HealthType = "http"
	HealthSendExpect HealthType = "send_expect"
	HealthRedis      HealthType = "redis"
	HealthMySQL      HealthType = "mysql"
	HealthUDP        HealthType = "udp" // send, then a reply starting with expect, over UDP
)

var (
	protocols   = []Protocol{TCP, UDP}
	methods     = []Method{RoundRobin, LeastConn, Hash, Random2, Fastest}
	logFormats  = []LogFormat{Console, JSON}
	hashKeys    = []HashKey{SourceIP, SourceIPPort}
	allDowns    = []AllDown{Reject, TryAll}
	healthTypes = []HealthType{HealthNone, HealthTCP, HealthHTTP, HealthSendExpect, HealthRedis, HealthMySQL, HealthUDP}
	logLevels   = []string{"debug", "info", "warn", "error"}
)

// Error is one problem in a configuration file.
type Error struct {
	File   string
	Line   int    // 1-based; 0 = unknown
	Column int    // 1-based; only TOML syntax errors carry one
	Key    string // key path such as "listener[1].connect_timeout"; "" for syntax errors
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns the *Error values in err, which Load and Parse build with
// errors.Join; the first is the first problem in file order.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		switch x := err.(type) {
		case nil:
		case *Error:
			out = append(out, x)
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}
