package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/testbackend"
)

// consulConf is a listener whose upstream has one pool that follows the
// service "svc" of the agent at %s.
const consulConf = `
[control]
state_dir = %q

[consul]
address = %q
wait = "2s"
backoff_min = "50ms"
backoff_max = "200ms"
startup_timeout = "500ms"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "500ms"
drain_timeout = "1s"

[upstream.u]
tries = 3
max_fails = 1
fail_timeout = "1s"

[[upstream.u.pool]]
name = "main"
consul = { service = "svc" }

[[upstream.u.pool]]
name = "static"
priority = 10
hosts = [ { address = "%s", id = "static" } ]
`

func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

func register(t *testing.T, a *consultest.Agent, addr string) string {
	t.Helper()
	h, p := hostPort(t, addr)
	a.Register("svc", consultest.Instance{Address: h, Port: p})
	return addr
}

// hostsOf returns the ids of the live pool's hosts.
func livePoolHosts(s *Server, pl string) []string {
	u := s.LiveUpstream("u")
	if u == nil {
		return nil
	}
	for _, p := range u.Pools() {
		if p.Name == pl {
			var out []string
			for _, h := range p.Hosts {
				out = append(out, h.ID)
			}
			return out
		}
	}
	return nil
}

// waitHosts waits until pool pl has exactly want (in order) and returns
// how long that took.
func waitHosts(t *testing.T, s *Server, pl string, within time.Duration, want ...string) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		got := livePoolHosts(s, pl)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return time.Since(t0)
		}
		if time.Since(t0) > within {
			t.Fatalf("pool %s has %v, want %v (after %s)", pl, got, want, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestConsulPoolFollows: a TCP listener's pool follows the stand-in agent;
// the proxy sends connections to instances as they register and stops
// as they deregister, within one round trip.
func TestConsulPoolFollows(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	ba := testbackend.New(t, testbackend.Tagger("a"))
	bb := testbackend.New(t, testbackend.Tagger("b"))
	bc := testbackend.New(t, testbackend.Tagger("c"))
	static := testbackend.New(t, testbackend.Tagger("static"))
	register(t, a, ba.Addr())
	r := startServer(t, fmt.Sprintf(consulConf, t.TempDir(), a.Addr(), static.Addr()))
	waitHosts(t, r.s, "main", time.Second, ba.Addr())
	if got := tag(t, r.addr); got != "a" {
		t.Fatalf("first connection went to %q", got)
	}
	r.waitEvents(t, events.PoolUpdated, time.Second, "")

	var worst time.Duration
	follow := func(what string, f func(), want ...string) {
		t.Helper()
		t0 := time.Now()
		f()
		waitHosts(t, r.s, "main", time.Second, want...)
		d := time.Since(t0)
		worst = max(worst, d)
		t.Logf("%s: the proxy's pool followed in %s", what, d.Round(10*time.Microsecond))
	}
	follow("register b", func() { register(t, a, bb.Addr()) }, sortIDs(ba.Addr(), bb.Addr())...)
	follow("register c", func() { register(t, a, bc.Addr()) }, sortIDs(ba.Addr(), bb.Addr(), bc.Addr())...)
	seen := map[string]bool{}
	for range 12 {
		seen[tag(t, r.addr)] = true
	}
	if !seen["a"] || !seen["b"] || !seen["c"] {
		t.Errorf("connections went to %v, want a, b and c", seen)
	}
	follow("deregister a", func() { a.Deregister("svc", ba.Addr()) }, sortIDs(bb.Addr(), bc.Addr())...)
	for range 8 {
		if got := tag(t, r.addr); got == "a" {
			t.Fatalf("a connection went to a deregistered instance")
		}
	}
	t.Logf("follow latency through l4lb: worst %s", worst.Round(10*time.Microsecond))

	st := r.s.Status()
	if len(st.Discovery) != 1 {
		t.Fatalf("status discovery = %+v", st.Discovery)
	}
	ds := st.Discovery[0]
	if ds.Upstream != "u" || ds.Pool != "main" || ds.Source != "consul" || ds.Index == 0 || ds.Hosts != 2 || ds.Age == "" {
		t.Errorf("discovery status = %+v", ds)
	}
	for _, h := range st.Hosts {
		if h.Pool == "main" && h.Source != control.SourceConsul {
			t.Errorf("host %s source %q", h.ID, h.Source)
		}
	}

	// Edits of the discovered hosts are refused; the pool itself may change.
	err := r.s.AddHost("u", "main", control.HostSpec{Address: static.Addr()})
	if !errors.Is(err, control.ErrConflict) || !strings.Contains(err.Error(), `pool "main" takes its hosts from Consul`) {
		t.Errorf("AddHost in a consul pool: %v", err)
	}
	if err := r.s.HostAction("u", "main", bb.Addr(), control.ActionDown); !errors.Is(err, control.ErrConflict) {
		t.Errorf("HostAction in a consul pool: %v", err)
	}
	up, err := r.s.Upstream("u")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.s.PutUpstream(up); err != nil {
		t.Errorf("putting back what GET returned: %v", err)
	}
	// The same through the control socket, as `curl -X PUT` of a GET's
	// body does: the hosts' read-only source must reach the server, which
	// ignores the Consul pool's discovered hosts rather than refusing them.
	_, cc := startControl(t, r.s, control.ServerConfig{})
	got, err := cc.Upstream(t.Context(), "u")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cc.PutUpstream(t.Context(), got); err != nil {
		t.Errorf("PUT through the socket of what GET returned: %v", err)
	}
	waitHosts(t, r.s, "main", time.Second, sortIDs(bb.Addr(), bc.Addr())...)
	if err := r.s.PatchPool("u", "main", control.PoolPatch{Priority: ptr(5)}); err != nil {
		t.Errorf("PatchPool: %v", err)
	}
	waitHosts(t, r.s, "main", time.Second, sortIDs(bb.Addr(), bc.Addr())...)

	// Consul fails: one discovery_error per pool, then discovery_recovered.
	a.SetFault(consultest.Error500)
	a.Touch()
	r.waitEvents(t, events.DiscoveryError, 2*time.Second, "")
	a.SetFault(consultest.None)
	r.waitEvents(t, events.DiscoveryRecovered, 2*time.Second, "")
	if got := tag(t, r.addr); got != "b" && got != "c" {
		t.Errorf("during and after the outage, a connection went to %q", got)
	}
}

func ptr[T any](v T) *T { return &v }

// sortIDs sorts like the discovery: by "address:port" as a string.
func sortIDs(ids ...string) []string {
	out := append([]string(nil), ids...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestConsulColdStartLKG: Consul is down at start; the pool serves the
// last-known-good copy at once, and converges when Consul comes up.
func TestConsulColdStartLKG(t *testing.T) {
	dir := t.TempDir()
	ba := testbackend.New(t, testbackend.Tagger("a"))
	bb := testbackend.New(t, testbackend.Tagger("b"))
	static := testbackend.New(t, testbackend.Tagger("static"))
	h, p := hostPort(t, ba.Addr())
	w := discovery.Watch{Service: "svc", PassingOnly: true}
	b, err := discovery.EncodeLKG(discovery.LKG{Watch: w.Key(), Index: 9, Time: time.Now().Add(-time.Hour),
		Instances: []discovery.Instance{{ID: ba.Addr(), Address: h, Port: p, Weight: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(discovery.LKGPath(dir, w.Key()), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()

	t0 := time.Now()
	r := startServer(t, fmt.Sprintf(consulConf, dir, down, static.Addr()))
	if got := tag(t, r.addr); got != "a" {
		t.Fatalf("with consul down, a connection went to %q, want a (the last-known-good host)", got)
	}
	t.Logf("consul refused: first connection served by the last-known-good host %s after start", time.Since(t0).Round(time.Millisecond))
	ds := r.s.DiscoveryStatus()
	if len(ds) != 1 || ds[0].Source != "last_known_good" || ds[0].Index != 9 || !strings.HasPrefix(ds[0].Age, "1h") {
		t.Errorf("status = %+v", ds)
	}

	a, err := consultest.NewAt(down)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", down, err)
	}
	defer a.Close()
	register(t, a, bb.Addr())
	t1 := time.Now()
	waitHosts(t, r.s, "main", 2*time.Second, bb.Addr())
	t.Logf("converged on consul %s after it came up", time.Since(t1).Round(time.Millisecond))
	if got := tag(t, r.addr); got != "b" {
		t.Errorf("after consul came up, a connection went to %q", got)
	}
	if ds := r.s.DiscoveryStatus(); ds[0].Source != "consul" {
		t.Errorf("status = %+v", ds)
	}
}

// TestConsulSharedWatch: pools (here of two upstreams) that follow the
// same service with the same filters share one watcher, counted at the
// stand-in per watch (service, tags, datacenter, passing): one first query
// each, however many pools follow it; pools with another tag or datacenter
// get their own. A host id used by a static pool of the same upstream is
// qualified with the pool name.
func TestConsulSharedWatch(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	ba := testbackend.New(t, testbackend.Tagger("a"))
	register(t, a, ba.Addr())
	conf := fmt.Sprintf(consulConf, t.TempDir(), a.Addr(), ba.Addr())
	conf = strings.Replace(conf, `id = "static"`, fmt.Sprintf("id = %q", ba.Addr()), 1)
	conf += `
[upstream.v]
[[upstream.v.pool]]
name = "p"
consul = { service = "svc", passing_only = true }

[[upstream.v.pool]]
name = "tagged"
priority = 1
consul = { service = "svc", tag = "x" }

[upstream.w]
[[upstream.w.pool]]
name = "p"
consul = { service = "svc" }

[[upstream.w.pool]]
name = "dc2"
priority = 1
consul = { service = "svc", datacenter = "dc2" }
`
	r := startServer(t, conf)
	// A connection is served only once every watch has had its first
	// answer (Run waits for all of them): every watcher has started.
	if got := tag(t, r.addr); got != "a" {
		t.Fatalf("first connection went to %q", got)
	}
	waitHosts(t, r.s, "main", time.Second, "main/"+ba.Addr())
	for watch, pools := range map[string]int{
		"svc?passing=1":        3, // u/main, v/p, w/p
		"svc?passing=1&tag=x":  1,
		"svc?dc=dc2&passing=1": 1,
	} {
		if q := a.Queries(watch); q.First != 1 {
			t.Errorf("watch %s (%d pools): %d watchers started (%d queries), want 1", watch, pools, q.First, q.Total)
		}
	}
	byWatch := map[string]int{}
	for _, d := range r.s.DiscoveryStatus() {
		byWatch[d.Watch]++
	}
	if len(byWatch) != 3 || byWatch["svc?passing=1"] != 3 {
		t.Errorf("status: pools per watch %v, want 3 watches, svc?passing=1 followed by 3 pools", byWatch)
	}
}

// TestConsulHealthChecks: l4lb's own active checks run on the hosts Consul
// gives: an instance Consul calls passing but that refuses connections is
// marked down by l4lb (host_down, with the check's reason) and gets no
// traffic; when it starts listening it comes back up (host_up).
func TestConsulHealthChecks(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	good := testbackend.New(t, testbackend.Tagger("good"))
	bad := testbackend.Refuser(t) // passing in Consul, nothing listening
	static := testbackend.New(t, testbackend.Tagger("static"))
	register(t, a, good.Addr())
	register(t, a, bad)
	conf := fmt.Sprintf(consulConf, t.TempDir(), a.Addr(), static.Addr())
	// Active checks only: no passive marking from failed connects.
	conf = strings.Replace(conf, "max_fails = 1", "max_fails = 0", 1)
	conf = strings.Replace(conf, "[[upstream.u.pool]]", `[upstream.u.health]
type = "tcp"
interval = "100ms"
timeout = "50ms"
rise = 2
fall = 2
jitter = "0s"

[[upstream.u.pool]]`, 1)
	r := startServer(t, conf)
	waitHosts(t, r.s, "main", time.Second, sortIDs(good.Addr(), bad)...)
	t0 := time.Now()
	e := r.waitEvent(t, events.HostDown, bad, 5*time.Second)
	t.Logf("discovered host %s marked down by l4lb's check after %s: %s", bad, time.Since(t0).Round(time.Millisecond), e.Reason)
	if e.Pool != "main" || e.Reason == "" {
		t.Errorf("host_down event %+v", e)
	}
	for _, h := range r.s.Status().Hosts {
		if h.ID == bad && (h.Source != control.SourceConsul || h.State.String() != "down") {
			t.Errorf("status of %s: source %s, state %s", bad, h.Source, h.State)
		}
	}
	for range 6 {
		if got := tag(t, r.addr); got != "good" {
			t.Fatalf("a connection went to %q with the bad instance down", got)
		}
	}
	// Consul never changed its mind: the host is still in the pool.
	waitHosts(t, r.s, "main", time.Second, sortIDs(good.Addr(), bad)...)

	back, err := testbackend.StartAt(bad, testbackend.Tagger("back"))
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", bad, err)
	}
	defer back.Close()
	r.waitEvent(t, events.HostUp, bad, 5*time.Second)
}

// TestConsulRedisChurn: redis clients through l4lb while instances
// register and deregister; as long as one instance passes, no request
// fails. Uses redis-server (and redis-benchmark when installed).
func TestConsulRedisChurn(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	if testing.Short() {
		t.Skip("short")
	}
	var addrs []string
	for i := range 3 {
		addrs = append(addrs, startRedis(t, i))
	}
	a := consultest.New()
	defer a.Close()
	register(t, a, addrs[0])
	static := testbackend.New(t, testbackend.Tagger("static"))
	// Long-lived benchmark connections to a deregistered instance drain;
	// give them longer than the test so that none is cut at its deadline.
	conf := strings.Replace(fmt.Sprintf(consulConf, t.TempDir(), a.Addr(), static.Addr()), `drain_timeout = "1s"`, `drain_timeout = "60s"`, 1)
	r := startServer(t, conf)
	waitHosts(t, r.s, "main", time.Second, addrs[0])

	ctx, cancel := context.WithCancel(context.Background())
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := redisPing(r.addr); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	var bench *exec.Cmd
	var benchOut strings.Builder
	if path, err := exec.LookPath("redis-benchmark"); err == nil {
		h, p := hostPort(t, r.addr)
		bench = exec.Command(path, "-h", h, "-p", strconv.Itoa(p), "-c", "8", "-n", "20000", "-t", "ping,set,get", "-q")
		bench.Stdout, bench.Stderr = &benchOut, &benchOut
		if err := bench.Start(); err != nil {
			t.Fatal(err)
		}
	}
	// Churn: always at least one registered, passing instance.
	steps := []func(){
		func() { register(t, a, addrs[1]) },
		func() { a.Deregister("svc", addrs[0]) },
		func() { register(t, a, addrs[2]) },
		func() { a.Deregister("svc", addrs[1]) },
		func() { register(t, a, addrs[0]) },
		func() { a.Deregister("svc", addrs[2]) },
	}
	for round := range 3 {
		for _, f := range steps {
			f()
			time.Sleep(150 * time.Millisecond)
		}
		_ = round
	}
	cancel()
	wg.Wait()
	t.Logf("plain connections (connect, PING, close) during 18 changes: %d ok, %d failed", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d requests failed while an instance passed; first: %v", failed.Load(), firstErr.Load())
	}
	if ok.Load() < 100 {
		t.Errorf("only %d requests", ok.Load())
	}
	if bench != nil {
		done := make(chan error, 1)
		go func() { done <- bench.Wait() }()
		select {
		case err := <-done:
			out := benchOut.String()
			for _, line := range strings.Split(strings.ReplaceAll(out, "\r", "\n"), "\n") {
				if strings.Contains(line, "requests per second") {
					t.Logf("redis-benchmark through l4lb during the churn: %s", strings.TrimSpace(line))
				}
			}
			if err != nil || strings.Contains(strings.ToLower(out), "error") {
				t.Errorf("redis-benchmark: %v\n%s", err, out)
			}
		case <-time.After(60 * time.Second):
			bench.Process.Kill()
			<-done
			t.Errorf("redis-benchmark did not finish")
		}
	}
}

func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("reply %q", line)
	}
	return nil
}

// startRedis runs a redis-server on a free port until the test ends.
func startRedis(t *testing.T, i int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port := hostPort(t, addr)
	dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
	os.MkdirAll(dir, 0o700)
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		if redisPing(addr) == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not start", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConsulRealAgent runs the follow scenario against a real dev agent
// when a consul binary is on PATH.
func TestConsulRealAgent(t *testing.T) {
	bin, err := exec.LookPath("consul")
	if err != nil {
		t.Skip("no consul binary on PATH: the real-agent scenario is skipped (the stand-in covers it)")
	}
	httpAddr := consultest.StartDev(t, bin)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	put := func(path, body string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			req, _ := http.NewRequest("PUT", "http://"+httpAddr+path, strings.NewReader(body))
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("PUT %s: %v", path, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	ba := testbackend.New(t, testbackend.Tagger("a"))
	bb := testbackend.New(t, testbackend.Tagger("b"))
	static := testbackend.New(t, testbackend.Tagger("static"))
	reg := func(id, addr string) {
		h, p := hostPort(t, addr)
		put("/v1/agent/service/register", fmt.Sprintf(`{"ID":%q,"Name":"svc","Address":%q,"Port":%d}`, id, h, p))
	}
	reg("a", ba.Addr())
	r := startServer(t, fmt.Sprintf(consulConf, t.TempDir(), httpAddr, static.Addr()))
	waitHosts(t, r.s, "main", 5*time.Second, ba.Addr())
	t0 := time.Now()
	reg("b", bb.Addr())
	waitHosts(t, r.s, "main", 5*time.Second, sortIDs(ba.Addr(), bb.Addr())...)
	t.Logf("real agent: register followed in %s", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	put("/v1/agent/service/deregister/a", "")
	waitHosts(t, r.s, "main", 5*time.Second, bb.Addr())
	t.Logf("real agent: deregister followed in %s", time.Since(t0).Round(time.Millisecond))
}
