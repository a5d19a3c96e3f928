package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scaled stretches a test timeout by L4LB_TEST_TIMEOUT_SCALE (default 1).
func scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("L4LB_TEST_TIMEOUT_SCALE"), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}

func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// backend is a UDP server on loopback. Its handler returns the reply to a
// datagram (it may be p itself), or nil for none; delay postpones every
// reply.
type backend struct {
	conn *net.UDPConn
	wg   sync.WaitGroup
}

// newBackend starts a backend on addr ("127.0.0.1:0") and stops it at cleanup.
func newBackend(t testing.TB, addr string, delay time.Duration, h func([]byte) []byte) *backend {
	t.Helper()
	return newBackendN(t, addr, delay, oneReply(h))
}

// oneReply makes a handler of one reply (nil: none) a handler of several.
func oneReply(h func([]byte) []byte) func([]byte) [][]byte {
	return func(p []byte) [][]byte {
		if r := h(p); r != nil {
			return [][]byte{r}
		}
		return nil
	}
}

// newBackendN is newBackend with a handler that answers a datagram with
// any number of datagrams, sent back to back.
func newBackendN(t testing.TB, addr string, delay time.Duration, h func([]byte) [][]byte) *backend {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{conn: c}
	b.wg.Add(1)
	go b.serve(delay, h)
	t.Cleanup(b.close)
	return b
}

func (b *backend) serve(delay time.Duration, h func([]byte) [][]byte) {
	defer b.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := b.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		rs := h(buf[:n])
		if len(rs) == 0 {
			continue
		}
		if delay > 0 {
			// Replies in flight while the session expires: one at a
			// time is enough for the tests that use it.
			time.Sleep(delay)
		}
		for _, r := range rs {
			b.conn.WriteToUDPAddrPort(r, from)
		}
	}
}

func (b *backend) close()       { b.conn.Close(); b.wg.Wait() }
func (b *backend) addr() string { return b.conn.LocalAddr().String() }

// echo replies with the datagram itself (in the read buffer: the backend
// writes it before reading the next, and allocates nothing).
func echo(p []byte) []byte { return p }

// tagger replies "tag|payload".
func tagger(tag string) func([]byte) []byte {
	return func(p []byte) []byte { return append([]byte(tag+"|"), p...) }
}

// refused returns an address where nothing listens: datagrams to it get an
// ICMP port unreachable.
func refused(t testing.TB) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := c.LocalAddr().String()
	c.Close()
	return a
}

type hostSpec struct {
	addr   string
	weight int
}

// upstream builds an upstream of pools given as host lists; pool i has
// priority i*10 and is named p<i>; host ids are their addresses.
func upstream(t testing.TB, pools ...[]hostSpec) *pool.Upstream {
	t.Helper()
	return upstreamOf(t, pool.MethodRoundRobin, pools...)
}

// upstreamOf is upstream with every pool's method set to m.
func upstreamOf(t testing.TB, m pool.Method, pools ...[]hostSpec) *pool.Upstream {
	t.Helper()
	var ps []*pool.Pool
	for i, hosts := range pools {
		var hs []*pool.Host
		for _, h := range hosts {
			hs = append(hs, pool.NewHost("", "udp", h.addr, h.weight))
		}
		p, err := pool.NewPool(fmt.Sprintf("p%d", i), i*10, m, hs)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return pool.NewUpstream("u", ps, pool.AllDownReject)
}

func hosts(addrs ...string) []hostSpec {
	var hs []hostSpec
	for _, a := range addrs {
		hs = append(hs, hostSpec{a, 1})
	}
	return hs
}

// running is a Listener under test, stopped at cleanup.
type running struct {
	l    *Listener
	addr string
	stop context.CancelFunc
	done chan error
}

func start(t testing.TB, s *Settings) *running { return startAt(t, "127.0.0.1:0", s) }

func startAt(t testing.TB, addr string, s *Settings) *running {
	t.Helper()
	l, err := Listen("test", addr, s, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return run(t, l)
}

// run runs l until cleanup.
func run(t testing.TB, l *Listener) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{l: l, addr: l.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	t.Cleanup(func() { r.shutdown(t) })
	return r
}

func (r *running) shutdown(t testing.TB) {
	r.stop()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		r.done <- nil
	case <-time.After(scaled(10 * time.Second)):
		t.Errorf("Run did not return")
	}
}

// client is a connected socket to the listener: the kernel drops what does
// not come from the address it sent to.
func client(t testing.TB, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends p and returns the reply, or "" after timeout.
func roundTrip(t testing.TB, c *net.UDPConn, p string, timeout time.Duration) string {
	t.Helper()
	if _, err := c.Write([]byte(p)); err != nil {
		t.Fatalf("write: %v", err)
	}
	return recv(t, c, timeout)
}

func recv(t testing.TB, c *net.UDPConn, timeout time.Duration) string {
	t.Helper()
	buf := make([]byte, maxDatagram)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return ""
		}
		t.Fatalf("read: %v", err)
	}
	return string(buf[:n])
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(scaled(timeout))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func fdCount(t testing.TB) int {
	t.Helper()
	for range 3 {
		runtime.GC()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}
