package metrics_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/l4lb/l4lb/internal/metrics"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/l4lb/l4lb/internal/testbackend"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// splice's engine loops live as long as the process, like Go's netpoller.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(testbackend.EngineGoroutine))
}

// startMetrics serves reg on 127.0.0.1:0 until the test ends.
func startMetrics(t *testing.T, src metrics.Source) string {
	t.Helper()
	ms, err := metrics.Listen("127.0.0.1:0", metrics.NewHandler(src, "v1.2.3-test"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ms.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics Run: %v", err)
		}
	})
	return ms.Addr().String()
}

// get fetches a path from the metrics server without keeping a connection
// (goleak would see the client's idle connection goroutines).
func get(t *testing.T, addr, path string) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

type families map[string]*dto.MetricFamily

func scrape(t *testing.T, addr string) families {
	t.Helper()
	code, body := get(t, addr, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the scrape: %v\n%s", err, body)
	}
	return fams
}

// value returns the value of the series of name whose labels include want
// ("k=v" pairs), and whether there is one.
func (f families) value(name string, want ...string) (float64, bool) {
	mf := f[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// Traffic through a real server: every connection tries the refusing host
// of the first pool, fails, and is served by the echo host of the second.
// The scrape must count exactly that.
func TestScrapeAfterKnownTraffic(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	refused := testbackend.Refuser(t)
	toml := fmt.Sprintf(`
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "app"
deny = ["127.0.0.2"]

[upstream.app]
tries = 2
max_fails = 0  # the refusing host stays up: every connection tries it first

[[upstream.app.pool]]
name = "first"
priority = 0
hosts = [{ address = %q, id = "refuser" }]

[[upstream.app.pool]]
name = "second"
priority = 1
hosts = [{ address = %q, id = "echo" }]
[upstream.app.pool.health]
type = "tcp"
interval = "100ms"
timeout = "50ms"
`, refused, echo.Addr())
	srv := runServer(t, toml)
	addr := srv.Listeners()[0].Addr().String()
	maddr := startMetrics(t, srv)

	// Known traffic: n connections of known sizes, echoed back whole.
	sizes := []int{1, 100, 4096, 65536, 1 << 20}
	var sent int
	for _, n := range sizes {
		echoOnce(t, addr, n)
		sent += n
	}
	// One client refused by the deny list, before any backend work.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	if c, err := d.Dial("tcp", addr); err != nil {
		t.Fatal(err)
	} else {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("the denied client read a byte")
		}
		c.Close()
	}
	// Wait for every handler to account for its connection.
	l := srv.Listeners()[0]
	deadline := time.Now().Add(5 * time.Second)
	for st := l.Stats(); st.Active != 0 || st.Accepted != uint64(len(sizes)+1); st = l.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("listener never settled: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Wait for one health check of the echo host.
	for !checked(srv, "echo") {
		if time.Now().After(deadline) {
			t.Fatal("no health check ran")
		}
		time.Sleep(5 * time.Millisecond)
	}

	f := scrape(t, maddr)
	n := float64(len(sizes))
	refuser := []string{"upstream=app", "pool=first", "host=refuser"}
	echoH := []string{"upstream=app", "pool=second", "host=echo"}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"l4lb_listener_connections_total", []string{"listener=front"}, n + 1},
		{"l4lb_listener_connections_active", []string{"listener=front"}, 0},
		{"l4lb_listener_rejected_total", []string{"listener=front", "reason=denied"}, 1},
		{"l4lb_listener_rejected_total", []string{"listener=front", "reason=max_connections"}, 0},
		{"l4lb_listener_connect_attempts_total", []string{"listener=front"}, 2 * n},
		{"l4lb_listener_connect_failures_total", []string{"listener=front"}, n},
		{"l4lb_listener_no_backend_total", []string{"listener=front"}, 0},
		{"l4lb_listener_accept_errors_total", []string{"listener=front"}, 0},
		{"l4lb_listener_info", []string{"listener=front", "protocol=tcp", "upstream=app", "address=" + addr}, 1},

		{"l4lb_host_connections_total", echoH, n},
		{"l4lb_host_connections_active", echoH, 0},
		{"l4lb_host_bytes_total", append(echoH, "direction=to_host"), float64(sent)},
		{"l4lb_host_bytes_total", append(echoH, "direction=from_host"), float64(sent)},
		{"l4lb_host_connect_failures_total", append(echoH, "reason=refused"), 0},
		{"l4lb_host_state", append(echoH, "state=up"), 1},
		{"l4lb_host_state", append(echoH, "state=down"), 0},
		{"l4lb_host_healthy", echoH, 1},
		{"l4lb_host_weight", echoH, 1},

		{"l4lb_host_connections_total", refuser, 0},
		{"l4lb_host_bytes_total", append(refuser, "direction=to_host"), 0},
		{"l4lb_host_connect_failures_total", append(refuser, "reason=refused"), n},
		{"l4lb_host_connect_failures_total", append(refuser, "reason=timeout"), 0},

		{"l4lb_config_reloads_total", nil, 0},
		{"l4lb_config_reload_failures_total", nil, 0},
		{"l4lb_build_info", []string{"version=v1.2.3-test"}, 1},
	} {
		got, ok := f.value(c.name, c.labels...)
		if !ok {
			t.Errorf("%s%v: missing", c.name, c.labels)
		} else if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if d, ok := f.value("l4lb_host_health_check_duration_seconds", echoH...); !ok || d <= 0 || d > 1 {
		t.Errorf("check duration of the echo host = %v, %v; want a small positive number", d, ok)
	}
	if _, ok := f.value("l4lb_host_health_check_duration_seconds", refuser...); ok {
		t.Error("a check duration for a host without active checks")
	}
	if _, ok := f.value("process_open_fds"); !ok {
		t.Error("no process metrics")
	}
}

// checked reports whether the host with id has had an active check.
func checked(srv *server.Server, id string) bool {
	for _, h := range srv.Status().Hosts {
		if h.ID == id && h.CheckDuration > 0 {
			return true
		}
	}
	return false
}

// echoOnce sends n bytes through addr, half-closes, and checks that the
// same n bytes come back.
func echoOnce(t *testing.T, addr string, n int) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := bytes.Repeat([]byte("x"), n)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		t.Fatal(werr)
	}
	if err != nil || len(got) != n {
		t.Fatalf("echo of %d bytes: got %d, %v", n, len(got), err)
	}
}

func TestServerStopsWithContext(t *testing.T) {
	cfg, err := config.Parse("test.toml", []byte(""))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New("", cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ms, err := metrics.Listen("127.0.0.1:0", metrics.NewHandler(srv, "test"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	addr := ms.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ms.Run(ctx) }()

	for _, c := range []struct {
		path string
		code int
		body string
	}{
		{"/healthz", 200, "ok\n"},
		{"/metrics", 200, "l4lb_build_info"},
		{"/", 404, ""},
		{"/debug/pprof/", 404, ""},
	} {
		code, body := get(t, addr, c.path)
		if code != c.code || !strings.Contains(string(body), c.body) {
			t.Errorf("GET %s: %d %q, want %d with %q", c.path, code, body, c.code, c.body)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("still listening after Run returned")
	}
}

func TestListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := metrics.Listen(ln.Addr().String(), nil, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "metrics:") {
		t.Errorf("Listen on a taken port: %v", err)
	}
}

// runServer runs an l4lb server from toml in-process until the test ends.
func runServer(t *testing.T, toml string) *server.Server {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, "", cfg)
}

// TestDiscoveryMetrics: a pool following a service of the Consul stand-in
// shows its index, host count, source and age.
func TestDiscoveryMetrics(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	echo := testbackend.New(t, testbackend.Echo)
	host, port, _ := net.SplitHostPort(echo.Addr())
	p, _ := strconv.Atoi(port)
	agent.Register("app", consultest.Instance{Address: host, Port: p})
	srv := runServer(t, fmt.Sprintf(`
[consul]
address = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "app"

[upstream.app]
[[upstream.app.pool]]
name = "p"
consul = { service = "app" }
`, agent.Addr()))
	maddr := startMetrics(t, srv)
	// Run starts the listeners once discovery has its first answer.
	echoOnce(t, srv.Listeners()[0].Addr().String(), 10)
	f := scrape(t, maddr)
	lv := []string{"upstream=app", "pool=p"}
	if v, ok := f.value("l4lb_discovery_hosts", lv...); !ok || v != 1 {
		t.Errorf("l4lb_discovery_hosts = %v, %v", v, ok)
	}
	if v, ok := f.value("l4lb_discovery_index", lv...); !ok || v < 1 {
		t.Errorf("l4lb_discovery_index = %v, %v", v, ok)
	}
	if v, ok := f.value("l4lb_discovery_source", append(lv, "source=consul")...); !ok || v != 1 {
		t.Errorf("l4lb_discovery_source{consul} = %v, %v", v, ok)
	}
	if _, ok := f.value("l4lb_discovery_age_seconds", lv...); !ok {
		t.Error("no l4lb_discovery_age_seconds")
	}
}

// udpEcho answers every datagram with the same bytes until the test ends.
func udpEcho(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// runServerFile is runServer on a config file, so that Reload re-reads it.
func runServerFile(t *testing.T, path, toml string) *server.Server {
	t.Helper()
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, path, cfg)
}

// serve binds and runs a server for cfg (read from path, "" = none) until
// the test ends.
func serve(t *testing.T, path string, cfg *config.Config) *server.Server {
	t.Helper()
	srv, err := server.New(path, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Bind(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server Run: %v", err)
		}
	})
	return srv
}

// TestScrapeUDPAndReloads: known UDP traffic (a session that completes
// after its responses, one left open, one client dropped by max_sessions)
// and known reloads (two good, one bad) show up in the scrape exactly.
func TestScrapeUDPAndReloads(t *testing.T) {
	echo := udpEcho(t)
	path := filepath.Join(t.TempDir(), "l4lb.toml")
	toml := fmt.Sprintf(`
[[listener]]
name = "dns"
listen = "127.0.0.1:0"
protocol = "udp"
upstream = "dns"
responses = 2
max_sessions = 1
idle_timeout = "1m"

[upstream.dns]
[[upstream.dns.pool]]
name = "p"
hosts = [{ address = %q, id = "echo" }]
`, echo)
	srv := runServerFile(t, path, toml)
	maddr := startMetrics(t, srv)
	l := srv.UDPListeners()[0]
	addr := l.Addr().String()

	exchange := func(c net.Conn, payload string, answered bool) {
		t.Helper()
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		wait := 5 * time.Second
		if !answered {
			wait = 300 * time.Millisecond
		}
		c.SetReadDeadline(time.Now().Add(wait))
		n, err := c.Read(buf)
		switch {
		case answered && (err != nil || string(buf[:n]) != payload):
			t.Fatalf("%q: got %q, %v", payload, buf[:n], err)
		case !answered && err == nil:
			t.Fatalf("%q: answered %q, want it dropped", payload, buf[:n])
		}
	}
	dial := func() net.Conn {
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// a: two datagrams, two answers, then the session completes
	// (responses = 2) and frees the table's one slot.
	a := dial()
	exchange(a, "ping-1", true)
	exchange(a, "ping-22", true)
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().SessionsActive != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a's session never completed: %+v", l.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// b: one datagram, its session stays open and fills the table; c is
	// then dropped.
	b := dial()
	exchange(b, "ping-333", true)
	exchange(dial(), "dropped", false)
	up := float64(len("ping-1") + len("ping-22") + len("ping-333"))
	// A reply is counted just after it is sent, a session's bytes on the
	// host once its owner has taken it out: let both happen.
	for st := l.Stats(); st.DatagramsDown != 3 || st.DroppedFull != 1 || hostBytes(srv, "echo") == 0; st = l.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("udp listener never settled: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Reloads: two good (the same file), one bad; the bad one keeps the
	// running config and its sessions.
	for i := 0; i < 2; i++ {
		if err := srv.Reload(); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	if err := os.WriteFile(path, []byte("[[listener]]\nname = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err == nil {
		t.Fatal("a bad config reloaded")
	}

	f := scrape(t, maddr)
	lv := []string{"listener=dns"}
	host := []string{"upstream=dns", "pool=p", "host=echo"}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"l4lb_listener_info", append(lv, "protocol=udp", "upstream=dns", "address="+addr), 1},
		{"l4lb_udp_sessions_total", lv, 2},
		{"l4lb_udp_sessions_active", lv, 1},
		{"l4lb_udp_sessions_ended_total", append(lv, "end=completed"), 1},
		{"l4lb_udp_sessions_ended_total", append(lv, "end=expired"), 0},
		{"l4lb_udp_sessions_ended_total", append(lv, "end=failed"), 0},
		{"l4lb_udp_dropped_datagrams_total", append(lv, "reason=full"), 1},
		{"l4lb_udp_dropped_datagrams_total", append(lv, "reason=no_host"), 0},
		{"l4lb_udp_dropped_datagrams_total", append(lv, "reason=error"), 0},
		{"l4lb_udp_host_errors_total", lv, 0},
		{"l4lb_udp_datagrams_total", append(lv, "direction=up"), 3},
		{"l4lb_udp_datagrams_total", append(lv, "direction=down"), 3},
		{"l4lb_udp_bytes_total", append(lv, "direction=up"), up},
		{"l4lb_udp_bytes_total", append(lv, "direction=down"), up},
		{"l4lb_host_connections_total", host, 2},
		{"l4lb_host_connections_active", host, 1},
		// Added when a session ends: a's only.
		{"l4lb_host_bytes_total", append(host, "direction=to_host"), float64(len("ping-1") + len("ping-22"))},
		{"l4lb_host_bytes_total", append(host, "direction=from_host"), float64(len("ping-1") + len("ping-22"))},

		{"l4lb_config_reloads_total", nil, 2},
		{"l4lb_config_reload_failures_total", nil, 1},
	} {
		got, ok := f.value(c.name, c.labels...)
		if !ok {
			t.Errorf("%s%v: missing", c.name, c.labels)
		} else if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// hostBytes is the bytes to the host with id, as status counts them.
func hostBytes(srv *server.Server, id string) uint64 {
	for _, h := range srv.Status().Hosts {
		if h.ID == id {
			return h.BytesToHost
		}
	}
	return 0
}

// TestScrapeHostFull: a host at its max_connections shows its limit, and
// reaching it counts once on the listener.
func TestScrapeHostFull(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	srv := runServer(t, fmt.Sprintf(`
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "app"

[upstream.app]
[[upstream.app.pool]]
name = "p"
hosts = [{ address = %q, id = "a", max_connections = 1 }, { address = %q, id = "b" }]
`, a.Addr(), b.Addr()))
	addr := srv.Listeners()[0].Addr().String()
	maddr := startMetrics(t, srv)
	// Connections stay open until the test ends: a fills at its first.
	var tags []string
	for i := 0; i < 4; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		tags = append(tags, strings.TrimSpace(line))
	}
	if strings.Count(strings.Join(tags, ""), "a") != 1 {
		t.Fatalf("tags %v: want a exactly once (max_connections = 1)", tags)
	}
	f := scrape(t, maddr)
	if v, ok := f.value("l4lb_listener_host_full_total", "listener=front"); !ok || v != 1 {
		t.Errorf("l4lb_listener_host_full_total = %v, %v; want 1", v, ok)
	}
	if v, ok := f.value("l4lb_host_max_connections", "upstream=app", "pool=p", "host=a"); !ok || v != 1 {
		t.Errorf("l4lb_host_max_connections{a} = %v, %v; want 1", v, ok)
	}
	if _, ok := f.value("l4lb_host_max_connections", "host=b"); ok {
		t.Error("l4lb_host_max_connections for b, which has no limit")
	}
}
