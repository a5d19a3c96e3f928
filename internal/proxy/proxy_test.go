package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// splice's engine loops live as long as the process, like Go's netpoller.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(testbackend.EngineGoroutine))
}

// running is a Listener under test, stopped (and drained) at cleanup.
type running struct {
	l    *Listener
	addr string
	stop context.CancelFunc
	done chan error
}

func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

func start(t testing.TB, s *Settings) *running {
	t.Helper()
	l, err := Listen("test", "tcp", "127.0.0.1:0", s, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{l: l, addr: l.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	t.Cleanup(func() { r.shutdown(t) })
	return r
}

func (r *running) shutdown(t testing.TB) {
	r.stop()
	select {
	case <-r.done:
		r.done <- nil
	case <-time.After(30 * time.Second):
		t.Errorf("listener did not stop")
	}
}

// upstream builds an upstream of pools given as lists of addresses; pool i
// has priority i*10 and is named p<i>.
func upstream(t testing.TB, pools ...[]string) *pool.Upstream {
	t.Helper()
	var ps []*pool.Pool
	for i, addrs := range pools {
		var hs []*pool.Host
		for _, a := range addrs {
			hs = append(hs, pool.NewHost(a, "tcp", a, 1))
		}
		p, err := pool.NewPool(fmt.Sprintf("p%d", i), i*10, pool.MethodRoundRobin, hs)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return pool.NewUpstream("u", ps, pool.AllDownReject)
}

func defaults(u *pool.Upstream) *Settings {
	return &Settings{Upstream: u, Tries: 3, ConnectTimeout: time.Second, IdleTimeout: time.Minute, FinTimeout: 10 * time.Second, DrainTimeout: 5 * time.Second}
}

// tag connects through the proxy and returns the tag the backend greets with.
func tag(t testing.TB, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading tag: %v", err)
	}
	return strings.TrimSpace(line)
}

// TestIntegrity: 1000 connections, 50 at a time, payloads from 0 B to
// 64 MiB echoed; what comes back hashes to what was sent on every one.
func TestIntegrity(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	r := start(t, defaults(upstream(t, []string{echo.Addr()})))
	sizes := []int{0, 1, 1<<10 - 1, 64<<10 + 1, 1 << 20}
	const conns, parallel = 1000, 50
	big := 64 << 20
	if testing.Short() {
		big = 8 << 20
	}
	payload := make([]byte, big)
	rand.Read(payload)

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	sem := make(chan struct{}, parallel)
	var sent, moved uint64
	var mu sync.Mutex
	for i := 0; i < conns; i++ {
		size := sizes[i%len(sizes)]
		if i%500 == 499 { // two connections carry the 64 MiB payload
			size = big
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(off, size int) {
			defer wg.Done()
			defer func() { <-sem }()
			off %= len(payload) - size + 1
			if err := echoOnce(r.addr, payload[off:off+size]); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			sent += uint64(size)
			moved += 2 * uint64(size)
			mu.Unlock()
		}(i*7919, size)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := r.l.Stats()
	if st.Accepted != conns {
		t.Errorf("accepted %d, want %d", st.Accepted, conns)
	}
	t.Logf("%d connections, %d MiB sent, %d MiB moved through the proxy, 0 bytes altered", conns, sent>>20, moved>>20)
}

// echoOnce sends data, half-closes, reads the echo to EOF and compares hashes.
func echoOnce(addr string, data []byte) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("size %d: read after %d bytes: %w", len(data), n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("size %d: write: %w", len(data), err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("size %d: echoed %d bytes with a different sha256", len(data), n)
	}
	return nil
}

// TestServerFirst: a backend that greets before reading (as MySQL does) is
// heard without the client writing anything.
func TestServerFirst(t *testing.T) {
	greeting := bytes.Repeat([]byte("g"), 4096)
	g := testbackend.New(t, testbackend.Greeter(greeting))
	r := start(t, defaults(upstream(t, []string{g.Addr()})))
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(greeting))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, greeting) {
		t.Fatalf("greeting: %v", err)
	}
}

// TestHalfClose: the client shuts its write half and still gets the whole
// reply; a backend that shuts its write half still receives all the client
// sends.
func TestHalfClose(t *testing.T) {
	reply := make([]byte, 16<<20)
	rand.Read(reply)
	t.Run("client", func(t *testing.T) {
		got := make(chan []byte, 1)
		b := testbackend.New(t, func(c *net.TCPConn) {
			req, _ := io.ReadAll(c) // until the client's FIN
			got <- req
			c.Write(reply)
		})
		r := start(t, defaults(upstream(t, []string{b.Addr()})))
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		c.Write([]byte("request"))
		c.(*net.TCPConn).CloseWrite()
		back, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(back, reply) {
			t.Fatalf("client got %d bytes, want %d: %v", len(back), len(reply), err)
		}
		if req := <-got; string(req) != "request" {
			t.Fatalf("backend read %q", req)
		}
	})
	t.Run("backend", func(t *testing.T) {
		got := make(chan [32]byte, 1)
		b := testbackend.New(t, func(c *net.TCPConn) {
			c.Write([]byte("bye"))
			c.CloseWrite()
			h := sha256.New()
			io.Copy(h, c)
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			got <- sum
		})
		r := start(t, defaults(upstream(t, []string{b.Addr()})))
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if bye, err := io.ReadAll(c); err != nil || string(bye) != "bye" {
			t.Fatalf("client read %q, %v", bye, err)
		}
		if _, err := c.Write(reply); err != nil {
			t.Fatalf("client write after backend half-close: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
		if sum := <-got; sum != sha256.Sum256(reply) {
			t.Fatal("backend received different bytes")
		}
	})
}

// TestBackendReset: a backend reset mid-stream reaches the client as a
// reset, promptly.
func TestBackendReset(t *testing.T) {
	chunk := make([]byte, 1<<20)
	b := testbackend.New(t, func(c *net.TCPConn) {
		// Mid-stream: the client's first byte proves the proxy is
		// connected (a reset before that is a failed connect, and tried
		// elsewhere).
		io.ReadFull(c, make([]byte, 1))
		c.Write(chunk)
		c.SetLinger(0)
	})
	r := start(t, defaults(upstream(t, []string{b.Addr()})))
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client saw %v, want a reset", err)
	}
}

// TestPoolFailover: when every host of the first pool is down, traffic goes
// to the next pool, and comes back when a host of the first is up again.
func TestPoolFailover(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	c := testbackend.New(t, testbackend.Tagger("c"))
	u := upstream(t, []string{a.Addr(), b.Addr()}, []string{c.Addr()})
	r := start(t, defaults(u))
	count := func(n int) map[string]int {
		m := map[string]int{}
		for i := 0; i < n; i++ {
			m[tag(t, r.addr)]++
		}
		return m
	}
	if m := count(10); m["a"] != 5 || m["b"] != 5 {
		t.Fatalf("primary pool: %v, want a:5 b:5", m)
	}
	p0 := u.Pools()[0]
	p0.Hosts[0].SetState(pool.StateDown, "test", false)
	if m := count(4); m["b"] != 4 {
		t.Fatalf("one host down: %v, want b:4", m)
	}
	p0.Hosts[1].SetState(pool.StateDown, "test", false)
	if m := count(4); m["c"] != 4 {
		t.Fatalf("primary pool down: %v, want c:4", m)
	}
	p0.Hosts[0].SetState(pool.StateUp, "test", false)
	if m := count(4); m["a"] != 4 {
		t.Fatalf("after fail-back: %v, want a:4", m)
	}
}

// TestWeights: sequential connections follow the weights exactly (smooth
// weighted round robin).
func TestWeights(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	z := testbackend.New(t, testbackend.Tagger("z"))
	p, err := pool.NewPool("p", 0, pool.MethodRoundRobin, []*pool.Host{
		pool.NewHost("a", "tcp", a.Addr(), 3),
		pool.NewHost("b", "tcp", b.Addr(), 1),
		pool.NewHost("z", "tcp", z.Addr(), 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, defaults(pool.NewUpstream("u", []*pool.Pool{p}, pool.AllDownReject)))
	m := map[string]int{}
	for i := 0; i < 40; i++ {
		m[tag(t, r.addr)]++
	}
	if m["a"] != 30 || m["b"] != 10 || m["z"] != 0 {
		t.Fatalf("got %v, want a:30 b:10 z:0", m)
	}
}

// TestTries: refused and blackholed hosts are tried past, invisibly to the
// client, within connect_timeout; each failure is counted against its host.
func TestTries(t *testing.T) {
	good := testbackend.New(t, testbackend.Tagger("good"))
	refuser, hole := testbackend.Refuser(t), testbackend.Blackhole(t)
	u := upstream(t, []string{refuser, hole, good.Addr()})
	s := defaults(u)
	s.ConnectTimeout = 300 * time.Millisecond
	r := start(t, s)
	for i := 0; i < 6; i++ {
		start := time.Now()
		if got := tag(t, r.addr); got != "good" {
			t.Fatalf("connection %d reached %q", i, got)
		}
		// At worst: a refusal (instant) and one blackhole timeout.
		if d := time.Since(start); d > s.ConnectTimeout+2*time.Second {
			t.Fatalf("connection %d took %v", i, d)
		}
	}
	hs := u.Pools()[0].Hosts
	ref, bh := hs[0].Stats(), hs[1].Stats()
	if ref.FailCount == 0 || ref.LastFailReason != "connection refused" {
		t.Errorf("refuser stats %+v", ref)
	}
	if bh.FailCount == 0 || bh.LastFailReason != "timeout after 300ms" {
		t.Errorf("blackhole stats %+v", bh)
	}
}

// TestTriesIntoNextPool: when tries exhaust the first pool they continue in
// the next.
func TestTriesIntoNextPool(t *testing.T) {
	dr := testbackend.New(t, testbackend.Tagger("dr"))
	u := upstream(t, []string{testbackend.Refuser(t), testbackend.Refuser(t)}, []string{dr.Addr()})
	r := start(t, defaults(u))
	for i := 0; i < 4; i++ {
		if got := tag(t, r.addr); got != "dr" {
			t.Fatalf("got %q, want dr", got)
		}
	}
}

// TestAllDownClosesPromptly: with no usable host the client is closed at
// once (EOF), not left hanging; and when every try fails, after them.
func TestAllDownClosesPromptly(t *testing.T) {
	t.Run("marked down", func(t *testing.T) {
		b := testbackend.New(t, testbackend.Echo)
		u := upstream(t, []string{b.Addr()})
		u.Pools()[0].Hosts[0].SetState(pool.StateDown, "test", false)
		r := start(t, defaults(u))
		expectPromptEOF(t, r.addr, time.Second)
		if st := r.l.Stats(); st.NoBackend != 1 {
			t.Fatalf("no_backend = %d", st.NoBackend)
		}
	})
	t.Run("refusing", func(t *testing.T) {
		u := upstream(t, []string{testbackend.Refuser(t), testbackend.Refuser(t)})
		r := start(t, defaults(u))
		expectPromptEOF(t, r.addr, time.Second)
	})
}

func expectPromptEOF(t *testing.T, addr string, within time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if err != io.EOF {
		t.Fatalf("read: %v, want EOF", err)
	}
	if d := time.Since(start); d > within {
		t.Fatalf("closed after %v, want under %v", d, within)
	}
}

// TestIdleTimeoutClosesBoth: no bytes either way for idle_timeout closes the
// client and the backend side.
func TestIdleTimeoutClosesBoth(t *testing.T) {
	backendEOF := make(chan error, 1)
	b := testbackend.New(t, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		backendEOF <- err
	})
	s := defaults(upstream(t, []string{b.Addr()}))
	s.IdleTimeout = 300 * time.Millisecond
	r := start(t, s)
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client: %v, want EOF at idle timeout", err)
	}
	select {
	case err := <-backendEOF:
		if err != nil {
			t.Fatalf("backend: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("backend side not closed")
	}
}

// TestDrain: on shutdown new connections are refused at once, a live one
// may finish within drain_timeout, and a straggler is closed when it ends.
func TestDrain(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	s := defaults(upstream(t, []string{echo.Addr()}))
	s.DrainTimeout = 500 * time.Millisecond
	r := start(t, s)
	live, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.SetDeadline(time.Now().Add(10 * time.Second))
	roundTrip := func(msg string) error {
		if _, err := live.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(live, buf)
		return err
	}
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	r.stop()
	// New connections are refused once the listener is closed.
	refused := false
	for i := 0; i < 100 && !refused; i++ {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			refused = true
			break
		}
		c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	if !refused {
		t.Fatal("listener still accepting after shutdown")
	}
	if err := roundTrip("during drain"); err != nil {
		t.Fatalf("live connection broken during drain: %v", err)
	}
	// The straggler is closed at the drain deadline.
	if _, err := live.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("straggler: %v, want EOF", err)
	}
	if d := time.Since(begin); d < s.DrainTimeout || d > s.DrainTimeout+2*time.Second {
		t.Fatalf("straggler closed after %v, drain_timeout %v", d, s.DrainTimeout)
	}
	select {
	case <-r.done:
		r.done <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
}

func fdCount(t *testing.T) int {
	t.Helper()
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestNoLeaks: after 1000 connections and a stop, fds and goroutines are back
// to where they were.
func TestNoLeaks(t *testing.T) {
	before := fdCount(t)
	goroutines := runtime.NumGoroutine()
	func() {
		echo, err := testbackend.Start(testbackend.Echo)
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		l, err := Listen("leak", "tcp", "127.0.0.1:0", defaults(upstream(t, []string{echo.Addr()})), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 50)
		for i := 0; i < 1000; i++ {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := echoOnce(l.Addr().String(), []byte("ping")); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		cancel()
		<-done
	}()
	splice.DefaultPipes().Flush()
	if after := fdCount(t); after > before {
		t.Errorf("fds: %d before, %d after 1000 connections", before, after)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("goroutines: %d before, %d after", goroutines, n)
	}
}

// serveEcho echoes every connection ln accepts until ln is closed.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
}

// TestUnixAndIPv6: a unix-socket listener forwarding to a unix-socket host,
// and an IPv6 listener to an IPv6 host, carry bytes intact (spliced).
func TestUnixAndIPv6(t *testing.T) {
	t.Run("unix", func(t *testing.T) {
		dir := t.TempDir()
		back := dir + "/backend.sock"
		bl, err := net.Listen("unix", back)
		if err != nil {
			t.Fatal(err)
		}
		defer bl.Close()
		go serveEcho(bl)
		h := pool.NewHost("sock", "unix", back, 1)
		p, _ := pool.NewPool("p", 0, pool.MethodRoundRobin, []*pool.Host{h})
		front := dir + "/front.sock"
		// A stale socket file from a crashed run is replaced.
		stale, _ := net.Listen("unix", front)
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()
		l, err := Listen("unix", "unix", front, defaults(pool.NewUpstream("u", []*pool.Pool{p}, pool.AllDownReject)), testLogger(t))
		if err != nil {
			t.Fatalf("listen over a stale socket file: %v", err)
		}
		// A live one is not stolen.
		if _, err := Listen("again", "unix", front, defaults(nil), zerolog.Nop()); err == nil {
			t.Fatal("second listener stole a live socket")
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		defer func() { cancel(); <-done }()
		c, err := net.Dial("unix", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := bytes.Repeat([]byte("u"), 1<<20)
		go c.Write(msg)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("unix echo: %v", err)
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		bl, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Skip("no IPv6 loopback")
		}
		defer bl.Close()
		go serveEcho(bl)
		u := upstream(t, []string{bl.Addr().String()})
		l, err := Listen("v6", "tcp", "[::1]:0", defaults(u), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		defer func() { cancel(); <-done }()
		if err := echoOnce(l.Addr().String(), bytes.Repeat([]byte("6"), 1<<20)); err != nil {
			t.Fatal(err)
		}
	})
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
