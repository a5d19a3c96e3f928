package reliability

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/l4lbtest"
)

// echoServerMain runs when the test binary is started as the scale test's
// backend: an echo server in its own process (so its fds do not count
// against the load generator's), printing its address on stdout.
func echoServerMain() {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // exit with the parent
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo server:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		// A plain buffered copy: Go's io.Copy between two TCPConns splices
		// and holds a pipe (2 more fds) per waiting connection.
		go func() { io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}); c.Close() }()
	}
}

func init() {
	if os.Getenv("L4LB_ECHO_SERVER") == "1" {
		echoServerMain()
	}
}

// scaleDuration is how long TestScale's connections echo, in every mode.
const scaleDuration = 60 * time.Second

// TestScale: N concurrent proxied connections, each echoing 1 KiB every
// second for a while: zero errors, zero bytes lost; l4lb's RSS, fds and CPU
// per connection are reported. Run by `make reliability` (L4LB_SCALE=N,
// default 10000, capped by the fd limit this machine allows).
func TestScale(t *testing.T) {
	v := os.Getenv("L4LB_SCALE")
	if v == "" {
		t.Skip("set L4LB_SCALE=N (make reliability does) to run the scale test")
	}
	n, _ := strconv.Atoi(v)
	if n <= 0 {
		n = 10000
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	// l4lb holds 2 fds per idle connection (4 more while bytes are in
	// flight, pipes from a small pool), this process one.
	if max := int(lim.Max/2) - 200; n > max {
		t.Logf("fd hard limit %d allows %d connections through one l4lb, not %d (prlimit cannot raise the hard limit here)", lim.Max, max, n)
		n = max
	}
	dur := scaleDuration

	self, _ := os.Executable()
	be := exec.Command(self)
	be.Env = append(os.Environ(), "L4LB_ECHO_SERVER=1")
	be.Stderr = os.Stderr
	stdin, _ := be.StdinPipe()
	out, _ := be.StdoutPipe()
	if err := be.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); be.Wait() }()
	line, _ := bufio.NewReader(out).ReadString('\n')
	backend := strings.TrimSpace(line)

	p := l4lbtest.Start(t, bin, oneListener(backend))
	addr := p.Addrs["front"]
	rss0, _ := l4lbtest.RSS(p.Pid())
	fd0, _ := l4lbtest.FDs(p.Pid())
	cpu0, _ := l4lbtest.CPUTime(p.Pid())

	var errs, rounds atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	msg := make([]byte, 1024)
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		// Sources spread over 127.0.0.x so no single pair of addresses runs
		// out of ephemeral ports.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, len(msg))
			time.Sleep(time.Duration(i%1000) * time.Millisecond) // spread the echoes over the second
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write(msg); err != nil {
					errs.Add(1)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errs.Add(1)
					return
				}
				rounds.Add(1)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}(i, c)
	}
	time.Sleep(dur) // the load runs for a fixed time
	rss1, _ := l4lbtest.RSS(p.Pid())
	fd1, _ := l4lbtest.FDs(p.Pid())
	cpu1, _ := l4lbtest.CPUTime(p.Pid())
	close(stop)
	wg.Wait()
	t.Logf("%d connections for %v: %d round trips of 1 KiB, %d errors; l4lb RSS %d -> %d MiB (%.1f KiB per connection), fds %d -> %d (%.2f per connection), CPU %.1f%% of a core; test process goroutines %d",
		n, dur, rounds.Load(), errs.Load(), rss0>>20, rss1>>20, float64(rss1-rss0)/float64(n)/1024,
		fd0, fd1, float64(fd1-fd0)/float64(n), 100*float64(cpu1-cpu0)/float64(dur), runtime.NumGoroutine())
	if errs.Load() != 0 {
		seen := map[string]int{}
		for _, l := range p.Drain() {
			if l["level"] == "warn" || l["level"] == "error" {
				seen[fmt.Sprint(l["message"], ": ", l["reason"], l["error"])]++
			}
		}
		t.Fatalf("%d connections failed; l4lb said: %v", errs.Load(), seen)
	}
}
