package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/l4lbtest"
	"github.com/l4lb/l4lb/internal/testbackend"
)

// The tests in this file run the real l4lb binary, built once per test run.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "l4lb-e2e")
	if err != nil {
		panic(err)
	}
	if binPath, err = l4lbtest.Build(dir, true); err != nil {
		fmt.Fprintf(os.Stderr, "building l4lb: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startL4lb runs the binary under test on config and waits until it is
// ready (see package l4lbtest).
func startL4lb(t *testing.T, config string) *l4lbtest.Proc {
	t.Helper()
	return l4lbtest.Start(t, binPath, config)
}

func tcpConfig(drain string, pools ...[]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[log]
level = "info"
format = "json"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "1s"
drain_timeout = %q

[upstream.u]
tries = 3
`, drain)
	for i, hosts := range pools {
		fmt.Fprintf(&b, "\n[[upstream.u.pool]]\nname = \"p%d\"\npriority = %d\nhosts = [\n", i, i*10)
		for _, h := range hosts {
			fmt.Fprintf(&b, "  { address = %q },\n", h)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte(tcpConfig("1s", []string{"127.0.0.1:6379"})), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(strings.Replace(strings.Replace(tcpConfig("1s", []string{"127.0.0.1:6379"}),
		`connect_timeout = "1s"`, `connect_timeout = "1x"`, 1), "tries = 3", "tries = 0\ncolour = \"red\"", 1)), 0o644)

	var out, errb bytes.Buffer
	if code := mainExit([]string{"check", "-c", good}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != "ok" {
		t.Fatalf("check good: exit %d, out %q, err %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := mainExit([]string{"check", "-c", bad}, &out, &errb)
	if code != 1 {
		t.Fatalf("check bad: exit %d", code)
	}
	// Every problem is reported, each with the file, line and key.
	for _, want := range []string{
		`bad.toml:\d+: listener\[0\]\.connect_timeout: `,
		`bad.toml:\d+: upstream\.u\.tries: `,
		`bad.toml:\d+: .*colour`,
	} {
		if !regexp.MustCompile(want).MatchString(errb.String()) {
			t.Errorf("check bad: output lacks %s:\n%s", want, errb.String())
		}
	}
	if code := mainExit([]string{"check", "-c", filepath.Join(dir, "missing.toml")}, &out, &errb); code != 1 {
		t.Fatalf("check missing file: exit %d", code)
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binPath, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "l4lb ") {
		t.Fatalf("version: %q, %v", out, err)
	}
}

// TestSIGTERM: SIGTERM stops accepting at once, lets a live connection keep
// working until drain_timeout, closes it then, and exits 0.
func TestSIGTERM(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	p := startL4lb(t, tcpConfig("1s", []string{echo.Addr()}))
	addr := p.Addrs["front"]
	live, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.SetDeadline(time.Now().Add(20 * time.Second))
	ping := func() error {
		live.Write([]byte("ping"))
		_, err := io.ReadFull(live, make([]byte, 4))
		return err
	}
	if err := ping(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	// Logged by the listener once it has closed its socket.
	p.WaitLog(t, "draining connections", 5*time.Second)
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("new connection accepted during drain")
	}
	if err := ping(); err != nil {
		t.Fatalf("live connection broken during drain: %v", err)
	}
	if _, err := live.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("live connection at drain timeout: %v, want EOF", err)
	}
	if err := p.WaitExit(t, 10*time.Second); err != nil {
		t.Fatalf("exit: %v, want 0", err)
	}
	if d := time.Since(start); d < time.Second || d > 5*time.Second {
		t.Fatalf("exited %v after SIGTERM with drain_timeout 1s", d)
	}
}

// TestConnectionLogLine: one line per connection when it ends, with the
// listener, client, pool, host, bytes each way, duration and how it ended.
func TestConnectionLogLine(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	p := startL4lb(t, tcpConfig("1s", []string{echo.Addr()}))
	c, err := net.Dial("tcp", p.Addrs["front"])
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	io.ReadAll(c)
	c.Close()
	line := p.WaitLog(t, "connection closed", 10*time.Second)
	want := map[string]any{"listener": "front", "pool": "p0", "host": echo.Addr(), "bytes_up": 5.0, "bytes_down": 5.0, "end": "closed", "client": c.LocalAddr().String()}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("log field %s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	if _, ok := line["duration"]; !ok {
		t.Errorf("no duration in %v", line)
	}
}

// redisServer runs a real redis-server on a free loopback port.
func redisServer(t *testing.T) string {
	t.Helper()
	bin := testbackend.Tool(t, "redis-server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if !ok && strings.Contains(sc.Text(), "Ready to accept connections") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("redis-server exited before it was ready")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("redis-server not ready in 20s")
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func redisTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testbackend.Tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestRedis: redis-cli and redis-benchmark through l4lb to two real
// redis-servers; both get connections, no request fails.
func TestRedis(t *testing.T) {
	r1, r2 := redisServer(t), redisServer(t)
	p := startL4lb(t, tcpConfig("1s", []string{r1, r2}))
	host, port, _ := net.SplitHostPort(p.Addrs["front"])

	if out := redisTool(t, "redis-cli", "-h", host, "-p", port, "SET", "k", "v"); strings.TrimSpace(out) != "OK" {
		t.Fatalf("SET through l4lb: %q", out)
	}
	// The next connection goes to the other server (round robin).
	out := redisTool(t, "redis-cli", "-h", host, "-p", port, "GET", "k")
	out += redisTool(t, "redis-cli", "-h", host, "-p", port, "GET", "k")
	if !strings.Contains(out, "v") {
		t.Fatalf("GET through l4lb never reached the server holding k: %q", out)
	}

	bench := redisTool(t, "redis-benchmark", "-h", host, "-p", port, "-c", "50", "-n", "20000", "-t", "set,get,ping", "-q")
	if !strings.Contains(bench, "GET: ") || !strings.Contains(bench, "SET: ") || strings.Contains(strings.ToLower(bench), "error") {
		t.Fatalf("redis-benchmark through l4lb:\n%s", bench)
	}
	t.Logf("redis-benchmark through l4lb (not a performance figure; see make bench):\n%s", bench)
	// Both servers took connections.
	for _, r := range []string{r1, r2} {
		h, pt, _ := net.SplitHostPort(r)
		info := redisTool(t, "redis-cli", "-h", h, "-p", pt, "INFO", "stats")
		m := regexp.MustCompile(`total_connections_received:(\d+)`).FindStringSubmatch(info)
		if m == nil || m[1] == "0" || m[1] == "1" {
			t.Errorf("redis %s saw %v connections", r, m)
		}
	}
}

// curlUnix runs real curl against the control socket and returns the HTTP
// status and body.
func curlUnix(t *testing.T, socket, method, path, body string) (int, string) {
	t.Helper()
	bin := testbackend.Tool(t, "curl")
	args := []string{"-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", socket, "-X", method, "http://l4lb" + path}
	if body != "" {
		args = append(args, "-H", "Content-Type: application/json", "--data-binary", body)
	}
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("curl %s %s: %v", method, path, err)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(s[i+1:])
	return code, s[:max(i, 0)]
}

// ctlTestConfig is a config with a control socket and a state directory in
// a fresh temporary directory, one listener and one host a; extra goes into
// the listener's table.
func ctlTestConfig(t *testing.T, a, extra string) (sock, config string) {
	dir := t.TempDir()
	sock = filepath.Join(dir, "control.sock")
	return sock, fmt.Sprintf(`[log]
format = "json"

[control]
socket = %q
state_dir = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
%s

[upstream.u]

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "a" } ]
`, sock, filepath.Join(dir, "state"), extra, a)
}

// TestControlEndToEnd: the real binary with its control socket: curl adds a
// host and takes one down, new connections follow at once; the socket is
// 0600; l4lb ctl reads the status; SIGHUP with a broken file keeps the old
// config; a restart keeps the edits.
func TestControlEndToEnd(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	sock, cfgText := ctlTestConfig(t, a.Addr(), "")
	p := startL4lb(t, cfgText)
	cfgPath := p.Cmd.Args[len(p.Cmd.Args)-1]
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket: %v, mode %v", err, fi.Mode())
	}
	front := p.Addrs["front"]
	tagOf := func() string {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}

	if code, body := curlUnix(t, sock, "POST", "/v1/upstreams/u/pools/p/hosts", fmt.Sprintf(`{"address":%q,"id":"b","weight":1}`, b.Addr())); code != 201 {
		t.Fatalf("add host: %d %s", code, body)
	}
	if code, body := curlUnix(t, sock, "POST", "/v1/upstreams/u/pools/p/hosts/a/down", ""); code != 200 {
		t.Fatalf("down: %d %s", code, body)
	}
	for i := 0; i < 3; i++ {
		if got := tagOf(); got != "b" {
			t.Fatalf("after edits: %q", got)
		}
	}
	if code, body := curlUnix(t, sock, "PATCH", "/v1/upstreams/u/pools/p/hosts/b", `{"weight":-1}`); code != 400 || !strings.Contains(body, "weight") {
		t.Fatalf("bad weight: %d %s", code, body)
	}
	if code, body := curlUnix(t, sock, "GET", "/v1/status", ""); code != 200 || !strings.Contains(body, `"manual_down"`) {
		t.Fatalf("status: %d %s", code, body)
	}
	var out, errb bytes.Buffer
	if code := mainExit([]string{"ctl", "--socket", sock, "status"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "manual_down") {
		t.Fatalf("ctl status: %d\n%s%s", code, out.String(), errb.String())
	}

	// SIGHUP with a broken file: the old config stays.
	os.WriteFile(cfgPath, []byte("[[listener]\n"), 0o644)
	p.Cmd.Process.Signal(syscall.SIGHUP)
	p.WaitLog(t, "reload failed: keeping the running config", 10*time.Second)
	if got := tagOf(); got != "b" {
		t.Fatalf("after a failed reload: %q", got)
	}
	// Through the API too, with the errors in the answer.
	if code, body := curlUnix(t, sock, "POST", "/v1/reload", ""); code != 422 || !strings.Contains(body, "l4lb.toml") {
		t.Fatalf("reload of a broken file: %d %s", code, body)
	}
	os.WriteFile(cfgPath, []byte(cfgText), 0o644)
	if code, body := curlUnix(t, sock, "POST", "/v1/reload", ""); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}

	// Restart: the edits come back.
	p.Cmd.Process.Signal(syscall.SIGTERM)
	if err := p.WaitExit(t, 40*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	p2 := startL4lb(t, cfgText)
	front = p2.Addrs["front"]
	if got := tagOf(); got != "b" {
		t.Fatalf("after restart: %q (edits lost?)", got)
	}
}

// TestControlEveryRoute: real curl against the real binary's socket, every
// resource of SPEC §5 once, each answer checked and its effect seen in the
// next read.
func TestControlEveryRoute(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	sock, cfgText := ctlTestConfig(t, a.Addr(), `drain_timeout = "1s"`)
	startL4lb(t, cfgText)
	type step struct {
		method, path, body string
		code               int
		want               string // a substring of the answer
	}
	steps := []step{
		{"GET", "/v1/upstreams", "", 200, `"name":"u"`},
		{"GET", "/v1/upstreams/u", "", 200, `"id":"a"`},
		{"GET", "/v1/upstreams/nope", "", 404, "error"},
		{"PUT", "/v1/upstreams/other", fmt.Sprintf(`{"pools":[{"name":"x","priority":0,"hosts":[{"address":%q,"weight":2}]}]}`, b.Addr()), 201, `"name":"other"`},
		{"PUT", "/v1/upstreams/other", fmt.Sprintf(`{"pools":[{"name":"x","priority":5,"hosts":[{"address":%q,"weight":3}]}]}`, b.Addr()), 200, `"weight":3`},
		{"DELETE", "/v1/upstreams/other", "", 204, ""},
		{"DELETE", "/v1/upstreams/u", "", 409, "listener"},
		{"POST", "/v1/upstreams/u/pools", `{"name":"dr","priority":10}`, 201, `"name":"dr"`},
		{"POST", "/v1/upstreams/u/pools", `{"name":"dr","priority":10}`, 409, "error"},
		{"PATCH", "/v1/upstreams/u/pools/dr", `{"priority":20}`, 200, `"priority":20`},
		{"POST", "/v1/upstreams/u/pools/dr/hosts", fmt.Sprintf(`{"address":%q,"id":"b","weight":4}`, b.Addr()), 201, `"id":"b"`},
		{"PATCH", "/v1/upstreams/u/pools/dr/hosts/b", `{"weight":5}`, 200, `"weight":5`},
		{"POST", "/v1/upstreams/u/pools/p/hosts/a/down", "", 200, `"manual_down"`},
		{"POST", "/v1/upstreams/u/pools/p/hosts/a/up", "", 200, `"up"`},
		{"POST", "/v1/upstreams/u/pools/p/hosts/a/drain", "", 200, `"draining"`},
		{"GET", "/v1/status", "", 200, `"drain_deadline"`},
		{"GET", "/v1/sessions", "", 200, `"sessions"`},
		{"DELETE", "/v1/upstreams/u/pools/dr/hosts/b", "", 202, ""},
		{"DELETE", "/v1/upstreams/u/pools/dr", "", 200, ""},
		{"GET", "/v1/events?since=0", "", 200, `"host_draining"`},
		{"POST", "/v1/reload", "", 200, "reloaded"},
		{"POST", "/v1/reset", "", 200, "reset"},
		{"GET", "/v1/upstreams/u", "", 200, `"state":"up"`},
	}
	for _, s := range steps {
		if s.path == "/v1/events?since=0" {
			// A stream: curl reads what is there for a moment.
			out, _ := exec.Command("curl", "-s", "-m", "1", "--unix-socket", sock, "http://l4lb"+s.path).Output()
			if !strings.Contains(string(out), s.want) {
				t.Fatalf("events stream lacks %s:\n%s", s.want, out)
			}
			continue
		}
		code, body := curlUnix(t, sock, s.method, s.path, s.body)
		compact := strings.NewReplacer(" ", "", "\n", "").Replace(body)
		if code != s.code || !strings.Contains(compact, s.want) {
			t.Fatalf("%s %s: %d %s; want %d with %q", s.method, s.path, code, body, s.code, s.want)
		}
	}
}

// TestPoolMethodOverride: a pool's method, in the file or set live with
// PATCH, is the one its connections follow, whatever the upstream's says.
// "sticky" is an upstream round_robin whose pool says hash: one client IP
// keeps one host while several spread. "rotating" is an upstream hash whose
// pool says round_robin: one client IP goes round the hosts.
func TestPoolMethodOverride(t *testing.T) {
	var hosts strings.Builder
	for _, name := range []string{"a", "b", "c"} {
		b := testbackend.New(t, testbackend.Tagger(name))
		fmt.Fprintf(&hosts, "{ address = %q, id = %q }, ", b.Addr(), name)
	}
	sock := filepath.Join(t.TempDir(), "control.sock")
	p := startL4lb(t, fmt.Sprintf(`[log]
format = "json"

[control]
socket = %q

[[listener]]
name = "sticky"
listen = "127.0.0.1:0"
upstream = "sticky"

[[listener]]
name = "rotating"
listen = "127.0.0.1:0"
upstream = "rotating"

[upstream.sticky]
method = "round_robin"
[[upstream.sticky.pool]]
name = "p"
method = "hash"
hosts = [ %[2]s ]

[upstream.rotating]
method = "hash"
[[upstream.rotating.pool]]
name = "p"
method = "round_robin"
hosts = [ %[2]s ]
`, sock, hosts.String()))
	tagFrom := func(listener, src string) string {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", p.Addrs[listener])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("%s from %s: %v", listener, src, err)
		}
		return strings.TrimSpace(line)
	}
	counts := func(listener, src string, n int) map[string]int {
		m := map[string]int{}
		for i := 0; i < n; i++ {
			m[tagFrom(listener, src)]++
		}
		return m
	}
	hashed := func(listener string) {
		t.Helper()
		if m := counts(listener, "127.0.0.1", 6); len(m) != 1 {
			t.Errorf("%s: one client IP went to %v, want one host (hash)", listener, m)
		}
		spread := map[string]bool{}
		for i := 1; i <= 20; i++ {
			spread[tagFrom(listener, fmt.Sprintf("127.0.0.%d", i))] = true
		}
		if len(spread) < 2 {
			t.Errorf("%s: 20 client IPs all on %v", listener, spread)
		}
	}

	hashed("sticky")
	if m := counts("rotating", "127.0.0.1", 6); m["a"] != 2 || m["b"] != 2 || m["c"] != 2 {
		t.Errorf("rotating: one client IP went to %v, want each host twice (round robin)", m)
	}
	// Live: the rotating pool's method set to hash.
	if code, body := curlUnix(t, sock, "PATCH", "/v1/upstreams/rotating/pools/p", `{"method":"hash"}`); code != 200 {
		t.Fatalf("PATCH method: %d %s", code, body)
	}
	hashed("rotating")
}
