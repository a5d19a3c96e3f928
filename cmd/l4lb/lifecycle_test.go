package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/sdnotify"
	"github.com/l4lb/l4lb/internal/testbackend"
	"golang.org/x/sys/unix"
)

// notifyMsg is one sd_notify datagram and the pid that sent it.
type notifyMsg struct {
	pid int
	msg string
}

// notifySocket is a NOTIFY_SOCKET: a unixgram socket in t.TempDir() that
// learns each sender's pid with SO_PASSCRED, as systemd does.
func notifySocket(t *testing.T) (string, <-chan notifyMsg) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := c.SyscallConn()
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan notifyMsg, 10000)
	go readNotify(c, ch)
	t.Cleanup(func() { c.Close() })
	return path, ch
}

func readNotify(c *net.UnixConn, ch chan<- notifyMsg) {
	defer close(ch)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		m := notifyMsg{msg: string(buf[:n])}
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cms) > 0 {
			if cred, err := unix.ParseUnixCredentials(&cms[0]); err == nil {
				m.pid = int(cred.Pid)
			}
		}
		ch <- m
	}
}

// nextNotify returns the next message that is not a watchdog ping, and
// counts the pings on the way.
func nextNotify(t *testing.T, ch <-chan notifyMsg, pings *int, within time.Duration) notifyMsg {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("notify socket closed")
			}
			if m.msg == "WATCHDOG=1" {
				*pings++
				continue
			}
			return m
		case <-deadline:
			t.Fatalf("no sd_notify message within %v", within)
		}
	}
}

// proc is an l4lb and every process it upgrades to: one process group, one
// stderr pipe they all write to.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  []string
	logc chan map[string]any
}

// startProc runs `exe run -c cfg` with env added, in its own process group.
func startProc(t *testing.T, exe, cfg string, env ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(exe, "run", "-c", cfg), env...)
}

// startCmd is startProc for any command (with ExtraFiles, say).
func startCmd(t *testing.T, cmd *exec.Cmd, env ...string) *proc {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logc: make(chan map[string]any, 10000)}
	// A race-enabled binary sleeps 1s at exit unless told not to; the
	// old process's lifetime is measured here.
	p.cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	// An *os.File: exec copies nothing, and Wait returns when this process
	// exits even while its successors hold the pipe.
	p.cmd.Stderr = w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go p.readLog(r)
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) // every generation
		p.cmd.Wait()
		if t.Failed() {
			p.mu.Lock()
			t.Logf("l4lb log:\n%s", strings.Join(p.log, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

func (p *proc) readLog(r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		p.mu.Lock()
		p.log = append(p.log, sc.Text())
		p.mu.Unlock()
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			select {
			case p.logc <- line:
			default:
			}
		}
	}
	close(p.logc)
}

// waitLog waits for a line with message msg and returns it.
func (p *proc) waitLog(t *testing.T, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case line, ok := <-p.logc:
			if !ok {
				t.Fatalf("log ended before %q", msg)
			}
			if line["message"] == msg {
				return line
			}
		case <-deadline:
			t.Fatalf("no %q log line within %v", msg, within)
		}
	}
}

// reloadOverSocket is POST /v1/reload on the control socket.
func reloadOverSocket(t *testing.T, sock string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Post("http://l4lb/v1/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/reload: %s", resp.Status)
	}
}

func lifecycleConfig(dir, backend, drain string) string {
	return fmt.Sprintf(`[log]
format = "json"

[control]
socket = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
drain_timeout = %q

[upstream.u]
[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q } ]
`, filepath.Join(dir, "control.sock"), drain, backend)
}

// TestSdNotify runs the binary under a fake systemd: READY=1 once serving,
// RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a SIGHUP reload and
// a POST /v1/reload, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on
// SIGTERM, and nothing after it.
func TestSdNotify(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "l4lb.toml")
	if err := os.WriteFile(cfg, []byte(lifecycleConfig(dir, echo.Addr(), "1s")), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, ch := notifySocket(t)
	p := startProc(t, binPath, cfg, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=100000")
	pid := p.cmd.Process.Pid
	pings := 0
	expect := func(want string) notifyMsg {
		t.Helper()
		m := nextNotify(t, ch, &pings, 20*time.Second)
		if m.pid != pid {
			t.Errorf("%q from pid %d, want %d", m.msg, m.pid, pid)
		}
		if want != "" && m.msg != want {
			t.Fatalf("sd_notify: got %q, want %q", m.msg, want)
		}
		return m
	}
	expectReload := func(trigger func()) {
		t.Helper()
		before := sdnotify.Monotonic()
		trigger()
		m := expect("")
		lines := strings.Split(m.msg, "\n")
		if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
			t.Fatalf("sd_notify: got %q, want RELOADING=1 and MONOTONIC_USEC", m.msg)
		}
		usec, _ := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
		if usec < before.Microseconds() || usec > sdnotify.Monotonic().Microseconds() {
			t.Errorf("MONOTONIC_USEC=%d is not the monotonic time of the reload (after %d)", usec, before.Microseconds())
		}
		expect("READY=1")
	}

	expect("READY=1")
	if _, err := os.Stat(filepath.Join(dir, "control.sock")); err != nil {
		t.Fatalf("READY=1 before the control socket: %v", err)
	}
	expectReload(func() { p.cmd.Process.Signal(syscall.SIGHUP) })
	expectReload(func() { reloadOverSocket(t, filepath.Join(dir, "control.sock")) })

	// Pings at 50ms: wait for a few, counting those already seen.
	for deadline := time.Now().Add(10 * time.Second); pings < 3; {
		select {
		case m := <-ch:
			if m.msg != "WATCHDOG=1" {
				t.Fatalf("unexpected %q", m.msg)
			}
			pings++
		case <-time.After(time.Until(deadline)):
			t.Fatalf("%d WATCHDOG=1 in 10s at WATCHDOG_USEC=100000", pings)
		}
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	expect("STOPPING=1")
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	// Everything it sent is queued by now: nothing after STOPPING=1.
	for {
		select {
		case m := <-ch:
			t.Errorf("after STOPPING=1: %q", m.msg)
		default:
			t.Logf("%d watchdog pings", pings)
			return
		}
	}
}

// TestSigtermAlwaysCleanStop: SIGTERM to an idle l4lb is a clean stop
// every time: STOPPING=1 and exit 0. The signal ends the listeners too, so
// their return raced the signal in the main loop and was once taken for a
// crash (exit 1, no STOPPING=1).
func TestSigtermAlwaysCleanStop(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	for i := range 15 {
		dir := t.TempDir()
		cfg := filepath.Join(dir, "l4lb.toml")
		if err := os.WriteFile(cfg, []byte(lifecycleConfig(dir, echo.Addr(), "1s")), 0o644); err != nil {
			t.Fatal(err)
		}
		sock, ch := notifySocket(t)
		p := startProc(t, binPath, cfg, "NOTIFY_SOCKET="+sock, fmt.Sprintf("GOMAXPROCS=%d", 1+i%2))
		pings := 0
		if m := nextNotify(t, ch, &pings, 20*time.Second); m.msg != "READY=1" {
			t.Fatalf("run %d: got %q, want READY=1", i, m.msg)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if m := nextNotify(t, ch, &pings, 20*time.Second); m.msg != "STOPPING=1" {
			t.Fatalf("run %d: got %q, want STOPPING=1", i, m.msg)
		}
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("run %d: exit: %v", i, err)
		}
	}
}

// TestSystemdAnalyzeVerify checks the unit files with systemd's own linter.
func TestSystemdAnalyzeVerify(t *testing.T) {
	bin := testbackend.Tool(t, "systemd-analyze")
	unit, err := filepath.Abs("../../dist/systemd/l4lb.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify wants ExecStart's binary to exist: check a copy of the unit
	// whose ExecStart names the binary under test, the one change.
	text, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	const exe = "/usr/local/bin/l4lb"
	if !strings.Contains(string(text), "ExecStart="+exe+" ") {
		t.Fatalf("%s: ExecStart does not run %s", unit, exe)
	}
	dir := t.TempDir()
	copy := filepath.Join(dir, "l4lb.service")
	if err := os.WriteFile(copy, []byte(strings.ReplaceAll(string(text), "ExecStart="+exe, "ExecStart="+binPath)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The example socket unit, beside the service it activates.
	sock := filepath.Join(dir, "l4lb.socket")
	if text, err = os.ReadFile("../../dist/systemd/l4lb.socket"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, text, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "verify", "--man=no", copy, sock).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "Failed to initialize manager") || strings.Contains(string(out), "Cannot determine cgroup") {
			t.Skipf("systemd-analyze cannot run here: %s", out)
		}
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Fatalf("systemd-analyze verify complained:\n%s", s)
	}
}

// TestUnitWritablePaths: under the unit's ProtectSystem=strict only the
// directories systemd makes for the service are writable. Every path the
// example config and the docs suggest l4lb writes (control socket, state
// dir, access log) must sit in one of them, or l4lb fails at start.
func TestUnitWritablePaths(t *testing.T) {
	unit, err := os.ReadFile("../../dist/systemd/l4lb.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nProtectSystem=strict\n") {
		t.Fatal("the unit no longer says ProtectSystem=strict: revisit this test")
	}
	// systemd.exec(5): each *Directory= names a directory under its root.
	roots := map[string]string{"RuntimeDirectory": "/run", "StateDirectory": "/var/lib",
		"LogsDirectory": "/var/log", "CacheDirectory": "/var/cache"}
	var writable []string
	for _, line := range strings.Split(string(unit), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		if root, ok := roots[k]; ok {
			for _, d := range strings.Fields(v) {
				writable = append(writable, root+"/"+d)
			}
		}
		if k == "ReadWritePaths" {
			writable = append(writable, strings.Fields(v)...)
		}
	}
	example, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	metricsDoc, err := os.ReadFile("../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	value := func(text []byte, key string) string {
		m := regexp.MustCompile(`(?m)^[# ]*` + key + ` = "([^"]+)"`).FindSubmatch(text)
		if m == nil {
			t.Fatalf("no %s = \"...\" in the example", key)
		}
		return string(m[1])
	}
	for _, p := range []struct{ what, path string }{
		{"[control] socket (config.example.toml)", value(example, "socket")},
		{"[control] state_dir (config.example.toml)", value(example, "state_dir") + "/edits.json"},
		{"[log] access (config.example.toml)", value(example, "access")},
		{"[log] access (docs/METRICS.md)", value(metricsDoc, "access")},
	} {
		if !slices.ContainsFunc(writable, func(d string) bool { return strings.HasPrefix(p.path, d+"/") }) {
			t.Errorf("%s = %s: not under any writable directory of the unit %v", p.what, p.path, writable)
		}
	}
}

// TestSocketActivation passes listening sockets as systemd does for a
// socket unit: fds 3 and on, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set
// by a shell that then execs l4lb, so the pid is l4lb's). "front" (its
// listen says port 0) takes the socket named "front"; "byaddr" the one bound
// at its listen address; "dns" (udp) its named datagram socket; the fourth,
// matching no listener, is reported. Connections are served on the
// passed sockets, and an upgrade hands them on.
func TestSocketActivation(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	udpEcho, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpEcho.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := udpEcho.ReadFrom(buf)
			if err != nil {
				return
			}
			udpEcho.WriteTo(buf[:n], from)
		}
	}()
	var files []*os.File
	var addrs []string
	for _, network := range []string{"tcp", "tcp", "udp", "tcp"} {
		var f *os.File
		var addr string
		if network == "udp" {
			c, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = c.LocalAddr().String()
			f, err = c.(*net.UDPConn).File()
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
		} else {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr = ln.Addr().String()
			f, err = ln.(*net.TCPListener).File()
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		defer f.Close()
		files, addrs = append(files, f), append(addrs, addr)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "l4lb.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[log]
format = "json"

[control]
socket = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"

[[listener]]
name = "byaddr"
listen = %q
upstream = "u"

[[listener]]
name = "dns"
listen = "127.0.0.1:0"
protocol = "udp"
upstream = "d"

[upstream.u]
[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q } ]

[upstream.d]
[[upstream.d.pool]]
name = "p"
hosts = [ { address = %q } ]
`, filepath.Join(dir, "control.sock"), addrs[1], echo.Addr(), udpEcho.LocalAddr().String())), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, binPath, "run", "-c", cfg)
	cmd.ExtraFiles = files // fds 3, 4, 5, 6
	p := startCmd(t, cmd, "LISTEN_FDS=4", "LISTEN_FDNAMES=front:l4lb.socket:dns:spare")

	listening := map[string]string{}
	for len(listening) < 3 {
		line := p.waitLog(t, "listening", 10*time.Second)
		if line["inherited"] != true {
			t.Errorf("listener %v bound its own socket: %v", line["listener"], line)
		}
		listening[fmt.Sprint(line["listener"])] = fmt.Sprint(line["address"])
	}
	for name, want := range map[string]string{"front": addrs[0], "byaddr": addrs[1], "dns": addrs[2]} {
		if listening[name] != want {
			t.Errorf("listener %s on %s, want the passed socket at %s", name, listening[name], want)
		}
	}
	spare := p.waitLog(t, "socket from systemd not used by any listener", 10*time.Second)
	if spare["name"] != "spare" || spare["fd"] != 6.0 || spare["address"] != "tcp "+addrs[3] {
		t.Errorf("spare socket line: %v", spare)
	}
	p.waitLog(t, "l4lb ready", 10*time.Second)

	check := func(when string) {
		t.Helper()
		for _, a := range addrs[:2] {
			if err := echoThrough(a, "hello "+a); err != nil {
				t.Errorf("%s: tcp through the passed socket %s: %v", when, a, err)
			}
		}
		c, err := net.Dial("udp", addrs[2])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
			t.Errorf("%s: udp through the passed socket: %q, %v", when, buf[:n], err)
		}
	}
	// The test's own copies closed, l4lb's are the only ones (as systemd's
	// would be): connections are served by them.
	for _, f := range files {
		f.Close()
	}
	check("started")

	// An upgrade hands the passed sockets on like any other; the new
	// process does not take LISTEN_FDS as its own (they were unset).
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGUSR2)
	p.waitLog(t, "upgrade: handed over; no new connections; draining", 30*time.Second)
	check("upgraded")
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := strings.Count(strings.Join(p.log, "\n"), "socket from systemd"); n != 1 {
		t.Errorf("%d lines about sockets from systemd, want 1 (the new process has none)", n)
	}
}

// echoThrough sends msg through addr to an echo backend and checks the answer.
func echoThrough(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err == nil && string(got) != msg {
		err = fmt.Errorf("got %q back", got)
	}
	return err
}

// upgradeLoad is the client side of TestUpgradeUnderLoad.
type upgradeLoad struct {
	addr       string
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func (l *upgradeLoad) fail(format string, args ...any) {
	l.failed.Add(1)
	l.mu.Lock()
	l.errs = append(l.errs, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// short opens one connection, sends a line, expects it back, closes.
func (l *upgradeLoad) short(i int) {
	c, err := net.DialTimeout("tcp", l.addr, 5*time.Second)
	if err != nil {
		l.fail("conn %d: dial: %v", i, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Sprintf("hello %d\n", i)
	if _, err := io.WriteString(c, msg); err != nil {
		l.fail("conn %d: write: %v", i, err)
		return
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		l.fail("conn %d: read %q: %v", i, got, err)
		return
	}
	l.ok.Add(1)
}

// stream sends 1 KiB every 10ms until stop, checking each echo, then
// closes its side and expects a clean EOF.
func (l *upgradeLoad) stream(i int, stop <-chan struct{}, bytes *atomic.Int64) {
	c, err := net.DialTimeout("tcp", l.addr, 5*time.Second)
	if err != nil {
		l.fail("stream %d: dial: %v", i, err)
		return
	}
	defer c.Close()
	buf, got := make([]byte, 1024), make([]byte, 1024)
	for n := 0; ; n++ {
		select {
		case <-stop:
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if k, err := c.Read(got); k != 0 || err != io.EOF {
				l.fail("stream %d: end: %d bytes, %v; want EOF", i, k, err)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
		for j := range buf {
			buf[j] = byte(i + n + j)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(buf); err != nil {
			l.fail("stream %d: write after %d chunks: %v", i, n, err)
			return
		}
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(buf) {
			l.fail("stream %d: chunk %d: %v (echo differs: %v)", i, n, err, string(got) != string(buf))
			return
		}
		bytes.Add(int64(len(buf)))
	}
}

// pidExit is closed when pid exits, which need not be our child: pidfd.
func pidExit(t *testing.T, pid int) <-chan time.Time {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	ch := make(chan time.Time, 1)
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		ch <- time.Now()
	}()
	return ch
}

// TestUpgradeUnderLoad: 200 new connections a second and 100 long-lived
// streams while the binary is upgraded 10 times (SIGUSR2): no new
// connection is refused or reset, every stream ends intact, each old
// process exits once its connections are done, and a new binary that
// cannot start (a broken config; a binary that exits at once) leaves the
// old one serving.
func TestUpgradeUnderLoad(t *testing.T) {
	const upgrades, streams = 10, 100
	echo := testbackend.New(t, testbackend.Echo)
	dir := t.TempDir()
	exe := filepath.Join(dir, "l4lb")
	copyFile(t, binPath, exe)
	cfg := filepath.Join(dir, "l4lb.toml")
	good := lifecycleConfig(dir, echo.Addr(), "20s")
	if err := os.WriteFile(cfg, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, ch := notifySocket(t)
	p := startProc(t, exe, cfg, "NOTIFY_SOCKET="+sock)
	addr := fmt.Sprint(p.waitLog(t, "listening", 20*time.Second)["address"])
	pings := 0
	main := p.cmd.Process.Pid
	if m := nextNotify(t, ch, &pings, 20*time.Second); m.msg != "READY=1" || m.pid != main {
		t.Fatalf("first message %q from %d, want READY=1 from %d", m.msg, m.pid, main)
	}

	load := &upgradeLoad{addr: addr}
	stop, stopStreams := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	var streamBytes atomic.Int64
	for i := range streams {
		wg.Add(1)
		go func() { defer wg.Done(); load.stream(i, stopStreams, &streamBytes) }()
	}
	wg.Add(1)
	go func() { // 200 new connections a second
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var cw sync.WaitGroup
		defer cw.Wait()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			cw.Add(1)
			go func() { defer cw.Done(); load.short(i) }()
		}
	}()
	stopLoad := sync.OnceFunc(func() { close(stop); close(stopStreams); wg.Wait() })
	defer stopLoad()

	// waitServed waits until n more short connections have succeeded.
	waitServed := func(n int64) {
		t.Helper()
		target := load.ok.Load() + n
		for deadline := time.Now().Add(20 * time.Second); load.ok.Load() < target; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("load stalled at %d connections", load.ok.Load())
			}
		}
	}
	// upgrade sends SIGUSR2 to the main process and returns the message that
	// ends it: MAINPID=new + READY=1 from the new one, or MAINPID=old +
	// READY=1 from the old one when the new one failed.
	upgrade := func() notifyMsg {
		t.Helper()
		syscall.Kill(main, syscall.SIGUSR2)
		if m := nextNotify(t, ch, &pings, 20*time.Second); !strings.HasPrefix(m.msg, "RELOADING=1\n") || m.pid != main {
			t.Fatalf("upgrade: first %q from %d, want RELOADING=1 from %d", m.msg, m.pid, main)
		}
		return nextNotify(t, ch, &pings, 40*time.Second)
	}

	waitServed(50)
	type gen struct {
		pid      int
		handover time.Time
		exit     <-chan time.Time
		errs     int64
	}
	var gens []gen
	for i := range upgrades {
		before := load.failed.Load()
		m := upgrade()
		if m.pid == main || m.msg != fmt.Sprintf("MAINPID=%d\nREADY=1", m.pid) {
			t.Fatalf("upgrade %d: %q from %d (main %d)", i+1, m.msg, m.pid, main)
		}
		gens = append(gens, gen{pid: main, handover: time.Now(), exit: pidExit(t, main)})
		main = m.pid
		waitServed(20) // the new process serves before the next upgrade
		gens[len(gens)-1].errs = load.failed.Load() - before
	}

	// A broken config: the new process exits; the old one serves on.
	if err := os.WriteFile(cfg, []byte("[[listener]]\nname = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if m := upgrade(); m.pid != main || m.msg != fmt.Sprintf("MAINPID=%d\nREADY=1", main) {
		t.Fatalf("upgrade with a broken config: %q from %d, want the old %d to take MAINPID back", m.msg, m.pid, main)
	}
	p.waitLog(t, "upgrade failed; still serving", 10*time.Second)
	waitServed(20)
	if err := os.WriteFile(cfg, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	// A binary that exits at once, installed the way a package manager
	// does (a new file renamed over the old).
	tmp := exe + ".new"
	if err := os.WriteFile(tmp, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	if m := upgrade(); m.pid != main || m.msg != fmt.Sprintf("MAINPID=%d\nREADY=1", main) {
		t.Fatalf("upgrade to a crashing binary: %q from %d, want the old %d to take MAINPID back", m.msg, m.pid, main)
	}
	if line := p.waitLog(t, "upgrade failed; still serving", 10*time.Second); line["exit"] != "exit status 3" {
		t.Errorf("failed upgrade logged exit %v, want exit status 3", line["exit"])
	}
	waitServed(20)
	// The good binary again: upgrades work after failures.
	copyFile(t, binPath, tmp)
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	if m := upgrade(); m.pid == main {
		t.Fatalf("upgrade after the failures: %q from the old process", m.msg)
	} else {
		gens = append(gens, gen{pid: main, handover: time.Now(), exit: pidExit(t, main)})
		main = m.pid
	}
	waitServed(20)

	// Every old process but the first has only short connections: it exits
	// at once. The first holds the streams until they end.
	lifetimes := make([]time.Duration, len(gens))
	for i, g := range gens[1:] {
		select {
		case at := <-g.exit:
			lifetimes[i+1] = at.Sub(g.handover)
		case <-time.After(10 * time.Second):
			t.Fatalf("old process %d (generation %d) still running 10s after the handover", g.pid, i+1)
		}
	}
	select {
	case <-gens[0].exit:
		t.Fatal("the first process exited before its streams ended")
	default:
	}
	streamsEnd := time.Now()
	stopLoad()
	select {
	case at := <-gens[0].exit:
		lifetimes[0] = at.Sub(gens[0].handover)
		t.Logf("first process exited %v after its streams ended", at.Sub(streamsEnd).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("first process still running 10s after its streams ended")
	}

	var perUpgrade []int64
	for _, g := range gens {
		perUpgrade = append(perUpgrade, g.errs)
	}
	rounded := make([]time.Duration, len(lifetimes))
	for i, d := range lifetimes {
		rounded[i] = d.Round(time.Millisecond)
	}
	t.Logf("%d upgrades + 2 failed ones; connections: %d ok, %d failed; errors per upgrade %v; stream bytes echoed %d",
		len(gens), load.ok.Load(), load.failed.Load(), perUpgrade, streamBytes.Load())
	t.Logf("old-process lifetime after handover: %v (the first held %d streams)", rounded, streams)
	if n := load.failed.Load(); n > 0 {
		load.mu.Lock()
		t.Errorf("%d client errors, first: %v", n, load.errs[:min(len(load.errs), 10)])
		load.mu.Unlock()
	}
	if slices.Max(perUpgrade) > 0 {
		t.Errorf("errors during upgrades: %v", perUpgrade)
	}

	syscall.Kill(main, syscall.SIGTERM)
	if m := nextNotify(t, ch, &pings, 20*time.Second); m.msg != "STOPPING=1" || m.pid != main {
		t.Fatalf("at SIGTERM: %q from %d", m.msg, m.pid)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestMakeInstall runs `make install` into a staging DESTDIR and checks the
// layout docs/OPERATING.md promises, twice: the second run must keep an
// edited l4lb.toml.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; not in -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	install := func() {
		t.Helper()
		out, err := exec.Command("make", "-s", "-C", "../..", "install", "DESTDIR="+dest).CombinedOutput()
		if err != nil {
			t.Fatalf("make install: %v\n%s", err, out)
		}
	}
	install()
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"/usr/local/bin/l4lb", 0o755},
		{"/usr/local/lib/systemd/system/l4lb.service", 0o644},
		{"/usr/local/lib/systemd/system/l4lb.socket", 0o644},
		{"/etc/l4lb/l4lb.toml", 0o644},
		{"/etc/l4lb/l4lb.toml.example", 0o644},
		{"/usr/local/share/doc/l4lb/OPERATING.md", 0o644},
		{"/usr/local/share/doc/l4lb/CONTROL.md", 0o644},
		{"/usr/local/share/doc/l4lb/README.md", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(dest, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
		} else if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
	}
	checkInstalledDocs(t, filepath.Join(dest, "/usr/local/share/doc/l4lb"))
	out, err := exec.Command(filepath.Join(dest, "/usr/local/bin/l4lb"), "check", "-c", filepath.Join(dest, "/etc/l4lb/l4lb.toml")).CombinedOutput()
	if err != nil {
		t.Errorf("installed binary on the installed config: %v\n%s", err, out)
	}
	conf := filepath.Join(dest, "/etc/l4lb/l4lb.toml")
	if err := os.WriteFile(conf, []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	install()
	if b, _ := os.ReadFile(conf); string(b) != "# mine\n" {
		t.Errorf("a second make install overwrote l4lb.toml")
	}
}

// checkInstalledDocs: every docs/*.md of the tree, and every document
// README.md links to, is in docdir; and every relative link of an installed
// document resolves there (README's docs/ links are rewritten).
func checkInstalledDocs(t *testing.T, docdir string) {
	t.Helper()
	want, err := filepath.Glob("../../docs/*.md")
	if err != nil || len(want) == 0 {
		t.Fatalf("no docs/*.md: %v", err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	link := regexp.MustCompile(`\]\(([^)#:]+)(#[^)]*)?\)`)
	for _, m := range link.FindAllStringSubmatch(string(readme), -1) {
		if strings.HasSuffix(m[1], ".md") {
			want = append(want, m[1])
		}
	}
	for _, f := range want {
		if fi, err := os.Stat(filepath.Join(docdir, filepath.Base(f))); err != nil {
			t.Errorf("%s is not installed: %v", f, err)
		} else if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", f, fi.Mode().Perm())
		}
	}
	installed, _ := filepath.Glob(filepath.Join(docdir, "*.md"))
	for _, f := range installed {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(text), -1) {
			if _, err := os.Stat(filepath.Join(docdir, m[1])); err != nil {
				t.Errorf("installed %s links to %s, which is not there", filepath.Base(f), m[1])
			}
		}
	}
}

// Console lines written anywhere but a terminal (journald, a file, a pipe)
// carry no colour escapes; a terminal gets them.
func TestConsoleLogColourOnlyOnATerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var buf bytes.Buffer
	for _, w := range []io.Writer{&buf, f} {
		lg := newLogger(config.Log{Level: "info"}, w)
		lg.Info().Str("host", "r1").Msg("host up")
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"buffer": buf.String(), "file": string(b)} {
		if !strings.Contains(out, "host up") || !strings.Contains(out, "host=r1") {
			t.Errorf("%s: %q is not a console line", name, out)
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("%s: colour escapes in %q", name, out)
		}
	}
	if isTerminal(&buf) || isTerminal(f) {
		t.Error("a buffer or a file taken for a terminal")
	}
}
