package config

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// validate checks a defaulted config and fills the resolved fields (Network,
// Address, Dial, FileMode, Upstream.Name). It is idempotent: a config it
// accepted passes again unchanged. The errors carry keys but no file or line.
func (c *Config) validate(ctx context.Context, r resolver) []*Error {
	v := &validator{r: r, ctx: ctx, names: map[string][]string{}}

	if !slices.Contains(logLevels, c.Log.Level) {
		v.bad("log.level", "unknown level %q (want %s)", c.Log.Level, strings.Join(logLevels, " | "))
	}
	oneOf(v, "log.format", c.Log.Format, logFormats)
	if a := c.Log.Access; a != "" && a != AccessStderr && a != AccessStdout && !filepath.IsAbs(a) {
		v.bad("log.access", "want \"stderr\", \"stdout\" or an absolute file path, got %q", a)
	}
	if m := c.Metrics.Listen; m != "" {
		if network, _, err := parseListen(m, TCP); err != nil || network != string(TCP) {
			v.bad("metrics.listen", "want \"ip:port\" or \":port\", got %q", m)
		}
	}

	if n := c.Engine.Loops; n < 0 || n > MaxEngineLoops {
		v.bad("engine.loops", "want 0 (one loop per two CPUs) or 1..%d, got %d", MaxEngineLoops, n)
	}

	m, err := strconv.ParseUint(c.Control.Mode, 8, 32)
	if err != nil || m > 0o777 {
		v.bad("control.mode", "want an octal file mode such as \"0600\", got %q", c.Control.Mode)
	} else {
		c.Control.FileMode = os.FileMode(m)
	}
	if c.Control.Store != "local" && c.Control.Store != "consul" {
		v.bad("control.store", "unknown store %q (want local | consul)", c.Control.Store)
	}
	if p := c.Control.KVPrefix; strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		v.bad("control.kv_prefix", "want a Consul KV prefix ending in \"/\" and not starting with one, such as \"l4lb/prod/\", got %q", p)
	}
	c.Consul.validate(v)
	if s := c.Control.Socket; s != "" && !filepath.IsAbs(s) {
		v.bad("control.socket", "want an absolute path, got %q", s)
	}

	listens := map[string]string{}
	names := map[string]string{}
	for i, l := range c.Listeners {
		k := index("listener", i)
		switch prev, dup := names[l.Name]; {
		case l.Name == "":
			v.bad(k+".name", "required")
		case dup:
			v.bad(k+".name", "duplicate listener name %q (also %s)", l.Name, prev)
		default:
			names[l.Name] = k
		}
		oneOf(v, k+".protocol", l.Protocol, protocols)
		if l.Listen == "" {
			v.bad(k+".listen", "required")
		} else if network, addr, err := parseListen(l.Listen, l.Protocol); err != nil {
			v.bad(k+".listen", "%v", err)
		} else {
			l.Network, l.Address = network, addr
			id := network + " " + addr
			if prev, dup := listens[id]; dup && !strings.HasSuffix(addr, ":0") {
				v.bad(k+".listen", "%s address %q is already used by %s", network, l.Listen, prev)
			} else {
				listens[id] = k
			}
		}
		if l.Upstream == "" {
			v.bad(k+".upstream", "required")
		} else if _, ok := c.Upstreams[l.Upstream]; !ok {
			v.bad(k+".upstream", "no upstream named %q (want a [upstream.%s] table)", l.Upstream, l.Upstream)
		}
		v.positive(k+".connect_timeout", l.ConnectTimeout)
		if l.IdleTimeout <= 0 {
			v.bad(k+".idle_timeout", "must be > 0: every connection needs an idle timer (use a long one, e.g. \"24h\", for \"never\")")
		}
		v.positive(k+".fin_timeout", l.FinTimeout)
		if l.TCPKeepalive < 0 {
			v.bad(k+".tcp_keepalive", "must not be negative, got %s (\"0s\" = off)", l.TCPKeepalive)
		} else if l.TCPKeepalive > 0 && l.TCPKeepalive < Duration(time.Second) {
			v.bad(k+".tcp_keepalive", "must be at least 1s (the kernel counts keepalive in seconds), got %s", l.TCPKeepalive)
		}
		v.nonNegative(k+".max_connections", l.MaxConnections)
		v.nonNegative(k+".responses", l.Responses)
		v.nonNegative(k+".max_sessions", l.MaxSessions)
		if l.Protocol == UDP {
			if l.MaxConnections != 0 {
				v.bad(k+".max_connections", "a udp listener has sessions, not connections: use max_sessions")
			}
			for key, set := range map[string]bool{
				"allow": len(l.Allow) > 0, "deny": len(l.Deny) > 0, "proxy_protocol": l.ProxyProtocol != "",
				"accept_proxy_protocol": l.AcceptProxyProtocol, "max_connections_per_client": l.MaxConnectionsPerClient != 0,
				"source_address": l.SourceAddress != "", "tcp_keepalive": l.TCPKeepalive != 0,
			} {
				if set {
					v.bad(k+"."+key, "applies to protocol = \"tcp\" only in this version")
				}
			}
		} else {
			if l.Responses != 0 {
				v.bad(k+".responses", "applies to protocol = \"udp\" only")
			}
			if l.MaxSessions != 0 {
				v.bad(k+".max_sessions", "applies to protocol = \"udp\" only (a tcp listener has max_connections)")
			}
		}
		switch l.ProxyProtocol {
		case "", "v1", "v2":
		default:
			v.bad(k+".proxy_protocol", "unknown version %q (want \"\" | v1 | v2)", l.ProxyProtocol)
		}
		l.AllowNets = v.cidrs(k+".allow", l.Allow)
		l.DenyNets = v.cidrs(k+".deny", l.Deny)
		l.TrustedNets = v.cidrs(k+".trusted_proxies", l.TrustedProxies)
		v.nonNegative(k+".max_connections_per_client", l.MaxConnectionsPerClient)
		v.positive(k+".proxy_protocol_timeout", l.ProxyProtocolTimeout)
		if l.AcceptProxyProtocol && len(l.TrustedProxies) == 0 {
			v.bad(k+".trusted_proxies", "required with accept_proxy_protocol = true: the CIDRs of the front balancers whose PROXY headers are believed")
		}
		if !l.AcceptProxyProtocol && len(l.TrustedProxies) > 0 {
			v.bad(k+".trusted_proxies", "only means something with accept_proxy_protocol = true")
		}
		if l.SourceAddress != "" {
			if ip, err := netip.ParseAddr(l.SourceAddress); err != nil {
				v.bad(k+".source_address", "want an IP address, got %q", l.SourceAddress)
			} else {
				l.SourceIP = ip
			}
		}
	}

	for _, name := range sortedKeys(c.Upstreams) {
		c.Upstreams[name].validate(v, name)
	}
	// Hosts are resolved by now: a udp listener cannot send to a unix
	// stream socket.
	for i, l := range c.Listeners {
		if u := c.Upstreams[l.Upstream]; l.Protocol == UDP && u != nil {
			if h := u.unixHost(); h != nil {
				v.bad(index("listener", i)+".upstream", "upstream %q has a unix socket host (%s); a udp listener needs ip:port hosts", l.Upstream, h.Address)
			}
		}
	}

	for _, e := range unsupported(c) {
		v.errs = append(v.errs, e.(*Error))
	}
	return v.errs
}

// unixHost returns the first host of u on a unix socket, or nil.
func (u *Upstream) unixHost() *Host {
	for _, p := range u.Pools {
		for _, h := range p.Hosts {
			if h.Network == "unix" {
				return h
			}
		}
	}
	return nil
}

func (u *Upstream) validate(v *validator, name string) {
	k := join("upstream", name)
	u.Name = name
	if name == "" {
		v.bad(k, "an upstream needs a non-empty name")
	}
	oneOf(v, k+".method", u.Method, methods)
	oneOf(v, k+".hash_key", u.HashKey, hashKeys)
	if u.Tries < 1 || u.Tries > 100 {
		v.bad(k+".tries", "must be 1..100, got %d", u.Tries)
	}
	v.nonNegative(k+".max_fails", u.MaxFails)
	v.positive(k+".fail_timeout", u.FailTimeout)
	oneOf(v, k+".all_down", u.AllDown, allDowns)
	u.Health.validate(v, k+".health")
	if len(u.Pools) == 0 {
		v.bad(k, "needs at least one [[%s.pool]]", k)
	}
	pools := map[string]string{}
	ids := map[string]string{}
	for i, p := range u.Pools {
		pk := index(k+".pool", i)
		switch prev, dup := pools[p.Name]; {
		case p.Name == "":
			v.bad(pk+".name", "required")
		case dup:
			v.bad(pk+".name", "duplicate pool name %q (also %s)", p.Name, prev)
		default:
			pools[p.Name] = pk
		}
		v.nonNegative(pk+".priority", p.Priority)
		if p.Method != "" {
			oneOf(v, pk+".method", p.Method, methods)
		}
		if p.Consul != nil {
			if len(p.Hosts) > 0 {
				v.bad(pk+".consul", "a pool takes its hosts either from hosts or from consul, not both")
			}
			if p.Consul.Service == "" {
				v.bad(pk+".consul.service", "required")
			}
			if p.Consul.Tag != "" && len(p.Consul.Tags) > 0 {
				v.bad(pk+".consul.tags", "use tag or tags, not both")
			}
			for j, t := range p.Consul.Tags {
				if t == "" {
					v.bad(index(pk+".consul.tags", j), "empty tag")
				}
			}
		}
		p.Health.validate(v, pk+".health")
		for j, h := range p.Hosts {
			hk := index(pk+".hosts", j)
			if h.Address == "" {
				v.bad(hk+".address", "required")
			} else if network, dial, err := v.host(h.Address); err != nil {
				v.bad(hk+".address", "%v", err)
			} else {
				h.Network, h.Dial = network, dial
			}
			if w := h.W(); w < 0 || w > 1000 {
				v.bad(hk+".weight", "must be 0..1000, got %d", w)
			}
			v.nonNegative(hk+".max_connections", h.MaxConnections)
			if h.ID == "" {
				continue // no address either, already reported
			}
			if prev, dup := ids[h.ID]; dup {
				v.bad(hk+".id", "duplicate host id %q in upstream %q (also %s)", h.ID, name, prev)
			} else {
				ids[h.ID] = hk
			}
		}
	}
}

func (h *Health) validate(v *validator, k string) {
	if h == nil {
		return
	}
	oneOf(v, k+".type", h.Type, healthTypes)
	v.positive(k+".interval", h.Interval)
	v.positive(k+".timeout", h.Timeout)
	if h.Timeout > 0 && h.Interval > 0 && h.Timeout >= h.Interval {
		v.bad(k+".timeout", "must be less than interval (%s), got %s", h.Interval, h.Timeout)
	}
	if h.Jitter >= h.Interval && h.Interval > 0 {
		v.bad(k+".jitter", "must be less than interval (%s), got %s", h.Interval, h.Jitter)
	}
	if h.Rise < 1 {
		v.bad(k+".rise", "must be >= 1, got %d", h.Rise)
	}
	if h.Fall < 1 {
		v.bad(k+".fall", "must be >= 1, got %d", h.Fall)
	}
	if a := h.CheckAddress; a != "" && !strings.HasPrefix(a, "/") { // "/path" = a unix socket
		host, port, err := net.SplitHostPort(a)
		if err == nil {
			_, err = parsePort(port)
		}
		if err == nil && host != "" && strings.ContainsAny(host, " /") {
			err = fmt.Errorf("bad host %q", host)
		}
		if err != nil {
			v.bad(k+".check_address", "want host:port, :port or /path.sock, got %q", a)
		}
	}

	// Keys of another check type would be silently ignored: say so.
	only := func(t HealthType, key string, set bool) {
		if set && h.Type != t {
			v.bad(k+"."+key, "only used with type = %q", t)
		}
	}
	only(HealthHTTP, "path", h.Path != "")
	only(HealthHTTP, "method", h.Method != "")
	only(HealthHTTP, "host", h.Host != "")
	only(HealthHTTP, "headers", len(h.Headers) > 0)
	only(HealthHTTP, "fail_status", len(h.FailStatus) > 0)
	only(HealthHTTP, "expect_body", h.ExpectBody != "")
	only(HealthHTTP, "tls", h.TLS)
	only2 := func(a, b HealthType, key string, set bool) {
		if set && h.Type != a && h.Type != b {
			v.bad(k+"."+key, "only used with type = %q or %q", a, b)
		}
	}
	only2(HealthSendExpect, HealthUDP, "send", h.Send != "")
	only2(HealthSendExpect, HealthUDP, "expect", h.Expect != "")
	only(HealthRedis, "password", h.Password != "")
	only(HealthRedis, "role", h.Role != "")

	switch h.Type {
	case HealthHTTP:
		if !strings.HasPrefix(h.Path, "/") {
			v.bad(k+".path", "must start with \"/\", got %q", h.Path)
		}
		if h.Method == "" || strings.ContainsFunc(h.Method, func(r rune) bool { return r < 'A' || r > 'Z' }) {
			v.bad(k+".method", "want an HTTP method such as GET or HEAD, got %q", h.Method)
		}
		for i, s := range h.FailStatus {
			if !statusMask(s) {
				v.bad(index(k+".fail_status", i), "want a status or mask such as \"503\", \"50x\" or \"5xx\", got %q", s)
			}
		}
	case HealthSendExpect:
		if h.Expect == "" {
			v.bad(k+".expect", "required with type = \"send_expect\"")
		}
	case HealthRedis:
		switch h.Role {
		case "", "master", "replica":
		default:
			v.bad(k+".role", "unknown role %q (want master | replica)", h.Role)
		}
	}
}

// statusMask accepts "503", "50x" and "5xx".
func statusMask(s string) bool {
	if len(s) != 3 || s[0] < '1' || s[0] > '5' {
		return false
	}
	switch {
	case s[1] == 'x':
		return s[2] == 'x'
	case s[1] >= '0' && s[1] <= '9':
		return s[2] == 'x' || (s[2] >= '0' && s[2] <= '9')
	}
	return false
}

type validator struct {
	ctx   context.Context
	r     resolver
	names map[string][]string // lookups done in this run
	errs  []*Error
}

func (v *validator) bad(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) positive(key string, d Duration) {
	if d <= 0 {
		v.bad(key, "must be > 0, got %s", d)
	}
}

func (v *validator) nonNegative(key string, n int) {
	if n < 0 {
		v.bad(key, "must be >= 0, got %d", n)
	}
}

// cidrs parses CIDRs; a bare IP means that address alone (/32 or /128).
func (v *validator) cidrs(key string, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for j, s := range ss {
		p, err := ParsePrefix(s)
		if err != nil {
			v.bad(index(key, j), "want a CIDR such as \"10.0.0.0/8\" or an IP address, got %q", s)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParsePrefix parses a CIDR, or an IP address as the prefix of that address
// alone. IPv4-mapped IPv6 forms are unmapped, so "::ffff:10.0.0.1" matches
// an IPv4 client.
func ParsePrefix(s string) (netip.Prefix, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func oneOf[T ~string](v *validator, key string, x T, known []T) {
	if slices.Contains(known, x) {
		return
	}
	s := make([]string, len(known))
	for i, k := range known {
		s[i] = string(k)
	}
	v.bad(key, "unknown value %q (want %s)", x, strings.Join(s, " | "))
}

// parseListen parses a listen address: "ip:port", "[v6]:port", ":port" or
// "unix:/abs/path". Host names are refused: which interface a name means
// would change with DNS.
func parseListen(s string, p Protocol) (network, addr string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return "", "", fmt.Errorf("unix socket path must be absolute, got %q", path)
		}
		if p == UDP {
			return "", "", fmt.Errorf("unix: listeners are stream sockets; use protocol = \"tcp\"")
		}
		return "unix", filepath.Clean(path), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", "", fmt.Errorf("want \"ip:port\", \"[ipv6]:port\", \":port\" or \"unix:/path\", got %q", s)
	}
	// Port 0 lets the kernel pick a free port; the bound address is logged
	// at start ("listening"). Tests and the demo use it.
	n, err := strconv.Atoi(port)
	if port != "0" || err != nil {
		if n, err = parsePort(port); err != nil {
			return "", "", err
		}
	}
	network = string(TCP)
	if p == UDP {
		network = string(UDP)
	}
	if host == "" {
		return network, ":" + strconv.Itoa(n), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", "", fmt.Errorf("host must be an IP address, got %q", host)
	}
	return network, netip.AddrPortFrom(ip, uint16(n)).String(), nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port must be 1..65535, got %q", s)
	}
	return n, nil
}

// host parses a backend address and resolves a host name. Of several
// answers it takes the first, as a dialer would; the name is not looked up
// again until the next load.
func (v *validator) host(s string) (network, dial string, err error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if !filepath.IsAbs(path) {
			return "", "", fmt.Errorf("unix socket path must be absolute, got %q", path)
		}
		return "unix", filepath.Clean(path), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", "", fmt.Errorf("want \"ip:port\", \"[ipv6]:port\", \"name:port\" or \"unix:/path\", got %q", s)
	}
	n, err := parsePort(port)
	if err != nil {
		return "", "", err
	}
	if host == "" {
		return "", "", fmt.Errorf("host is missing in %q", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return "tcp", netip.AddrPortFrom(ip, uint16(n)).String(), nil
	}
	addrs, ok := v.names[host]
	if !ok {
		addrs, err = v.r.LookupHost(v.ctx, host)
		if err != nil {
			return "", "", fmt.Errorf("resolve %q: %w", host, err)
		}
		v.names[host] = addrs
	}
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil {
			return "tcp", netip.AddrPortFrom(ip, uint16(n)).String(), nil
		}
	}
	return "", "", fmt.Errorf("resolve %q: no IP address", host)
}

// ResolveHost parses a backend address as the config file takes it
// ("ip:port", "[v6]:port", "name:port" resolved now, "unix:/path") and
// returns what to dial. The control API uses it for hosts added live.
func ResolveHost(ctx context.Context, address string) (network, dial string, err error) {
	v := &validator{r: net.DefaultResolver, ctx: ctx, names: map[string][]string{}}
	return v.host(address)
}

// maxConsulWait is Consul's own cap on a blocking query's wait.
const maxConsulWait = 10 * time.Minute

func (c *Consul) validate(v *validator) {
	if c.Scheme != "http" && c.Scheme != "https" {
		v.bad("consul.scheme", "unknown scheme %q (want http | https)", c.Scheme)
	}
	if strings.Contains(c.Address, "://") {
		v.bad("consul.address", "want host:port (the scheme goes in consul.scheme), got %q", c.Address)
	} else if _, _, err := net.SplitHostPort(c.Address); err != nil {
		v.bad("consul.address", "want host:port, got %q", c.Address)
	}
	if c.Token != "" && c.TokenFile != "" {
		v.bad("consul.token_file", "set token or token_file, not both")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		v.bad("consul.tls_key_file", "tls_cert_file and tls_key_file go together")
	}
	v.positive("consul.wait", c.Wait)
	if c.Wait.D() > maxConsulWait {
		v.bad("consul.wait", "at most %s (Consul's own limit), got %s", maxConsulWait, c.Wait)
	}
	v.positive("consul.backoff_min", c.BackoffMin)
	if c.BackoffMax < c.BackoffMin {
		v.bad("consul.backoff_max", "must be >= backoff_min (%s), got %s", c.BackoffMin, c.BackoffMax)
	}
	v.positive("consul.startup_timeout", c.StartupTimeout)
}
