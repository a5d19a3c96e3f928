package metrics

import (
	"runtime"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/l4lb/l4lb/pool"
)

// Source is what the collector reads at scrape time. *server.Server
// satisfies it.
type Source interface {
	Status() control.Status // the hosts, with their upstream and pool
	Listeners() []*proxy.Listener
	UDPListeners() []*udp.Listener
	Reloads() uint64
	ReloadFailures() uint64
}

// Collector turns a Source's counters into metrics at each scrape.
type Collector struct {
	src     Source
	version string
}

// NewCollector returns a collector reading src, for the l4lb build
// version.
func NewCollector(src Source, version string) *Collector {
	return &Collector{src: src, version: version}
}

// The metrics. Label names: listener; upstream, pool, host (the host's id);
// and one qualifier per metric (reason, end, direction, state).
var (
	listenerInfo = newFamily("l4lb_listener_info", gauge, "Always 1; labels say what the listener is.",
		"listener", "protocol", "address", "upstream")

	tcpActive      = newFamily("l4lb_listener_connections_active", gauge, "Client connections open now.", "listener")
	tcpAccepted    = newFamily("l4lb_listener_connections_total", counter, "Client connections accepted.", "listener")
	tcpRejected    = newFamily("l4lb_listener_rejected_total", counter, "Clients closed before any backend work, by reason.", "listener", "reason")
	tcpNoBackend   = newFamily("l4lb_listener_no_backend_total", counter, "Clients closed because no host could be connected.", "listener")
	tcpAcceptErrs  = newFamily("l4lb_listener_accept_errors_total", counter, "accept(2) failures (EMFILE and the like).", "listener")
	tcpAttempts    = newFamily("l4lb_listener_connect_attempts_total", counter, "Connect attempts to hosts (tries), successful or not.", "listener")
	tcpConnectFail = newFamily("l4lb_listener_connect_failures_total", counter, "Failed connect attempts to hosts.", "listener")
	tcpHostFull    = newFamily("l4lb_listener_host_full_total", counter, "Hosts reaching their max_connections on the listener's connections (then skipped like a down host until one closes).", "listener")

	udpActive  = newFamily("l4lb_udp_sessions_active", gauge, "UDP sessions open now.", "listener")
	udpCreated = newFamily("l4lb_udp_sessions_total", counter, "UDP sessions opened.", "listener")
	udpEnded   = newFamily("l4lb_udp_sessions_ended_total", counter, "UDP sessions ended, by how: expired (idle), completed (responses reached), failed.", "listener", "end")
	udpDropped = newFamily("l4lb_udp_dropped_datagrams_total", counter, "Datagrams dropped, by reason: full (session table), no_host, error (socket errors).", "listener", "reason")
	udpHostErr = newFamily("l4lb_udp_host_errors_total", counter, "ICMP errors (port or host unreachable) from hosts.", "listener")
	udpDgrams  = newFamily("l4lb_udp_datagrams_total", counter, "Datagrams relayed; direction up is client to host.", "listener", "direction")
	udpBytes   = newFamily("l4lb_udp_bytes_total", counter, "Payload bytes relayed; direction up is client to host.", "listener", "direction")

	hostActive   = newFamily("l4lb_host_connections_active", gauge, "Connections (TCP) and sessions (UDP) open to the host now.", "upstream", "pool", "host")
	hostTotal    = newFamily("l4lb_host_connections_total", counter, "Connections (TCP) and sessions (UDP) opened to the host.", "upstream", "pool", "host")
	hostBytes    = newFamily("l4lb_host_bytes_total", counter, "Bytes forwarded to and from the host, counted when a connection or session ends.", "upstream", "pool", "host", "direction")
	hostFails    = newFamily("l4lb_host_connect_failures_total", counter, "Failed TCP connects to the host, by reason: refused, timeout, unreachable, other.", "upstream", "pool", "host", "reason")
	hostState    = newFamily("l4lb_host_state", gauge, "1 for the host's current state, 0 for the others.", "upstream", "pool", "host", "state")
	hostHealthy  = newFamily("l4lb_host_healthy", gauge, "1 when health checks and passive health say up, whatever an operator set.", "upstream", "pool", "host")
	hostWeight   = newFamily("l4lb_host_weight", gauge, "The host's configured weight.", "upstream", "pool", "host")
	hostMaxConns = newFamily("l4lb_host_max_connections", gauge, "The host's max_connections (absent when it has no limit).", "upstream", "pool", "host")
	hostCheckDur = newFamily("l4lb_host_health_check_duration_seconds", gauge, "How long the last active health check of the host took.", "upstream", "pool", "host")

	discIndex    = newFamily("l4lb_discovery_index", gauge, "Consul's index of the data a Consul pool uses.", "upstream", "pool", "watch")
	discAge      = newFamily("l4lb_discovery_age_seconds", gauge, "How old the data a Consul pool uses is (since Consul answered it).", "upstream", "pool", "watch")
	discHosts    = newFamily("l4lb_discovery_hosts", gauge, "Hosts a Consul pool has now.", "upstream", "pool", "watch")
	discSource   = newFamily("l4lb_discovery_source", gauge, "1 for where a Consul pool's hosts come from now: consul, last_known_good, waiting.", "upstream", "pool", "watch", "source")
	discFailures = newFamily("l4lb_discovery_failures", gauge, "Consecutive failed Consul queries for the pool's watch (0 while healthy).", "upstream", "pool", "watch")

	openFDsFam = newFamily("process_open_fds", gauge, "Open file descriptors (a proxied connection holds 2, 6 while bytes move).")
	maxFDsFam  = newFamily("process_max_fds", gauge, "The limit of open file descriptors (RLIMIT_NOFILE).")

	buildInfo = newFamily("l4lb_build_info", gauge, "Always 1; the labels say which l4lb build is running.", "version", "goversion")

	reloads        = newFamily("l4lb_config_reloads_total", counter, "Successful config reloads.")
	reloadFailures = newFamily("l4lb_config_reload_failures_total", counter, "Failed config reloads (the running config was kept).")
)

// all is every family, in the order a scrape lists them.
var all = []*family{
	buildInfo,
	listenerInfo,
	tcpActive, tcpAccepted, tcpRejected, tcpNoBackend, tcpAcceptErrs, tcpAttempts, tcpConnectFail, tcpHostFull,
	udpActive, udpCreated, udpEnded, udpDropped, udpHostErr, udpDgrams, udpBytes,
	hostActive, hostTotal, hostBytes, hostFails, hostState, hostHealthy, hostWeight, hostMaxConns, hostCheckDur,
	discIndex, discAge, discHosts, discSource, discFailures,
	reloads, reloadFailures,
	openFDsFam, maxFDsFam,
}

var states = []pool.State{pool.StateUp, pool.StateDown, pool.StateManualDown, pool.StateDraining}

// collect reads the source's counters once, into e.
func (c *Collector) collect(e *exposition) {
	e.f64(buildInfo, 1, c.version, runtime.Version())

	for _, l := range c.src.Listeners() {
		n := l.Name()
		e.f64(listenerInfo, 1, n, "tcp", l.Addr().String(), upstreamOf(l.Settings()))
		st := l.Stats()
		e.f64(tcpActive, float64(st.Active), n)
		e.u64(tcpAccepted, st.Accepted, n)
		e.u64(tcpRejected, st.Denied, n, "denied")
		e.u64(tcpRejected, st.OverListenerLimit, n, "max_connections")
		e.u64(tcpRejected, st.OverClientLimit, n, "max_connections_per_client")
		e.u64(tcpRejected, st.Untrusted, n, "untrusted_proxy")
		e.u64(tcpRejected, st.BadProxyHeader, n, "bad_proxy_header")
		e.u64(tcpNoBackend, st.NoBackend, n)
		e.u64(tcpAcceptErrs, st.AcceptErrors, n)
		e.u64(tcpAttempts, st.Connected+st.ConnectFails, n)
		e.u64(tcpConnectFail, st.ConnectFails, n)
		e.u64(tcpHostFull, st.HostFull, n)
	}
	for _, l := range c.src.UDPListeners() {
		n := l.Name()
		up := ""
		if s := l.Settings(); s != nil && s.Upstream != nil {
			up = s.Upstream.Name // nil: bound by a reload, settings not yet published
		}
		e.f64(listenerInfo, 1, n, "udp", l.Addr().String(), up)
		st := l.Stats()
		e.f64(udpActive, float64(st.SessionsActive), n)
		e.u64(udpCreated, st.SessionsCreated, n)
		e.u64(udpEnded, st.SessionsExpired, n, "expired")
		e.u64(udpEnded, st.SessionsCompleted, n, "completed")
		e.u64(udpEnded, st.SessionsFailed, n, "failed")
		e.u64(udpDropped, st.DroppedFull, n, "full")
		e.u64(udpDropped, st.DroppedNoHost, n, "no_host")
		e.u64(udpDropped, st.DroppedError, n, "error")
		e.u64(udpHostErr, st.HostErrors, n)
		e.u64(udpDgrams, st.DatagramsUp, n, "up")
		e.u64(udpDgrams, st.DatagramsDown, n, "down")
		e.u64(udpBytes, st.BytesUp, n, "up")
		e.u64(udpBytes, st.BytesDown, n, "down")
	}

	// A host removed while draining may share its id with a live one in
	// the same pool (removed, then added back): the live one, listed
	// first, is reported; the other would make the scrape fail.
	type key struct{ upstream, pool, host string }
	st := c.src.Status()
	seen := make(map[key]bool, len(st.Hosts))
	for _, h := range st.Hosts {
		k := key{h.Upstream, h.Pool, h.ID}
		if seen[k] {
			continue
		}
		seen[k] = true
		lv := []string{h.Upstream, h.Pool, h.ID} // len == cap: each append below copies
		e.f64(hostActive, float64(h.Active), lv...)
		e.u64(hostTotal, h.Total, lv...)
		e.u64(hostBytes, h.BytesToHost, append(lv, "to_host")...)
		e.u64(hostBytes, h.BytesFromHost, append(lv, "from_host")...)
		for kind, n := range h.ConnectFailures {
			e.u64(hostFails, n, append(lv, pool.FailKind(kind).String())...)
		}
		for _, s := range states {
			e.f64(hostState, boolf(h.State == s), append(lv, s.String())...)
		}
		e.f64(hostHealthy, boolf(h.Healthy), lv...)
		e.f64(hostWeight, float64(h.Weight), lv...)
		if h.MaxConns > 0 {
			e.f64(hostMaxConns, float64(h.MaxConns), lv...)
		}
		if h.CheckDuration > 0 {
			e.f64(hostCheckDur, h.CheckDuration.Seconds(), lv...)
		}
	}

	now := time.Now()
	for _, d := range st.Discovery {
		lv := []string{d.Upstream, d.Pool, d.Watch}
		e.f64(discIndex, float64(d.Index), lv...)
		if !d.Updated.IsZero() {
			e.f64(discAge, now.Sub(d.Updated).Seconds(), lv...)
		}
		e.f64(discHosts, float64(d.Hosts), lv...)
		for _, src := range []string{"consul", "last_known_good", "waiting"} {
			e.f64(discSource, boolf(d.Source == src), append(lv, src)...)
		}
		e.f64(discFailures, float64(d.Failures), lv...)
	}

	e.u64(reloads, c.src.Reloads())
	e.u64(reloadFailures, c.src.ReloadFailures())
	if n, err := openFDs(); err == nil {
		e.f64(openFDsFam, float64(n))
	}
	if n, err := maxFDs(); err == nil {
		e.u64(maxFDsFam, n)
	}
}

func upstreamOf(s *proxy.Settings) string {
	if s == nil || s.Upstream == nil {
		return "" // bound by a reload, settings not yet published
	}
	return s.Upstream.Name
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
