package proxy

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/proxyproto"
	"github.com/l4lb/l4lb/internal/testbackend"
)

// workerGoroutines counts the goroutines running Listener.worker.
func workerGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "proxy.(*Listener).worker(")
}

// TestWorkersReused: connections set up one after another are set up by the
// same few goroutines, not a new one each (docs/PERFORMANCE.md: a new
// goroutine's stack copy was a third of l4lb's own work per connection).
func TestWorkersReused(t *testing.T) {
	r := start(t, defaults(upstream(t, []string{testbackend.New(t, testbackend.Echo).Addr()})))
	const n = 200
	for i := range n {
		if err := echoOnce(r.addr, []byte("ping")); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	// A worker is back waiting well before its client has its echo; one
	// caught between the two starts another now and then.
	if got := r.l.started.Load(); got > n/10 {
		t.Fatalf("%d workers started for %d connections one after another; want them reused", got, n)
	}
}

// TestWorkersBounded: a burst of set-ups that wait (here for PROXY headers)
// takes a worker each; once done, MaxIdleWorkers stay and the rest exit;
// when Run returns none is left.
func TestWorkersBounded(t *testing.T) {
	s := defaults(upstream(t, []string{testbackend.New(t, testbackend.Echo).Addr()}))
	s.AcceptProxy = true
	s.Trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	s.ProxyTimeout = 30 * time.Second
	r := start(t, s)
	base := workerGoroutines()

	const n = 3 * MaxIdleWorkers
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// No worker is free while every one waits for its header.
	waitFor(t, func() bool { return r.l.started.Load() == n })
	client := netip.MustParseAddrPort("203.0.113.7:5555")
	front := netip.MustParseAddrPort("192.0.2.1:6379")
	for _, c := range conns {
		if _, err := c.Write(append(proxyproto.Append(nil, 1, client, front), "hi"...)); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, []byte("hi")) {
			t.Fatalf("connection %d: %q, %v", i, buf, err)
		}
	}
	waitFor(t, func() bool { return workerGoroutines()-base == MaxIdleWorkers })
	if got := r.l.idleWorkers.Load(); got != MaxIdleWorkers {
		t.Fatalf("%d workers idle; want %d", got, MaxIdleWorkers)
	}
	for _, c := range conns {
		c.Close()
	}
	r.shutdown(t)
	if got := workerGoroutines() - base; got != 0 {
		t.Fatalf("%d workers left after Run returned", got)
	}
}
