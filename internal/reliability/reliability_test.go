package reliability

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// long returns d when L4LB_LONG is set (make reliability), else short.
func long(short, d time.Duration) time.Duration {
	if v := os.Getenv("L4LB_LONG"); v != "" {
		if dd, err := time.ParseDuration(v); err == nil {
			return dd
		}
		return d
	}
	return short
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

// counters reads a listener's counters through the control API.
func counters(t *testing.T, p *l4lbtest.Proc) map[string]int64 {
	t.Helper()
	return status(t, p).Listeners[0].Counters
}

func status(t *testing.T, p *l4lbtest.Proc) control.Status {
	t.Helper()
	st, err := control.NewClient(p.Socket()).Status(context.Background())
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
		if l["level"] == "error" && l["message"] != nil && fmt.Sprint(l["message"])[:6] == "accept" {
			logLines++
		}
	}
	cpuShare := float64(cpu1-cpu0) / float64(window)
	t.Logf("fd limit %d: %d connections served before exhaustion; while exhausted: CPU %.1f%% of a core, %d accept-error log lines in %v",
		limit, len(served), 100*cpuShare, logLines, window)

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

// TestSlowReader: a backend sends 64 MiB to clients reading 16 KiB per
// 100 ms: l4lb's memory stays bounded (TCP flow control and the pipe hold
// the rest), whatever the backlog.
func TestSlowReader(t *testing.T) {
	src := testbackend.New(t, testbackend.Source(make([]byte, 64<<20)))
	p := l4lbtest.Start(t, bin, oneListener(src.Addr()))
	const conns = 10
	var cs []net.Conn
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", p.Addrs["front"])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	buf := make([]byte, 16<<10)
	read := func() {
		for _, c := range cs {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	read()
	rss0, _ := l4lbtest.RSS(p.Pid())
	dur := long(3*time.Second, 60*time.Second)
	ticks := int(dur / (100 * time.Millisecond))
	for i := 0; i < ticks; i++ {
		time.Sleep(100 * time.Millisecond) // the slow reader's pace
		read()
	}
	rss1, _ := l4lbtest.RSS(p.Pid())
	growth := float64(rss1-rss0) / conns / 1024
	t.Logf("%d slow readers for %v (16 KiB per 100 ms each, 64 MiB offered): l4lb RSS %d KiB -> %d KiB, %.0f KiB per connection",
		conns, dur, rss0>>10, rss1>>10, growth)
	if growth > 1024 {
		t.Errorf("RSS grew %.0f KiB per slow connection; want < 1 MiB", growth)
	}
}
