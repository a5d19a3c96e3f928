package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

// splice's engine loops live as long as the process, like Go's netpoller.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(testbackend.EngineGoroutine))
}

// running is a Server under test, with its event subscription.
type running struct {
	s    *Server
	addr string
	sub  *events.Sub
	stop context.CancelFunc
	done chan error
}

func logger() zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

func startServer(t *testing.T, toml string) *running {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	s, err := New("", cfg, logger())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	_, sub := s.Events().Subscribe(0, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, addr: s.Listeners()[0].Addr().String(), sub: sub, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; err != nil {
			t.Errorf("Run: %v", err)
		}
		sub.Close()
	})
	return r
}

// waitEvent waits for an event of kind for host and returns it.
func (r *running) waitEvent(t *testing.T, kind, host string, within time.Duration) events.Event {
	t.Helper()
	return r.waitEvents(t, kind, within, host)[0]
}

// waitEvents waits for an event of kind for each of hosts, in any order.
func (r *running) waitEvents(t *testing.T, kind string, within time.Duration, hosts ...string) []events.Event {
	t.Helper()
	timeout := time.After(within)
	got := make([]events.Event, len(hosts))
	for left := len(hosts); left > 0; {
		select {
		case e, ok := <-r.sub.C():
			if !ok {
				t.Fatal("event feed closed")
			}
			for i, h := range hosts {
				if e.Kind == kind && e.Host == h && got[i].Seq == 0 {
					got[i] = e
					left--
				}
			}
		case <-timeout:
			t.Fatalf("no %s event for each of %v within %v (got %+v)", kind, hosts, within, got)
		}
	}
	return got
}

func tag(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "closed"
	}
	return strings.TrimSpace(line)
}

const twoPools = `
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "500ms"
drain_timeout = "1s"

[upstream.u]
tries = 3
max_fails = 0
close_on_down = %v

[upstream.u.health]
type = "tcp"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2
jitter = "0s"

[[upstream.u.pool]]
name = "primary"
priority = 0
hosts = [ { address = "%s", id = "a" }, { address = "%s", id = "b" } ]

[[upstream.u.pool]]
name = "dr"
priority = 10
hosts = [ { address = "%s", id = "dr" } ]
`

// TestFailoverTiming: killing every host of the primary pool moves new
// connections to the next pool within fall × interval + timeout (+ one
// interval of slack), with no failed connect once both are marked down; when
// a primary host is back, rise checks later traffic returns.
func TestFailoverTiming(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	dr := testbackend.New(t, testbackend.Tagger("dr"))
	r := startServer(t, fmt.Sprintf(twoPools, false, a.Addr(), b.Addr(), dr.Addr()))
	if got := tag(t, r.addr); got != "a" && got != "b" {
		t.Fatalf("before: %q", got)
	}
	aAddr := a.Addr()
	killed := time.Now()
	a.Close()
	b.Close()
	r.waitEvents(t, events.HostDown, 5*time.Second, "a", "b")
	took := time.Since(killed)
	const fall, interval, timeout = 2, 200 * time.Millisecond, 100 * time.Millisecond
	bound := fall*interval + timeout + interval
	t.Logf("failover: both primary hosts marked down %v after they died (bound %v)", took.Round(time.Millisecond), bound)
	if took > bound {
		t.Errorf("failover took %v, want <= %v", took, bound)
	}
	fails := r.s.Listeners()[0].Stats().ConnectFails
	for i := 0; i < 5; i++ {
		if got := tag(t, r.addr); got != "dr" {
			t.Fatalf("after failover: %q, want dr", got)
		}
	}
	if n := r.s.Listeners()[0].Stats().ConnectFails; n != fails {
		t.Errorf("%d connects to down hosts after they were marked down", n-fails)
	}
	back, err := testbackend.StartAt(aAddr, testbackend.Tagger("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	revived := time.Now()
	r.waitEvent(t, events.HostUp, "a", 5*time.Second)
	t.Logf("fail-back: host a up %v after it came back (rise 2 × 200ms)", time.Since(revived).Round(time.Millisecond))
	if got := tag(t, r.addr); got != "a" {
		t.Fatalf("after fail-back: %q, want a", got)
	}
}

// TestCloseOnDown: existing connections to a host that goes down keep
// flowing by default, and are closed with close_on_down = true.
func TestCloseOnDown(t *testing.T) {
	for _, closeOnDown := range []bool{false, true} {
		t.Run(fmt.Sprint("close_on_down=", closeOnDown), func(t *testing.T) {
			// a echoes after its tag; its health port is a separate listener
			// we can kill without touching the live connection.
			a := testbackend.New(t, testbackend.Tagger("a"))
			dr := testbackend.New(t, testbackend.Tagger("dr"))
			cfg := fmt.Sprintf(twoPools, closeOnDown, a.Addr(), testbackend.Refuser(t), dr.Addr())
			r := startServer(t, cfg)
			// b refuses: wait until it is down so every connection goes to a.
			r.waitEvent(t, events.HostDown, "b", 5*time.Second)
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if line, _ := br.ReadString('\n'); line != "a\n" {
				t.Fatalf("reached %q", line)
			}
			a.Stop() // new connections refused: the check fails; the live one stays
			r.waitEvent(t, events.HostDown, "a", 5*time.Second)
			c.Write([]byte("ping"))
			if closeOnDown {
				// The event is published as the connections are told to
				// close, so the ping may still be echoed first: what
				// counts is that the connection ends (EOF or a reset)
				// well before the test's deadline.
				_, err := io.ReadAll(br)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("connection survived its host going down with close_on_down")
				}
				return
			}
			buf := make([]byte, 4)
			_, err = io.ReadFull(br, buf)
			if err != nil || string(buf) != "ping" {
				t.Fatalf("connection broken by its host going down: %v", err)
			}
		})
	}
}

// TestPassive: with no active check, max_fails refused connects mark a host
// down (it is then skipped: no more connects to it), and after fail_timeout
// it is tried again.
func TestPassive(t *testing.T) {
	good := testbackend.New(t, testbackend.Tagger("good"))
	refuser := testbackend.Refuser(t)
	r := startServer(t, fmt.Sprintf(`
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"

[upstream.u]
tries = 2
max_fails = 2
fail_timeout = "1s"

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "bad" }, { address = %q, id = "good" } ]
`, refuser, good.Addr()))
	for i := 0; i < 4; i++ {
		if got := tag(t, r.addr); got != "good" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	down := r.waitEvent(t, events.HostDown, "bad", time.Second)
	if !strings.Contains(down.Reason, "2 failed connects") {
		t.Errorf("reason %q", down.Reason)
	}
	fails := r.s.Listeners()[0].Stats().ConnectFails
	for i := 0; i < 4; i++ {
		tag(t, r.addr)
	}
	if n := r.s.Listeners()[0].Stats().ConnectFails; n != fails {
		t.Errorf("%d connects to a passively downed host", n-fails)
	}
	r.waitEvent(t, events.HostUp, "bad", 3*time.Second)
}

// udpEcho answers each datagram with tag + the datagram, until the test ends
// or stop is called.
func udpEcho(t *testing.T, tag string) (addr string, stop func()) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(tag+":"), buf[:n]...), from)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { pc.Close(); <-done }) }
	t.Cleanup(stop)
	return pc.LocalAddr().String(), stop
}

// TestUDPWithHealth: a UDP listener behind the server; the udp check marks a
// dead host down (ICMP port unreachable), and the client's next datagram
// goes to the other host.
func TestUDPWithHealth(t *testing.T) {
	a, stopA := udpEcho(t, "a")
	b, _ := udpEcho(t, "b")
	cfg, err := config.Parse("udp.toml", []byte(fmt.Sprintf(`
[[listener]]
name = "dns"
listen = "127.0.0.1:0"
protocol = "udp"
upstream = "u"

[upstream.u]
[upstream.u.health]
type = "udp"
send = "ping"
expect = "a:ping"
interval = "200ms"
timeout = "100ms"
fall = 2
jitter = "0s"

[[upstream.u.pool]]
name = "p"
priority = 0
hosts = [ { address = %q, id = "a" } ]

[[upstream.u.pool]]
name = "q"
priority = 10
hosts = [ { address = %q, id = "b" } ]
[upstream.u.pool.health]
type = "udp"
send = "ping"
expect = "b:ping"
interval = "200ms"
timeout = "100ms"
jitter = "0s"
`, a, b)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New("", cfg, logger())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	_, sub := s.Events().Subscribe(0, 100)
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r := &running{s: s, sub: sub}

	c, err := net.Dial("udp", s.UDPListeners()[0].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func(q string) string {
		c.Write([]byte(q))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}
	if got := ask("q1"); got != "a:q1" {
		t.Fatalf("first datagram: %q", got)
	}
	// The session is visible, and counted in the status.
	if ss := s.Sessions(); len(ss) != 1 || ss[0].Host != "a" || ss[0].Client != c.LocalAddr().String() || ss[0].DatagramsUp != 1 {
		t.Fatalf("sessions %+v", ss)
	}
	if st := s.Status(); len(st.Listeners) != 1 || st.Listeners[0].Counters["sessions_active"] != 1 || st.Listeners[0].Protocol != "udp" {
		t.Fatalf("listener status %+v", st.Listeners)
	}
	stopA()
	r.waitEvent(t, "host_down", "a", 5*time.Second)
	if got := ask("q2"); got != "b:q2" {
		t.Fatalf("after a went down: %q, want b:q2", got)
	}
}
