package metrics

import (
	"runtime"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/l4lb/l4lb/pool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
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

// NewRegistry returns a registry holding a Collector for src, the build
// info gauge, and the Go runtime and process collectors (open file
// descriptors against the limit matter to a proxy that uses several per
// connection).
func NewRegistry(src Source, version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "l4lb_build_info",
			Help:        "Always 1; the labels say which l4lb build is running.",
			ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return reg
}

// Collector turns a Source's counters into metrics at each scrape.
type Collector struct{ src Source }

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector reading src.
func NewCollector(src Source) *Collector { return &Collector{src: src} }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics. Label names: listener; upstream, pool, host (the host's id);
// and one qualifier per metric (reason, end, direction, state).
var (
	listenerInfo = desc("l4lb_listener_info", "Always 1; labels say what the listener is.",
		"listener", "protocol", "address", "upstream")

	tcpActive      = desc("l4lb_listener_connections_active", "Client connections open now.", "listener")
	tcpAccepted    = desc("l4lb_listener_connections_total", "Client connections accepted.", "listener")
	tcpRejected    = desc("l4lb_listener_rejected_total", "Clients closed before any backend work, by reason.", "listener", "reason")
	tcpNoBackend   = desc("l4lb_listener_no_backend_total", "Clients closed because no host could be connected.", "listener")
	tcpAcceptErrs  = desc("l4lb_listener_accept_errors_total", "accept(2) failures (EMFILE and the like).", "listener")
	tcpAttempts    = desc("l4lb_listener_connect_attempts_total", "Connect attempts to hosts (tries), successful or not.", "listener")
	tcpConnectFail = desc("l4lb_listener_connect_failures_total", "Failed connect attempts to hosts.", "listener")
	tcpHostFull    = desc("l4lb_listener_host_full_total", "Hosts reaching their max_connections on the listener's connections (then skipped like a down host until one closes).", "listener")

	udpActive  = desc("l4lb_udp_sessions_active", "UDP sessions open now.", "listener")
	udpCreated = desc("l4lb_udp_sessions_total", "UDP sessions opened.", "listener")
	udpEnded   = desc("l4lb_udp_sessions_ended_total", "UDP sessions ended, by how: expired (idle), completed (responses reached), failed.", "listener", "end")
	udpDropped = desc("l4lb_udp_dropped_datagrams_total", "Datagrams dropped, by reason: full (session table), no_host, error (socket errors).", "listener", "reason")
	udpHostErr = desc("l4lb_udp_host_errors_total", "ICMP errors (port or host unreachable) from hosts.", "listener")
	udpDgrams  = desc("l4lb_udp_datagrams_total", "Datagrams relayed; direction up is client to host.", "listener", "direction")
	udpBytes   = desc("l4lb_udp_bytes_total", "Payload bytes relayed; direction up is client to host.", "listener", "direction")

	hostActive   = desc("l4lb_host_connections_active", "Connections (TCP) and sessions (UDP) open to the host now.", "upstream", "pool", "host")
	hostTotal    = desc("l4lb_host_connections_total", "Connections (TCP) and sessions (UDP) opened to the host.", "upstream", "pool", "host")
	hostBytes    = desc("l4lb_host_bytes_total", "Bytes forwarded to and from the host, counted when a connection or session ends.", "upstream", "pool", "host", "direction")
	hostFails    = desc("l4lb_host_connect_failures_total", "Failed TCP connects to the host, by reason: refused, timeout, unreachable, other.", "upstream", "pool", "host", "reason")
	hostState    = desc("l4lb_host_state", "1 for the host's current state, 0 for the others.", "upstream", "pool", "host", "state")
	hostHealthy  = desc("l4lb_host_healthy", "1 when health checks and passive health say up, whatever an operator set.", "upstream", "pool", "host")
	hostWeight   = desc("l4lb_host_weight", "The host's configured weight.", "upstream", "pool", "host")
	hostMaxConns = desc("l4lb_host_max_connections", "The host's max_connections (absent when it has no limit).", "upstream", "pool", "host")
	hostCheckDur = desc("l4lb_host_health_check_duration_seconds", "How long the last active health check of the host took.", "upstream", "pool", "host")

	discIndex    = desc("l4lb_discovery_index", "Consul's index of the data a Consul pool uses.", "upstream", "pool", "watch")
	discAge      = desc("l4lb_discovery_age_seconds", "How old the data a Consul pool uses is (since Consul answered it).", "upstream", "pool", "watch")
	discHosts    = desc("l4lb_discovery_hosts", "Hosts a Consul pool has now.", "upstream", "pool", "watch")
	discSource   = desc("l4lb_discovery_source", "1 for where a Consul pool's hosts come from now: consul, last_known_good, waiting.", "upstream", "pool", "watch", "source")
	discFailures = desc("l4lb_discovery_failures", "Consecutive failed Consul queries for the pool's watch (0 while healthy).", "upstream", "pool", "watch")

	reloads        = desc("l4lb_config_reloads_total", "Successful config reloads.")
	reloadFailures = desc("l4lb_config_reload_failures_total", "Failed config reloads (the running config was kept).")
)

var allDescs = []*prometheus.Desc{
	listenerInfo,
	tcpActive, tcpAccepted, tcpRejected, tcpNoBackend, tcpAcceptErrs, tcpAttempts, tcpConnectFail, tcpHostFull,
	udpActive, udpCreated, udpEnded, udpDropped, udpHostErr, udpDgrams, udpBytes,
	hostActive, hostTotal, hostBytes, hostFails, hostState, hostHealthy, hostWeight, hostMaxConns, hostCheckDur,
	discIndex, discAge, discHosts, discSource, discFailures,
	reloads, reloadFailures,
}

var states = []pool.State{pool.StateUp, pool.StateDown, pool.StateManualDown, pool.StateDraining}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect reads the source's counters once.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	for _, l := range c.src.Listeners() {
		n := l.Name()
		gauge(listenerInfo, 1, n, "tcp", l.Addr().String(), upstreamOf(l.Settings()))
		st := l.Stats()
		gauge(tcpActive, float64(st.Active), n)
		counter(tcpAccepted, st.Accepted, n)
		counter(tcpRejected, st.Denied, n, "denied")
		counter(tcpRejected, st.OverListenerLimit, n, "max_connections")
		counter(tcpRejected, st.OverClientLimit, n, "max_connections_per_client")
		counter(tcpRejected, st.Untrusted, n, "untrusted_proxy")
		counter(tcpRejected, st.BadProxyHeader, n, "bad_proxy_header")
		counter(tcpNoBackend, st.NoBackend, n)
		counter(tcpAcceptErrs, st.AcceptErrors, n)
		counter(tcpAttempts, st.Connected+st.ConnectFails, n)
		counter(tcpConnectFail, st.ConnectFails, n)
		counter(tcpHostFull, st.HostFull, n)
	}
	for _, l := range c.src.UDPListeners() {
		n := l.Name()
		up := ""
		if s := l.Settings(); s != nil && s.Upstream != nil {
			up = s.Upstream.Name // nil: bound by a reload, settings not yet published
		}
		gauge(listenerInfo, 1, n, "udp", l.Addr().String(), up)
		st := l.Stats()
		gauge(udpActive, float64(st.SessionsActive), n)
		counter(udpCreated, st.SessionsCreated, n)
		counter(udpEnded, st.SessionsExpired, n, "expired")
		counter(udpEnded, st.SessionsCompleted, n, "completed")
		counter(udpEnded, st.SessionsFailed, n, "failed")
		counter(udpDropped, st.DroppedFull, n, "full")
		counter(udpDropped, st.DroppedNoHost, n, "no_host")
		counter(udpDropped, st.DroppedError, n, "error")
		counter(udpHostErr, st.HostErrors, n)
		counter(udpDgrams, st.DatagramsUp, n, "up")
		counter(udpDgrams, st.DatagramsDown, n, "down")
		counter(udpBytes, st.BytesUp, n, "up")
		counter(udpBytes, st.BytesDown, n, "down")
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
		gauge(hostActive, float64(h.Active), lv...)
		counter(hostTotal, h.Total, lv...)
		counter(hostBytes, h.BytesToHost, append(lv, "to_host")...)
		counter(hostBytes, h.BytesFromHost, append(lv, "from_host")...)
		for kind, n := range h.ConnectFailures {
			counter(hostFails, n, append(lv, pool.FailKind(kind).String())...)
		}
		for _, s := range states {
			gauge(hostState, boolf(h.State == s), append(lv, s.String())...)
		}
		gauge(hostHealthy, boolf(h.Healthy), lv...)
		gauge(hostWeight, float64(h.Weight), lv...)
		if h.MaxConns > 0 {
			gauge(hostMaxConns, float64(h.MaxConns), lv...)
		}
		if h.CheckDuration > 0 {
			gauge(hostCheckDur, h.CheckDuration.Seconds(), lv...)
		}
	}

	now := time.Now()
	for _, d := range st.Discovery {
		lv := []string{d.Upstream, d.Pool, d.Watch}
		gauge(discIndex, float64(d.Index), lv...)
		if !d.Updated.IsZero() {
			gauge(discAge, now.Sub(d.Updated).Seconds(), lv...)
		}
		gauge(discHosts, float64(d.Hosts), lv...)
		for _, src := range []string{"consul", "last_known_good", "waiting"} {
			gauge(discSource, boolf(d.Source == src), append(lv, src)...)
		}
		gauge(discFailures, float64(d.Failures), lv...)
	}

	counter(reloads, c.src.Reloads())
	counter(reloadFailures, c.src.ReloadFailures())
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
