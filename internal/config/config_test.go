package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplePath = "../../config.example.toml"

// fakeResolver answers from a map, so tests never touch DNS.
type fakeResolver map[string][]string

func (f fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("lookup %s: no such host", host)
}

var testResolver = fakeResolver{
	"redis.internal": {"10.0.0.5", "10.0.0.6"},
	"v6.internal":    {"2001:db8::7"},
}

func parseTest(src string) (*Config, error) {
	return parse("l4lb.toml", []byte(src), testResolver)
}

// base is a minimal valid config that cases extend.
const base = `
[[listener]]
name = "redis"
listen = "127.0.0.1:6380"
upstream = "redis"

[upstream.redis]

[[upstream.redis.pool]]
name = "primary"
hosts = [ { address = "127.0.0.1:6379" } ]
`

func TestExample(t *testing.T) {
	c, err := Load(examplePath)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if len(c.Listeners) != 1 || c.Listeners[0].Network != "tcp" || c.Listeners[0].Address != "127.0.0.1:6380" {
		t.Errorf("listener = %+v", c.Listeners)
	}
	u := c.Upstreams["redis"]
	if u == nil || u.Name != "redis" || len(u.Pools) != 2 {
		t.Fatalf("upstream = %+v", u)
	}
	if h := u.Pools[0].Hosts[0]; h.Dial != "127.0.0.1:6379" || h.W() != 10 || h.ID != "r1" {
		t.Errorf("primary host = %+v", h)
	}
	if h := u.Pools[1].Hosts[0]; h.Dial != "127.0.0.1:6381" || h.ID != "127.0.0.1:6381" || h.W() != 1 {
		t.Errorf("backup host = %+v", h)
	}
	if c.Control.FileMode != 0o600 {
		t.Errorf("file mode = %v", c.Control.FileMode)
	}
}

// TestExampleDocumentsEveryKey keeps config.example.toml in step with the
// schema: every key the structs know must appear as "key =" in it.
func TestExampleDocumentsEveryKey(t *testing.T) {
	b, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		switch typ.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map:
			walk(typ.Elem(), path)
			return
		case reflect.Struct:
		default:
			return
		}
		if typ == durationType || seen[typ] {
			return
		}
		seen[typ] = true
		for k, ft := range tomlFields(typ) {
			// A key is written "key = ..." or, for tables, "[... .key]".
			if !strings.Contains(text, k+" =") && !strings.Contains(text, k+"]") {
				t.Errorf("%s: key %q is not documented in %s", path, k, examplePath)
			}
			walk(ft, join(path, k))
		}
	}
	walk(reflect.TypeFor[Config](), "")
}

func TestBadConfigs(t *testing.T) {
	tests := []struct {
		name string
		src  string
		key  string
		line int
		msg  string
	}{
		{"bad duration", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nconnect_timeout = \"2x\"", 1),
			"listener[0].connect_timeout", 6, `invalid duration "2x"`},
		{"bare integer duration", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nidle_timeout = 5", 1),
			"listener[0].idle_timeout", 6, `durations are strings like "2s"`},
		{"negative duration", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nfail_timeout = \"-1s\"", 1),
			"upstream.redis.fail_timeout", 8, "must not be negative"},
		{"zero idle timeout", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nidle_timeout = \"0s\"", 1),
			"listener[0].idle_timeout", 6, "idle timer"},
		{"zero connect timeout", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nconnect_timeout = \"0s\"", 1),
			"listener[0].connect_timeout", 6, "must be > 0"},
		{"wrong type", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\ntries = \"3\"", 1),
			"upstream.redis.tries", 8, "must be an integer, got a string"},
		{"missing listener name", strings.Replace(base, `name = "redis"`, "", 1),
			"listener[0].name", 2, "required"},
		{"duplicate listener name", base + "\n[[listener]]\nname = \"redis\"\nlisten = \"127.0.0.1:6390\"\nupstream = \"redis\"\n",
			"listener[1].name", 14, `duplicate listener name "redis"`},
		{"duplicate listen", base + "\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:6380\"\nupstream = \"redis\"\n",
			"listener[1].listen", 15, "already used by listener[0]"},
		{"listen host name", strings.Replace(base, `127.0.0.1:6380`, `localhost:6380`, 1),
			"listener[0].listen", 4, "must be an IP address"},
		{"allow not a cidr", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nallow = [\"10.0.0.0/8\", \"10.0.0.300/8\"]", 1),
			"listener[0].allow[1]", 6, "want a CIDR"},
		{"accept proxy without trusted", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\naccept_proxy_protocol = true", 1),
			"listener[0].trusted_proxies", 0, "required with accept_proxy_protocol"},
		{"bad source address", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nsource_address = \"eth0\"", 1),
			"listener[0].source_address", 6, "want an IP address"},
		{"negative per-client limit", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nmax_connections_per_client = -1", 1),
			"listener[0].max_connections_per_client", 6, "must be >= 0"},
		{"listen port too big", strings.Replace(base, `127.0.0.1:6380`, `127.0.0.1:70000`, 1),
			"listener[0].listen", 4, "port must be 1..65535"},
		{"listen no port", strings.Replace(base, `127.0.0.1:6380`, `127.0.0.1`, 1),
			"listener[0].listen", 4, "want"},
		{"listen relative unix", strings.Replace(base, `127.0.0.1:6380`, `unix:x.sock`, 1),
			"listener[0].listen", 4, "must be absolute"},
		{"unknown protocol", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nprotocol = \"sctp\"", 1),
			"listener[0].protocol", 6, `unknown value "sctp"`},
		{"unknown upstream", strings.Replace(base, `upstream = "redis"`, `upstream = "nope"`, 1),
			"listener[0].upstream", 5, `no upstream named "nope"`},
		{"negative max_connections", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nmax_connections = -1", 1),
			"listener[0].max_connections", 6, "must be >= 0, got -1"},
		{"bad proxy_protocol", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nproxy_protocol = \"v3\"", 1),
			"listener[0].proxy_protocol", 6, `unknown version "v3"`},
		{"bad cidr", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nallow = [\"10.0.0.0/8\", \"nope\"]", 1),
			"listener[0].allow[1]", 6, "want a CIDR"},
		{"no pools", "[[listener]]\nname = \"a\"\nlisten = \":1\"\nupstream = \"u\"\n[upstream.u]\ntries = 2\n",
			"upstream.u", 5, "at least one"},
		{"duplicate pool name", base + "\n[[upstream.redis.pool]]\nname = \"primary\"\n",
			"upstream.redis.pool[1].name", 14, `duplicate pool name "primary"`},
		{"negative priority", strings.Replace(base, `name = "primary"`, "name = \"primary\"\npriority = -1", 1),
			"upstream.redis.pool[0].priority", 11, "must be >= 0"},
		{"unknown method", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nmethod = \"fair\"", 1),
			"upstream.redis.method", 8, `unknown value "fair"`},
		{"unknown pool method", strings.Replace(base, `name = "primary"`, "name = \"primary\"\nmethod = \"fair\"", 1),
			"upstream.redis.pool[0].method", 11, `unknown value "fair"`},
		{"tries 0", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\ntries = 0", 1),
			"upstream.redis.tries", 8, "must be 1..100, got 0"},
		{"tries 101", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\ntries = 101", 1),
			"upstream.redis.tries", 8, "must be 1..100"},
		{"negative max_fails", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nmax_fails = -2", 1),
			"upstream.redis.max_fails", 8, "must be >= 0"},
		{"unknown all_down", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nall_down = \"panic\"", 1),
			"upstream.redis.all_down", 8, `unknown value "panic"`},
		{"unknown hash_key", strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nhash_key = \"cookie\"", 1),
			"upstream.redis.hash_key", 8, `unknown value "cookie"`},
		{"weight out of range", strings.Replace(base, `hosts = [ { address = "127.0.0.1:6379" } ]`,
			"hosts = [\n  { address = \"127.0.0.1:6379\" },\n  { address = \"127.0.0.1:6380\", weight = -1 },\n]", 1),
			"upstream.redis.pool[0].hosts[1].weight", 13, "must be 0..1000, got -1"},
		{"weight too big", strings.Replace(base, `{ address = "127.0.0.1:6379" }`, `{ address = "127.0.0.1:6379", weight = 1001 }`, 1),
			"upstream.redis.pool[0].hosts[0].weight", 11, "must be 0..1000, got 1001"},
		{"bad host address", strings.Replace(base, `127.0.0.1:6379`, `127.0.0.1`, 1),
			"upstream.redis.pool[0].hosts[0].address", 11, "want"},
		{"host without host", strings.Replace(base, `127.0.0.1:6379`, `:6379`, 1),
			"upstream.redis.pool[0].hosts[0].address", 11, "host is missing"},
		{"unresolvable host", strings.Replace(base, `127.0.0.1:6379`, `nowhere.internal:6379`, 1),
			"upstream.redis.pool[0].hosts[0].address", 11, `resolve "nowhere.internal"`},
		{"missing host address", strings.Replace(base, `{ address = "127.0.0.1:6379" }`, `{ weight = 2 }`, 1),
			"upstream.redis.pool[0].hosts[0].address", 11, "required"},
		{"duplicate host id", strings.Replace(base, `hosts = [ { address = "127.0.0.1:6379" } ]`,
			"hosts = [\n  { address = \"127.0.0.1:6379\", id = \"a\" },\n  { address = \"127.0.0.1:6380\", id = \"a\" },\n]", 1),
			"upstream.redis.pool[0].hosts[1].id", 13, `duplicate host id "a"`},
		{"duplicate host id across pools", base + "\n[[upstream.redis.pool]]\nname = \"dr\"\nhosts = [{ address = \"127.0.0.1:6379\" }]\n",
			"upstream.redis.pool[1].hosts[0].id", 15, "also upstream.redis.pool[0].hosts[0]"},
		{"hosts and consul", strings.Replace(base, `name = "primary"`, "name = \"primary\"\nconsul = { service = \"redis\" }", 1),
			"upstream.redis.pool[0].consul", 11, "not both"},
		{"consul tag and tags", base + "\n[[upstream.redis.pool]]\nname = \"c\"\nconsul = { service = \"redis\", tag = \"a\", tags = [\"b\"] }\n",
			"upstream.redis.pool[1].consul.tags", 0, "not both"},
		{"consul service missing", base + "\n[[upstream.redis.pool]]\nname = \"c\"\nconsul = { tag = \"a\" }\n",
			"upstream.redis.pool[1].consul.service", 0, "required"},
		{"consul scheme", base + "[consul]\nscheme = \"ftp\"\n",
			"consul.scheme", 13, `unknown scheme "ftp"`},
		{"consul address with scheme", base + "[consul]\naddress = \"http://127.0.0.1:8500\"\n",
			"consul.address", 13, "consul.scheme"},
		{"consul token twice", base + "[consul]\ntoken = \"x\"\ntoken_file = \"/t\"\n",
			"consul.token_file", 14, "not both"},
		{"consul cert without key", base + "[consul]\ntls_cert_file = \"/c.pem\"\n",
			"consul.tls_key_file", 0, "go together"},
		{"consul wait too long", base + "[consul]\nwait = \"11m\"\n",
			"consul.wait", 13, "at most 10m0s"},
		{"consul backoff order", base + "[consul]\nbackoff_min = \"10s\"\nbackoff_max = \"1s\"\n",
			"consul.backoff_max", 14, "must be >= backoff_min"},
		{"health timeout >= interval", base + "[upstream.redis.health]\ntype = \"none\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
			"upstream.redis.health.timeout", 15, "must be less than interval"},
		{"health rise 0", base + "[upstream.redis.health]\ntype = \"none\"\nrise = 0\n",
			"upstream.redis.health.rise", 14, "must be >= 1"},
		{"health fall 0", base + "[[upstream.redis.pool]]\nname = \"b\"\n[upstream.redis.pool.health]\ntype = \"none\"\nfall = 0\n",
			"upstream.redis.pool[1].health.fall", 16, "must be >= 1"},
		{"negative keepalive", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\ntcp_keepalive = \"-1s\"", 1),
			"listener[0].tcp_keepalive", 6, "must not be negative"},
		{"sub-second keepalive", strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\ntcp_keepalive = \"500ms\"", 1),
			"listener[0].tcp_keepalive", 6, "at least 1s"},
		{"health check_address not an address", base + "[upstream.redis.health]\ntype = \"tcp\"\ncheck_address = \"redis-exporter\"\n",
			"upstream.redis.health.check_address", 14, `want host:port, :port or /path.sock, got "redis-exporter"`},
		{"health unknown type", base + "[upstream.redis.health]\ntype = \"ping\"\n",
			"upstream.redis.health.type", 13, `unknown value "ping"`},
		{"health key of another type", base + "[upstream.redis.health]\ntype = \"none\"\nsend = \"PING\"\n",
			"upstream.redis.health.send", 14, `only used with type = "send_expect"`},
		{"control mode", base + "[control]\nmode = \"0999\"\n",
			"control.mode", 13, "octal file mode"},
		{"control mode too big", base + "[control]\nmode = \"1777\"\n",
			"control.mode", 13, "octal file mode"},
		{"control store", base + "[control]\nstore = \"etcd\"\n",
			"control.store", 13, `unknown store "etcd"`},
		{"log level", base + "[log]\nlevel = \"loud\"\n",
			"log.level", 13, `unknown level "loud"`},
		{"log format", base + "[log]\nformat = \"xml\"\n",
			"log.format", 13, `unknown value "xml"`},
		{"log access relative", base + "[log]\naccess = \"access.log\"\n",
			"log.access", 13, `want "stderr", "stdout" or an absolute file path`},
		{"log access absolute", base + "[log]\naccess = \"/var/log/l4lb/access.log\"\n",
			"", 0, ""},
		{"log access stderr", base + "[log]\naccess = \"stderr\"\n",
			"", 0, ""},
		{"metrics listen", base + "[metrics]\nlisten = \"127.0.0.1:9790\"\n",
			"", 0, ""},
		{"metrics listen port only", base + "[metrics]\nlisten = \":9790\"\n",
			"", 0, ""},
		{"metrics listen unix", base + "[metrics]\nlisten = \"unix:/run/m.sock\"\n",
			"metrics.listen", 13, `want "ip:port" or ":port"`},
		{"metrics listen name", base + "[metrics]\nlisten = \"localhost:9790\"\n",
			"metrics.listen", 13, `want "ip:port" or ":port"`},
		{"engine loops auto", base + "[engine]\nloops = 0\n",
			"", 0, ""},
		{"engine loops", base + "[engine]\nloops = 4\n",
			"", 0, ""},
		{"engine loops negative", base + "[engine]\nloops = -1\n",
			"engine.loops", 13, "want 0 (one loop per two CPUs) or 1..1024, got -1"},
		{"engine loops too many", base + "[engine]\nloops = 1025\n",
			"engine.loops", 13, "got 1025"},
		{"engine loops string", base + "[engine]\nloops = \"2\"\n",
			"engine.loops", 13, ""},
		{"unknown key", base + "[log]\nlevle = \"info\"\n",
			"log.levle", 13, `unknown key (did you mean "level"?)`},
		{"unknown key in array element", strings.Replace(base, `{ address = "127.0.0.1:6379" }`, `{ address = "127.0.0.1:6379", wieght = 2 }`, 1),
			"upstream.redis.pool[0].hosts[0].wieght", 11, "unknown key"},
		{"unknown table", base + "[frontend]\nx = 1\n",
			"frontend", 12, "unknown key"},
		{"huge integer", strings.Replace(base, `name = "primary"`, "name = \"primary\"\npriority = 9223372036854775807", 1),
			"", 0, ""}, // valid int64: accepted (documented as >= 0)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseTest(tt.src)
			if tt.key == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error about %s, got none", tt.key)
			}
			e := findKey(err, tt.key)
			if e == nil {
				t.Fatalf("no error names %s; got:\n%v", tt.key, err)
			}
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("message %q does not contain %q", e.Msg, tt.msg)
			}
			if tt.line != 0 && e.Line != tt.line {
				t.Errorf("line = %d, want %d (%v)", e.Line, tt.line, e)
			}
			if e.File != "l4lb.toml" {
				t.Errorf("file = %q", e.File)
			}
			if !strings.HasPrefix(e.Error(), fmt.Sprintf("l4lb.toml:%d: %s: ", e.Line, tt.key)) {
				t.Errorf("Error() = %q", e.Error())
			}
		})
	}
}

func findKey(err error, key string) *Error {
	for _, e := range Errors(err) {
		if e.Key == key {
			return e
		}
	}
	return nil
}

func TestAllProblemsReported(t *testing.T) {
	src := `[log]
level = "loud"

[[listener]]
name = "a"
listen = "127.0.0.1:6380"
upstream = "redis"

[[listener]]
name = "a"
lisen = "x"
connect_timeout = "2x"
idle_timeout = 5
upstream = "nope"

[upstream.redis]
tries = "3"

[[upstream.redis.pool]]
name = "p"
hosts = [
  { address = "127.0.0.1:1", weight = 2 },
  { address = "127.0.0.1:2", weight = -1 },
]
`
	_, err := parseTest(src)
	want := []string{
		`l4lb.toml:2: log.level: unknown level "loud"`,
		`l4lb.toml:9: listener[1].listen: required`,
		`l4lb.toml:10: listener[1].name: duplicate listener name "a" (also listener[0])`,
		`l4lb.toml:11: listener[1].lisen: unknown key (did you mean "listen"?)`,
		`l4lb.toml:12: listener[1].connect_timeout: invalid duration "2x": time: unknown unit "x"`,
		`l4lb.toml:13: listener[1].idle_timeout: invalid duration 5: durations are strings like "2s"`,
		`l4lb.toml:14: listener[1].upstream: no upstream named "nope"`,
		`l4lb.toml:17: upstream.redis.tries: must be an integer, got a string`,
		`l4lb.toml:23: upstream.redis.pool[0].hosts[1].weight: must be 0..1000, got -1`,
	}
	got := Errors(err)
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].Error(), w) {
			t.Errorf("error %d = %q, want prefix %q", i, got[i], w)
		}
	}
}

func TestSyntaxError(t *testing.T) {
	_, err := parseTest("[log]\nlevel = \"info\"\nformat = \n")
	es := Errors(err)
	if len(es) != 1 || es[0].Line != 3 || es[0].Column == 0 {
		t.Fatalf("got %#v (%v)", es, err)
	}
	if !strings.HasPrefix(err.Error(), "l4lb.toml:3:") {
		t.Errorf("Error() = %q", err)
	}
}

// TestFleetStore: store = "consul" (fleet mode) is accepted, with the KV
// prefix defaulted or checked.
func TestFleetStore(t *testing.T) {
	c, err := parseTest(base + "\n[control]\nstore = \"consul\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Control.Store != "consul" || c.Control.KVPrefix != DefaultKVPrefix {
		t.Errorf("store %q prefix %q", c.Control.Store, c.Control.KVPrefix)
	}
	c, err = parseTest(base + "\n[control]\nstore = \"consul\"\nkv_prefix = \"l4lb/prod/\"\n")
	if err != nil || c.Control.KVPrefix != "l4lb/prod/" {
		t.Fatalf("prefix: %v %v", c, err)
	}
	for _, bad := range []string{"l4lb/prod", "/l4lb/", "l4lb//x/"} {
		_, err := parseTest(base + "\n[control]\nstore = \"consul\"\nkv_prefix = \"" + bad + "\"\n")
		if e := findKey(err, "control.kv_prefix"); e == nil || e.Line == 0 {
			t.Errorf("%q: want an error with a line, got %v", bad, err)
		}
	}
}

func TestConsul(t *testing.T) {
	src := strings.Replace(base, `hosts = [ { address = "127.0.0.1:6379" } ]`, `consul = { service = "redis", tags = ["b", "a", "b"], datacenter = "dc2", near = "_agent" }`, 1) + `
[[upstream.redis.pool]]
name = "replicas"
priority = 10
consul = { service = "redis", tag = "replica", passing_only = false }
`
	c, err := parseTest(src)
	if err != nil {
		t.Fatal(err)
	}
	k := c.Consul
	if k.Address != "127.0.0.1:8500" || k.Scheme != "http" || k.Wait.D() != 30*time.Second ||
		k.BackoffMin.D() != time.Second || k.BackoffMax.D() != time.Minute || k.StartupTimeout.D() != 3*time.Second {
		t.Errorf("consul defaults = %+v", k)
	}
	p0, p1 := c.Upstreams["redis"].Pools[0].Consul, c.Upstreams["redis"].Pools[1].Consul
	if !p0.PassingOnly || p0.Datacenter != "dc2" || p0.Near != "_agent" || !slices.Equal(p0.AllTags(), []string{"a", "b"}) {
		t.Errorf("pool 0 consul = %+v, tags %v", p0, p0.AllTags())
	}
	if p1.PassingOnly || !slices.Equal(p1.AllTags(), []string{"replica"}) {
		t.Errorf("pool 1 consul = %+v", p1)
	}
}

func TestDefaults(t *testing.T) {
	c, err := parseTest(base + "[upstream.redis.health]\ntype = \"none\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "info" || c.Log.Format != Console {
		t.Errorf("log = %+v", c.Log)
	}
	if c.Control.Mode != "0600" || c.Control.FileMode != 0o600 || c.Control.Store != "local" || c.Control.Socket != "" {
		t.Errorf("control = %+v", c.Control)
	}
	l := c.Listeners[0]
	want := Listener{Name: "redis", Listen: "127.0.0.1:6380", Protocol: TCP, Upstream: "redis",
		ConnectTimeout: Duration(5 * time.Second), IdleTimeout: Duration(time.Hour),
		FinTimeout: Duration(30 * time.Second), DrainTimeout: Duration(30 * time.Second),
		ProxyProtocolTimeout: Duration(5 * time.Second),
		Network:              "tcp", Address: "127.0.0.1:6380"}
	if !reflect.DeepEqual(*l, want) {
		t.Errorf("listener =\n%+v\nwant\n%+v", *l, want)
	}
	u := c.Upstreams["redis"]
	if u.Name != "redis" || u.Method != RoundRobin || u.HashKey != SourceIP || u.Tries != 3 || u.MaxFails != 1 ||
		u.FailTimeout != Duration(10*time.Second) || u.SlowStart != 0 || u.AllDown != Reject || u.CloseOnDown {
		t.Errorf("upstream = %+v", u)
	}
	h := u.Health
	if h.Interval != Duration(2*time.Second) || h.Timeout != Duration(time.Second) || h.Rise != 2 || h.Fall != 3 ||
		h.Jitter != Duration(200*time.Millisecond) {
		t.Errorf("health = %+v", h)
	}
	p := u.Pools[0]
	if p.Priority != 0 || p.Method != "" || p.Health != nil || p.Consul != nil {
		t.Errorf("pool = %+v", p)
	}
	host := p.Hosts[0]
	if host.W() != 1 || *host.Weight != 1 || host.ID != "127.0.0.1:6379" || host.Network != "tcp" || host.Dial != "127.0.0.1:6379" {
		t.Errorf("host = %+v", host)
	}

	// Explicit zeros stay zeros where zero means something.
	c, err = parseTest(strings.Replace(strings.Replace(base, `[upstream.redis]`, "[upstream.redis]\nmax_fails = 0\nslow_start = \"0s\"", 1),
		`{ address = "127.0.0.1:6379" }`, `{ address = "127.0.0.1:6379", weight = 0 }`, 1) +
		"[upstream.redis.health]\ntype = \"none\"\njitter = \"0s\"\n")
	if err != nil {
		t.Fatal(err)
	}
	u = c.Upstreams["redis"]
	if u.MaxFails != 0 || u.Pools[0].Hosts[0].W() != 0 || u.Health.Jitter != 0 {
		t.Errorf("explicit zeros lost: max_fails=%d weight=%d jitter=%s", u.MaxFails, u.Pools[0].Hosts[0].W(), u.Health.Jitter)
	}
}

func TestIdleTimeoutDefaultUDP(t *testing.T) {
	c := &Config{Listeners: []*Listener{{Protocol: UDP}}}
	c.setDefaults(func(string) bool { return false })
	if c.Listeners[0].IdleTimeout != Duration(30*time.Second) {
		t.Errorf("udp idle timeout = %s", c.Listeners[0].IdleTimeout)
	}
}

// udpBase is base with its listener on udp.
var udpBase = strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\nprotocol = \"udp\"", 1)

func TestUDPListener(t *testing.T) {
	c, err := parseTest(strings.Replace(udpBase, `protocol = "udp"`, "protocol = \"udp\"\nresponses = 1\nmax_sessions = 1000", 1))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Listeners[0]
	if l.Network != "udp" || l.Address != "127.0.0.1:6380" || l.Responses != 1 || l.MaxSessions != 1000 || l.IdleTimeout.D() != 30*time.Second {
		t.Errorf("listener = %+v", l)
	}
}

func TestUDPKeys(t *testing.T) {
	unixHost := strings.Replace(udpBase, `{ address = "127.0.0.1:6379" }`, `{ address = "unix:/run/redis.sock" }`, 1)
	tcp := func(key string) string {
		return strings.Replace(base, `upstream = "redis"`, "upstream = \"redis\"\n"+key, 1)
	}
	for _, tc := range []struct{ name, src, key, msg string }{
		{"responses on tcp", tcp("responses = 1"), "listener[0].responses", `applies to protocol = "udp" only`},
		{"max_sessions on tcp", tcp("max_sessions = 10"), "listener[0].max_sessions", `applies to protocol = "udp" only`},
		{"max_connections on udp", strings.Replace(udpBase, `protocol = "udp"`, "protocol = \"udp\"\nmax_connections = 5", 1),
			"listener[0].max_connections", "use max_sessions"},
		{"negative responses", strings.Replace(udpBase, `protocol = "udp"`, "protocol = \"udp\"\nresponses = -1", 1),
			"listener[0].responses", ""},
		{"negative max_sessions", strings.Replace(udpBase, `protocol = "udp"`, "protocol = \"udp\"\nmax_sessions = -1", 1),
			"listener[0].max_sessions", ""},
		{"unix host behind udp", unixHost, "listener[0].upstream", "needs ip:port hosts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTest(tc.src)
			e := findKey(err, tc.key)
			if e == nil || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("want an error at %s containing %q; got %v", tc.key, tc.msg, err)
			}
			if n := len(Errors(err)); n != 1 {
				t.Errorf("%d errors, want 1:\n%v", n, err)
			}
		})
	}
}

func TestHTTPHealthDefaults(t *testing.T) {
	h := &Health{Type: HealthHTTP}
	h.setDefaults(func(string) bool { return false }, "x")
	if h.Path != "/" || h.Method != "GET" || !reflect.DeepEqual(h.FailStatus, []string{"5xx"}) {
		t.Errorf("health = %+v", h)
	}
	v := &validator{}
	h.validate(v, "x")
	if len(v.errs) != 0 {
		t.Errorf("defaulted http check invalid: %v", v.errs)
	}
}

func TestAddresses(t *testing.T) {
	tests := []struct {
		listen, network, addr string
		proto                 Protocol
	}{
		{"127.0.0.1:6380", "tcp", "127.0.0.1:6380", TCP},
		{"[::1]:6380", "tcp", "[::1]:6380", TCP},
		{"[::]:53", "udp", "[::]:53", UDP},
		{":6380", "tcp", ":6380", TCP},
		{"unix:/run/l4lb/x.sock", "unix", "/run/l4lb/x.sock", TCP},
	}
	for _, tt := range tests {
		n, a, err := parseListen(tt.listen, tt.proto)
		if err != nil || n != tt.network || a != tt.addr {
			t.Errorf("parseListen(%q) = %q, %q, %v", tt.listen, n, a, err)
		}
	}
	v := &validator{ctx: context.Background(), r: testResolver, names: map[string][]string{}}
	hosts := map[string]string{
		"10.0.0.1:6379":        "tcp 10.0.0.1:6379",
		"[2001:db8::1]:6379":   "tcp [2001:db8::1]:6379",
		"redis.internal:6379":  "tcp 10.0.0.5:6379", // the first answer
		"v6.internal:6379":     "tcp [2001:db8::7]:6379",
		"unix:/run/redis.sock": "unix /run/redis.sock",
	}
	for in, want := range hosts {
		n, d, err := v.host(in)
		if got := n + " " + d; err != nil || got != want {
			t.Errorf("host(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"250ms", 250 * time.Millisecond, ""},
		{"2s", 2 * time.Second, ""},
		{"5m", 5 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0s", 0, ""},
		{"2", 0, `durations are strings like "2s"`},
		{"0", 0, `durations are strings like "2s"`},
		{"", 0, `durations are strings like "2s"`},
		{"-1s", 0, "must not be negative"},
		{"2x", 0, `unknown unit "x"`},
		{"s", 0, "invalid duration"},
	}
	for _, tt := range tests {
		var d Duration
		err := d.UnmarshalText([]byte(tt.in))
		switch {
		case tt.err == "" && (err != nil || d.D() != tt.want):
			t.Errorf("%q: got %s, %v; want %s", tt.in, d, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: error %v, want one containing %q", tt.in, err, tt.err)
		}
	}
	d := Duration(1500 * time.Millisecond)
	b, _ := d.MarshalText()
	var back Duration
	if err := back.UnmarshalText(b); err != nil || back != d {
		t.Errorf("round trip %s -> %q -> %s, %v", d, b, back, err)
	}
}

func TestLocate(t *testing.T) {
	src := `# comment [not.a.table]
[log]
level = "info" # trailing
s = """multi
line = "not a key"
"""

[[upstream.redis.pool]]
name = "a"
hosts = [
  { address = "x:1" },   # element 0
  { address = "y:1",
    weight = 2 },        # element 1, spread over two lines
]
[upstream.redis.pool.health]
type = "tcp"

[[upstream.redis.pool]]
name = 'b'
allow = ["a",
  "b"]
dotted.key = 1
"quoted key" = 2
`
	ls := locate([]byte(src))
	tests := map[string]int{
		"log":                             2,
		"log.level":                       3,
		"log.s":                           4,
		"upstream.redis.pool[0]":          8,
		"upstream.redis.pool[0].name":     9,
		"upstream.redis.pool[0].hosts[0]": 11,
		"upstream.redis.pool[0].hosts[1].address": 12,
		"upstream.redis.pool[0].hosts[1].weight":  13,
		"upstream.redis.pool[0].health.type":      16,
		"upstream.redis.pool[1].name":             19,
		"upstream.redis.pool[1].allow[1]":         21,
		"upstream.redis.pool[1].dotted.key":       22,
		"upstream.redis.pool[1].quoted key":       23,
		"upstream.redis.pool[1].missing":          18, // falls back to the table
		"upstream.redis":                          8,
		"nowhere":                                 0,
	}
	for k, want := range tests {
		if got := ls.find(k); got != want {
			t.Errorf("find(%q) = %d, want %d", k, got, want)
		}
	}
	if _, ok := ls["log.line"]; ok {
		t.Error("a line inside a multi-line string was taken for a key")
	}
}

func TestLoad(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	p := filepath.Join(t.TempDir(), "l4lb.toml")
	if err := os.WriteFile(p, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil || c.File != p {
		t.Fatalf("Load = %v, %v", c, err)
	}
}

func TestRevalidate(t *testing.T) {
	c, err := parse(examplePath, mustRead(t, examplePath), testResolver)
	if err != nil {
		t.Fatal(err)
	}
	if errs := c.validate(context.Background(), testResolver); len(errs) != 0 {
		t.Errorf("re-validation failed: %v", errs)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ExampleParse() {
	_, err := Parse("l4lb.toml", []byte(`
[[listener]]
name = "redis"
listen = "127.0.0.1:6380"
upstream = "redis"
connect_timeout = 2

[upstream.redis]
tries = 0
`))
	fmt.Println(err)
	// Output:
	// l4lb.toml:6: listener[0].connect_timeout: invalid duration 2: durations are strings like "2s"
	// l4lb.toml:8: upstream.redis: needs at least one [[upstream.redis.pool]]
	// l4lb.toml:9: upstream.redis.tries: must be 1..100, got 0
}

// TestCheckAddressForms: the three forms docs/HEALTH.md promises are accepted.
func TestCheckAddressForms(t *testing.T) {
	for _, a := range []string{":9121", "10.0.0.5:8080", "[::1]:9121", "/run/redis/exporter.sock"} {
		c, err := parseTest(base + "[upstream.redis.health]\ntype = \"tcp\"\ncheck_address = \"" + a + "\"\n")
		if err != nil {
			t.Errorf("check_address %q: %v", a, err)
			continue
		}
		if got := c.Upstreams["redis"].Health.CheckAddress; got != a {
			t.Errorf("check_address %q read as %q", a, got)
		}
	}
}
