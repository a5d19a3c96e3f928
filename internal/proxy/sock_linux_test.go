package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/sockerr"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
	"golang.org/x/sys/unix"
)

// TestDialSocketWaits: a connect that does not complete inside connect(2)
// waits on the netpoller and succeeds when the handshake does. The listener's
// accept queue starts full, so the first SYN is dropped; once the queue is
// drained the kernel's SYN retransmission (after about 1s) gets through.
func TestDialSocketWaits(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	// Fill the queue.
	var fillers []net.Conn
	for i := 0; i < 2; i++ {
		if c, err := net.DialTimeout("tcp", ap.String(), 200*time.Millisecond); err == nil {
			fillers = append(fillers, c)
		}
	}
	defer func() {
		for _, c := range fillers {
			c.Close()
		}
	}()
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	start := time.Now()
	go func() {
		c, err := dialSocket(context.Background(), ap, netip.Addr{}, 0, time.Now().Add(10*time.Second))
		res <- result{c, err}
	}()
	// Once the dialling socket is in SYN_SENT its first SYN has been sent
	// and, the queue being full, dropped (loopback delivers it at once):
	// then make room.
	deadline := time.Now().Add(5 * time.Second)
	for !synSentTo(t, ap.Port()) {
		if time.Now().After(deadline) {
			t.Fatal("the dial never reached SYN_SENT")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range fillers {
		if nfd, _, err := unix.Accept(fd); err == nil {
			defer unix.Close(nfd)
		}
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("dial: %v", r.err)
	}
	defer r.c.Close()
	if _, ok := r.c.(*splice.Socket); !ok {
		t.Fatalf("dial returned %T, want *splice.Socket", r.c)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("connected after %v: the queue was not full, so the wait path was not taken", d)
	}
	if _, err := r.c.Write([]byte("x")); err != nil {
		t.Fatalf("write on the connected socket: %v", err)
	}
}

// TestDialSocketErrors: refused, timed out and cancelled connects give the
// errors (and the operator's reasons) net.Dialer's gave, and leave no fd.
func TestDialSocketErrors(t *testing.T) {
	refused := netip.MustParseAddrPort(testbackend.Refuser(t))
	hole := netip.MustParseAddrPort(testbackend.Blackhole(t))
	fds := openFDs(t)
	_, err := dialSocket(context.Background(), refused, netip.Addr{}, 0, time.Now().Add(2*time.Second))
	if !errors.Is(err, syscall.ECONNREFUSED) || sockerr.Reason(err, time.Second) != "connection refused" || failKind(err) != pool.FailRefused {
		t.Fatalf("refused: %v (%q)", err, sockerr.Reason(err, time.Second))
	}
	_, err = dialSocket(context.Background(), hole, netip.Addr{}, 0, time.Now().Add(100*time.Millisecond))
	if sockerr.Reason(err, 100*time.Millisecond) != "timeout after 100ms" || failKind(err) != pool.FailTimeout {
		t.Fatalf("blackhole: %v (%q)", err, sockerr.Reason(err, 100*time.Millisecond))
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	if _, err := dialSocket(ctx, hole, netip.Addr{}, 0, time.Now().Add(10*time.Second)); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled dial: %v after %v", err, time.Since(start))
	}
	if n := openFDs(t); n > fds {
		t.Fatalf("fds open: %d, want %d (a failed dial leaked)", n, fds)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// synSentTo reports whether a socket of this process's network namespace is
// in SYN_SENT toward 127.0.0.1:port (/proc/net/tcp: rem_address, st 02).
func synSentTo(t *testing.T, port uint16) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == want && f[3] == "02" {
			return true
		}
	}
	return false
}

// TestConnectHeap: picking and connecting a host costs the heap little per
// connection (about 180 bytes: the socket, the tried-hosts list). A fixed
// tried-hosts array of 2*maxTries pointers used to escape with the skip
// function: 1.6 KiB of heap per connection, and 39 GC cycles instead of 15
// per 40 000 connections of redis-benchmark -k 0.
func TestConnectHeap(t *testing.T) {
	// A backend that never accepts: the kernel completes the handshakes
	// into its backlog, so only connect's allocations are counted. 101
	// connections fit the smallest backlog a kernel gives (somaxconn 128
	// before Linux 5.4).
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s := defaults(upstream(t, []string{b.Addr().String()}))
	l, err := Listen("heap", "tcp", "127.0.0.1:0", s, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cl := &clientInfo{addr: netip.MustParseAddrPort("127.0.0.1:1")}
	tried := newTriedHosts() // a worker's, made once
	connect := func() {
		c, _, h, err := l.connect(context.Background(), s, nil, cl, tried)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		h.Release()
	}
	connect() // the first connect warms what is made once
	const n = 100
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range n {
		connect()
	}
	runtime.ReadMemStats(&m1)
	// What is left is the backend's Socket: the tried-hosts list and its
	// skip function are the worker's, made once.
	bytes, objs := (m1.TotalAlloc-m0.TotalAlloc)/n, (m1.Mallocs-m0.Mallocs)/n
	if bytes > 256 || objs > 1 {
		t.Errorf("connect allocates %d bytes in %d objects per connection, want at most 256 in 1", bytes, objs)
	} else {
		t.Logf("connect allocates %d bytes in %d objects per connection", bytes, objs)
	}
}

// listenRaw listens on a loopback port and puts a raw accepter on the
// listener, which is closed when the test ends.
func listenRaw(t *testing.T) (net.Listener, *rawAccepter) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	a := newRawAccepter(ln)
	if a == nil {
		t.Fatal("no raw accepter for a TCP listener")
	}
	return ln, a
}

// TestRawAccepterClosed: once closed, accept says net.ErrClosed (what the
// accept loop stops on), not poll's "use of closed file": the first accept
// may be waiting or not yet started when close comes, the second starts
// after it.
func TestRawAccepterClosed(t *testing.T) {
	_, a := listenRaw(t)
	waiting := make(chan error, 1)
	go func() {
		_, err := a.accept()
		waiting <- err
	}()
	a.close()
	if err := <-waiting; !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept while closed: %v, want net.ErrClosed", err)
	}
	if _, err := a.accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("accept after close: %v, want net.ErrClosed", err)
	}
}

// TestAcceptedNoDelay: an accepted client socket has TCP_NODELAY, taken
// from the listener (which the accepter sets it on), so accept makes no
// setsockopt of its own. Small replies must not wait on Nagle's algorithm.
func TestAcceptedNoDelay(t *testing.T) {
	ln, a := listenRaw(t)
	defer a.close()
	if !a.inherit {
		t.Fatal("the listener does not read back TCP_NODELAY: every accept would set it")
	}
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := a.accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		v, err := unix.GetsockoptInt(s.(*splice.Socket).Fd(), unix.IPPROTO_TCP, unix.TCP_NODELAY)
		if err != nil || v == 0 {
			t.Errorf("accepted socket: TCP_NODELAY = %d (%v), want set", v, err)
		}
	}
}
