package reliability

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/l4lbtest"
	"github.com/l4lb/l4lb/internal/testbackend"
	"go.uber.org/goleak"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "l4lb-rel")
	if err != nil {
		panic(err)
	}
	// Without -race: these tests measure the binary's CPU and memory.
	if bin, err = l4lbtest.Build(dir, false); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// splice's engine loops live as long as the process.
		if err := goleak.Find(goleak.IgnoreAnyFunction(testbackend.EngineGoroutine)); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The suite's knobs. Each long test has its own length, documented on the
// test; a knob picks a mode or sets one test's length, never a length that
// other tests then borrow.
//
//	L4LB_LONG=1    long mode (make reliability): each test runs its long variant
//	L4LB_SOAK=30m  TestSoak's length (15 s without it)
//	L4LB_SCALE=N   runs TestScale with N connections (skipped without it)
//	L4LB_SEED=S    replays one TestRandomized sequence
func longMode() bool {
	v := os.Getenv("L4LB_LONG")
	return v != "" && v != "0"
}

// soakDuration is TestSoak's length: L4LB_SOAK, else 15 s. A value that is
// not a positive duration is an error, not a silent default.
func soakDuration() (time.Duration, error) {
	v := os.Getenv("L4LB_SOAK")
	if v == "" {
		return 15 * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("L4LB_SOAK=%q: want a positive duration such as 30m", v)
	}
	return d, nil
}

func oneListener(backend string) string {
	return fmt.Sprintf(`[log]
format = "json"

[control]
socket = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "5s"
drain_timeout = "1s"

[upstream.u]
max_fails = 0

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q } ]
`, filepath.Join(os.TempDir(), fmt.Sprintf("l4lb-rel-%d-%d.sock", os.Getpid(), sockSeq.Add(1))), backend)
}

var sockSeq atomic.Int64

// freeAddr returns a loopback address that was free a moment ago (for
// l4lb's metrics listener, whose bound address the tests cannot read back).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// withMetrics adds a [metrics] table listening on addr to a config.
func withMetrics(config, addr string) string {
	return fmt.Sprintf("[metrics]\nlisten = %q\n\n", addr) + config
}

// metric reads one unlabelled sample from l4lb's metrics endpoint.
func metric(addr, name string) (float64, error) {
	// No keep-alive: an idle scrape connection would hold a goroutine in
	// l4lb and skew the count it is used for.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	r, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer r.Body.Close()
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s/metrics", name, addr)
}

// goroutines returns l4lb's own goroutine count (go_goroutines from its
// metrics endpoint) and says where it came from; when the endpoint does not
// answer it falls back to the OS threads in /proc/PID/status, and says so.
func goroutines(pid int, metricsAddr string) (int, string) {
	if v, err := metric(metricsAddr, "go_goroutines"); err == nil {
		return int(v), "goroutines (go_goroutines)"
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n, "OS threads (/proc status; metrics did not answer)"
		}
	}
	return -1, "nothing (metrics and /proc both failed)"
}

// counters reads a listener's counters through the control API.
func counters(t *testing.T, p *l4lbtest.Proc) map[string]int64 {
	t.Helper()
	return status(t, p).Listeners[0].Counters
}

func status(t *testing.T, p *l4lbtest.Proc) control.Status {
	t.Helper()
	// Closed after each call: an idle keep-alive connection would hold a
	// goroutine and an fd in l4lb, and the leak checks count those.
	c := control.NewClient(p.Socket())
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// echoed reports whether c echoes msg back within d.
func echoed(c net.Conn, msg string, d time.Duration) bool {
	c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return false
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == msg
}

// TestFDExhaustion: l4lb under a low fd limit. While it is out of fds it
// does not spin (CPU measured), logs at most about once a second and
// counts; once fds free up, clients waiting in the backlog are served
// within a second.
func TestFDExhaustion(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	echo := testbackend.New(t, testbackend.Echo)
	const limit = 128
	p := l4lbtest.Start(t, bin, oneListener(echo.Addr()), prlimit, "--nofile="+strconv.Itoa(limit)+":"+strconv.Itoa(limit))
	addr := p.Addrs["front"]

	// Fill l4lb's fds: each served connection holds 2 (client, backend).
	var served []net.Conn
	defer func() {
		for _, c := range served {
			c.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if !echoed(c, "x", 500*time.Millisecond) {
			c.Close()
			break
		}
		served = append(served, c)
	}
	// These wait in the listen backlog: l4lb cannot accept them.
	var waiting []net.Conn
	for i := 0; i < 10; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("w"))
		waiting = append(waiting, c)
	}
	p.Drain()
	cpu0, _ := l4lbtest.CPUTime(p.Pid())
	const window = 2 * time.Second
	time.Sleep(window) // measuring an idle-while-exhausted process over a fixed window
	cpu1, _ := l4lbtest.CPUTime(p.Pid())
	logLines := 0
	for _, l := range p.Drain() {
		if msg, _ := l["message"].(string); l["level"] == "error" && strings.HasPrefix(msg, "accept") {
			logLines++
		}
	}
	// Still exhausted: none of the waiting clients has had its byte echoed
	// (a read that times out consumes nothing; the deadline is reset below).
	unserved := 0
	for _, c := range waiting {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var ne net.Error
		if n, err := c.Read(make([]byte, 1)); n == 0 && errors.As(err, &ne) && ne.Timeout() {
			unserved++
		}
	}
	cpuShare := float64(cpu1-cpu0) / float64(window)
	t.Logf("fd limit %d: %d connections served before exhaustion; while exhausted: CPU %.1f%% of a core, %d accept-error log lines in %v, %d of %d backlogged clients unserved",
		limit, len(served), 100*cpuShare, logLines, window, unserved, len(waiting))
	if unserved != len(waiting) {
		t.Errorf("%d of %d clients were served while l4lb was out of fds: the limit did not bite, so the test proves nothing", len(waiting)-unserved, len(waiting))
	}

	if len(served) < limit/4 {
		t.Errorf("only %d connections served under a limit of %d", len(served), limit)
	}
	if cpuShare > 0.10 {
		t.Errorf("l4lb used %.0f%% of a core while out of fds: spinning", 100*cpuShare)
	}
	if logLines > 3 {
		t.Errorf("%d accept-error log lines in %v: not rate-limited", logLines, window)
	}

	// Free fds: the waiting clients are served, promptly.
	freed := time.Now()
	for _, c := range served[:20] {
		c.Close()
	}
	served = served[20:]
	buf := make([]byte, 1)
	for i, c := range waiting {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'w' {
			t.Fatalf("waiting client %d not served after fds freed: %v", i, err)
		}
	}
	recovery := time.Since(freed)
	t.Logf("recovery: 10 clients from the backlog served %v after fds were freed", recovery.Round(time.Millisecond))
	if recovery > time.Second {
		t.Errorf("recovery took %v, want < 1s", recovery)
	}
	// The control socket works again too, and the errors were counted.
	if n := counters(t, p)["accept_errors"]; n == 0 {
		t.Errorf("accept errors not counted")
	} else {
		t.Logf("accept_errors counted: %d", n)
	}
}

// countingSource offers data on each connection and counts the bytes the
// kernel has taken from it, all connections together: what flow control let
// the backend write.
type countingSource struct {
	data    []byte
	written atomic.Int64
}

func (s *countingSource) serve(c *net.TCPConn) {
	for off := 0; off < len(s.data); {
		n, err := c.Write(s.data[off:min(off+64<<10, len(s.data))])
		s.written.Add(int64(n))
		off += n
		if err != nil {
			return
		}
	}
}

// TestSlowReader: backends each offer 64 MiB to clients that read slowly.
// l4lb's memory stays bounded whatever the backlog (TCP flow control and
// the splice pipe hold it; l4lb buffers nothing of its own): RSS growth per
// connection, from a baseline taken before any client connects, is under
// 1 MiB; every byte read is the source's; the backends are throttled.
//
// Long mode (make reliability): 64 clients reading 16 KiB/s each (4 KiB
// every 250 ms), 1 MiB each: 64 MiB through slow readers in 64 s. One
// reader at 16 KiB/s would need 68 min for 64 MiB; L4LB_SLOW_CONNS=1 runs
// exactly that (64 MiB split over L4LB_SLOW_CONNS readers). CI: 10 clients
// at 1.6 MiB/s (16 KiB every 10 ms), 4 MiB each, about 2.5 s.
func TestSlowReader(t *testing.T) {
	const offered = 64 << 20
	conns, perConn, chunk, every := 10, 4<<20, 16<<10, 10*time.Millisecond
	if longMode() {
		conns = 64
		if v := os.Getenv("L4LB_SLOW_CONNS"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 1000 {
				t.Fatalf("L4LB_SLOW_CONNS=%q: want 1..1000", v)
			}
			conns = n
		}
		perConn, chunk, every = offered/conns, 4<<10, 250*time.Millisecond
	}
	perConn -= perConn % chunk
	src := &countingSource{data: make([]byte, offered)}
	mrand.NewChaCha8([32]byte{28}).Read(src.data)
	be := testbackend.New(t, src.serve)
	p := l4lbtest.Start(t, bin, oneListener(be.Addr()))
	rss0, err := l4lbtest.RSS(p.Pid()) // before any client
	if err != nil {
		t.Fatal(err)
	}

	var cs []net.Conn
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", p.Addrs["front"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	start := time.Now()
	tick := time.NewTicker(every)
	defer tick.Stop()
	buf := make([]byte, chunk)
	peak := rss0
	for off := 0; off < perConn; off += chunk {
		<-tick.C // the slow reader's pace
		for i, c := range cs {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("reader %d at %d bytes: %v", i, off, err)
			}
			if !bytes.Equal(buf, src.data[off:off+chunk]) {
				t.Fatalf("reader %d: bytes %d..%d differ from the source's", i, off, off+chunk)
			}
		}
		if rss, err := l4lbtest.RSS(p.Pid()); err == nil {
			peak = max(peak, rss)
		}
	}
	dur := time.Since(start)
	read := int64(conns) * int64(perConn)
	inFlight := src.written.Load() - read
	growth := float64(peak-rss0) / float64(conns) / 1024
	t.Logf("%d slow readers at %.0f KiB/s each read %d MiB in all (%d MiB each) in %v, each offered %d MiB: l4lb RSS %d KiB before connecting, peak %d KiB, %+.1f KiB per connection; backends wrote %d MiB, %.1f MiB per connection still in flight (kernel buffers)",
		conns, float64(chunk)/every.Seconds()/1024, read>>20, perConn>>20, dur.Round(time.Second), offered>>20,
		rss0>>10, peak>>10, growth, src.written.Load()>>20, float64(inFlight)/float64(conns)/(1<<20))
	if growth > 1024 {
		t.Errorf("RSS grew %.0f KiB per slow connection; want < 1 MiB", growth)
	}
	// Flow control, not l4lb, holds the backlog: the backends could not
	// write all they offered, only what the socket buffers on the way hold.
	if inFlight >= int64(conns)*int64(offered-perConn) {
		t.Errorf("backends wrote everything (%d MiB) to clients that read %d MiB: nothing throttled them", src.written.Load()>>20, read>>20)
	}
}

// TestKnobs: the soak's length is its own knob: L4LB_LONG (even set to a
// duration, as the suite once took it) lengthens nothing else, and `make
// reliability` sets the long mode, the soak and the scale separately.
func TestKnobs(t *testing.T) {
	t.Setenv("L4LB_LONG", "30m")
	t.Setenv("L4LB_SOAK", "")
	if d, err := soakDuration(); err != nil || d != 15*time.Second {
		t.Errorf("soak with L4LB_LONG=30m alone: %v, %v; want 15s", d, err)
	}
	if !longMode() {
		t.Errorf("L4LB_LONG=30m is not long mode")
	}
	t.Setenv("L4LB_SOAK", "30m")
	if d, err := soakDuration(); err != nil || d != 30*time.Minute {
		t.Errorf("L4LB_SOAK=30m: %v, %v", d, err)
	}
	t.Setenv("L4LB_SOAK", "thirty")
	if _, err := soakDuration(); err == nil {
		t.Errorf("L4LB_SOAK=thirty accepted")
	}
	if scaleDuration != 60*time.Second {
		t.Errorf("scale duration %v, documented as 60s", scaleDuration)
	}

	make, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make not installed")
	}
	cmd := exec.Command(make, "-n", "-s", "reliability")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n reliability: %v\n%s", err, out)
	}
	for _, want := range []string{"L4LB_LONG=1 ", "L4LB_SOAK=30m ", "L4LB_SCALE=10000 ", "./internal/reliability/"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make reliability runs %q, missing %q", out, want)
		}
	}
}

// TestFuzzTargetsListed: `make fuzz` runs every fuzz target in the module:
// each `func FuzzX(f *testing.F)` is in the Makefile's FUZZ_TARGETS as
// ./pkg:FuzzX, and every listed one exists.
func TestFuzzTargetsListed(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	if m := regexp.MustCompile(`(?m)^FUZZ_TARGETS\s*=((?:.*\\\n)*.*)$`).FindSubmatch(mk); m != nil {
		for _, f := range strings.Fields(strings.ReplaceAll(string(m[1]), "\\", " ")) {
			listed[f] = true
		}
	}
	found := map[string]bool{}
	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	err = filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != "../.." {
			return filepath.SkipDir
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range fuzzFunc.FindAllSubmatch(b, -1) {
			rel, _ := filepath.Rel("../..", filepath.Dir(path))
			found["./"+filepath.ToSlash(rel)+":"+string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for f := range found {
		if !listed[f] {
			t.Errorf("%s is not in the Makefile's FUZZ_TARGETS: make fuzz would not run it", f)
		}
	}
	for f := range listed {
		if !found[f] {
			t.Errorf("FUZZ_TARGETS lists %s, which does not exist", f)
		}
	}
	if len(found) == 0 {
		t.Fatal("no fuzz target found")
	}
	t.Logf("%d fuzz targets found", len(found))
}
