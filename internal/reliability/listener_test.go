package reliability

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/l4lbtest"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/testbackend"
)

// abortConns makes n connections to addr from 8 workers (sources spread
// over 127.0.0.2-9), each reset at once after the handshake (SO_LINGER 0,
// then close), as a port scanner or an impatient client does.
func abortConns(addr string, n int) error {
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+w))}, Timeout: 5 * time.Second}
			for i := w; i < n; i += workers {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// TestAbortedConnections (scenario 29, listener robustness): 10 000
// connections that reset right after the handshake, as a port scan makes.
// Afterwards l4lb's active count is 0 and its fds and goroutines are back to
// what they were before (measured after a warm-up batch, so its pools are
// already full). Its main log is not flooded: the lines written during the
// 10 000 are counted and must stay under 10. The access log (here a file of
// its own) has exactly one line per connection, by design: it is the record
// of every connection (docs/METRICS.md), and l4lb has no option to leave out
// connections that carried no data (HAProxy's `option dontlognull`).
func TestAbortedConnections(t *testing.T) {
	const n = 10000
	echo := testbackend.New(t, testbackend.Echo)
	maddr := freeAddr(t)
	access := filepath.Join(t.TempDir(), "access.log")
	cfg := strings.Replace(oneListener(echo.Addr()), "format = \"json\"\n", fmt.Sprintf("format = \"json\"\naccess = %q\n", access), 1)
	p := l4lbtest.Start(t, bin, withMetrics(cfg, maddr))
	addr := p.Addrs["front"]

	// idle waits (bounded) until l4lb has closed every connection, holds
	// at most sockMax sockets and gMax goroutines, and no more pipes than
	// its splice pool keeps idle (16 pairs, by design); it returns what it
	// last saw.
	idle := func(sockMax, gMax int, within time.Duration) (active int64, fds fdKinds, g int, ok bool) {
		for deadline := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
			active = counters(t, p)["active"]
			fds = countFDs(p.Pid())
			g, _ = goroutines(p.Pid(), maddr)
			if active == 0 && fds.sockets <= sockMax && fds.pipes <= 2*16 && g <= gMax {
				return active, fds, g, true
			}
			if time.Now().After(deadline) {
				return active, fds, g, false
			}
		}
	}
	if err := abortConns(addr, 200); err != nil { // warm-up
		t.Fatal(err)
	}
	if _, _, _, ok := idle(1<<30, 1<<30, 10*time.Second); !ok {
		t.Fatal("l4lb still has connections open 10 s after the warm-up")
	}
	fd0 := countFDs(p.Pid())
	g0, gsrc := goroutines(p.Pid(), maddr)
	c0 := counters(t, p)
	a0 := accessLines(t, access)
	p.Drain()

	start := time.Now()
	if err := abortConns(addr, n); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	// Beyond the baseline, the listener may keep connection workers
	// waiting, up to proxy.MaxIdleWorkers, whatever the warm-up left.
	active, fd1, g1, ok := idle(fd0.sockets+2, g0+4+proxy.MaxIdleWorkers, 10*time.Second)
	lines := p.Drain()
	c1 := counters(t, p)
	a1 := accessLines(t, access)
	levels := map[string]int{}
	msgs := map[string]int{}
	for _, l := range lines {
		levels[fmt.Sprint(l["level"])]++
		msgs[fmt.Sprint(l["message"])]++
	}
	var top []string
	for m, k := range msgs {
		top = append(top, fmt.Sprintf("%d× %q", k, m))
	}
	sort.Strings(top)
	t.Logf("%d connect-then-RST connections in %v: l4lb accepted %d, no_backend %d, accept_errors %d; afterwards active %d, fds %v -> %v, %s %d -> %d; main log %d lines %v %v; access log %d lines",
		n, took.Round(time.Millisecond), c1["accepted"]-c0["accepted"], c1["no_backend"]-c0["no_backend"], c1["accept_errors"]-c0["accept_errors"],
		active, fd0, fd1, gsrc, g0, g1, len(lines), levels, top, a1-a0)
	if !ok {
		t.Errorf("leak after %d aborted connections: active %d, fds %v -> %v, %s %d -> %d (10 s after the last)", n, active, fd0, fd1, gsrc, g0, g1)
	}
	if len(lines) >= 10 {
		t.Errorf("%d main log lines for %d aborted connections: a client can flood the log", len(lines), n)
	}
	if a1-a0 != n {
		t.Errorf("%d access log lines for %d connections, want one each", a1-a0, n)
	}
}

// fdKinds is a process's open fds by kind.
type fdKinds struct{ sockets, pipes, other int }

func (k fdKinds) String() string {
	return fmt.Sprintf("%d sockets + %d pipe ends + %d other", k.sockets, k.pipes, k.other)
}

// countFDs sorts a process's fds by what they point at. Pipes are counted
// apart because the splice pool keeps up to 16 idle pairs on purpose.
func countFDs(pid int) fdKinds {
	var k fdKinds
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		switch {
		case strings.HasPrefix(l, "socket:"):
			k.sockets++
		case strings.HasPrefix(l, "pipe:"):
			k.pipes++
		default:
			k.other++
		}
	}
	return k
}

// accessLines counts the lines of an access log file.
func accessLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}
