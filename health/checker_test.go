package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// event is what a recorder heard.
type event struct {
	at     time.Time
	host   string
	up     bool
	reason string
}

// recorder is a Sink that keeps events.
type recorder struct {
	mu     sync.Mutex
	events []event
	c      chan event // optional: also sent here, if not nil (buffered)
}

func (r *recorder) HealthChanged(t *Target, up bool, reason string) {
	e := event{time.Now(), t.Host.ID, up, reason}
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	if r.c != nil {
		r.c <- e
	}
}

func (r *recorder) get() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events...)
}

// script is a Prober that plays results in order ('o' ok, 'x' fail), then
// keeps passing. It counts probes.
type script struct {
	mu    sync.Mutex
	plan  string
	n     int
	delay time.Duration // each probe takes this long (or until ctx ends)
}

func (s *script) Probe(ctx context.Context, _ Addr) error {
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return fmt.Errorf("timeout after %v", s.delay)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.n
	s.n++
	if i < len(s.plan) && s.plan[i] == 'x' {
		return errors.New("status 503")
	}
	return nil
}

func (s *script) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// runScripted runs one target on a scripted prober in a checker for d of
// fake time, and returns the events. Probes are at 0, 100ms, 200ms, ...
func runScripted(t *testing.T, plan string, h *pool.Host) []event {
	rec := &recorder{}
	sp := &script{plan: plan}
	c := NewChecker(rec)
	tg := &Target{Upstream: "u", Pool: "p", Host: h,
		Check: Config{Type: TypeTCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 3}}
	c.Set([]*Target{tg})
	c.loops[targetKey{"u", "p", h}].prober = sp // the script stands in for the network
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	// Just past the probe that plays the last result.
	time.Sleep(time.Duration(len(plan)-1)*100*time.Millisecond + time.Millisecond)
	synctest.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sp.count() != len(plan) {
		t.Fatalf("%d probes, want %d", sp.count(), len(plan))
	}
	return rec.get()
}

// TestCheckerHysteresis is the reliability notes' test 15 in fake time:
// rise=2, fall=3, interval 100ms. Transitions must match exactly, at the
// probe that completes them.
func TestCheckerHysteresis(t *testing.T) {
	for _, tc := range []struct {
		name, plan string
		want       []string // "down@200ms" ...
	}{
		{"alternating", "xoxoxoxoxoxo", nil},
		{"two fails then ok", "xxoxxo", nil},
		{"three fails", "xxx", []string{"down@200ms"}},
		{"two oks after down", "xxxoo", []string{"down@200ms", "up@400ms"}},
		{"flap while down", "oxxxoxoo", []string{"down@300ms", "up@700ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				h := pool.NewHost("h", "tcp", "10.0.0.1:1", 1)
				var got []string
				for _, e := range runScripted(t, tc.plan, h) {
					got = append(got, fmt.Sprintf("%s@%v", map[bool]string{true: "up", false: "down"}[e.up], e.at.Sub(start)))
				}
				if strings.Join(got, " ") != strings.Join(tc.want, " ") {
					t.Errorf("plan %s: transitions %v, want %v", tc.plan, got, tc.want)
				}
			})
		})
	}
}

// TestManualDownNotRevived: checks keep passing, the host stays manual_down;
// the health underneath is recorded, and a manual up reveals it.
func TestManualDownNotRevived(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := pool.NewHost("h", "tcp", "10.0.0.1:1", 1)
		h.SetHealth(false, "connection refused")
		h.SetAdmin(pool.StateManualDown, "maintenance")
		runScripted(t, "oooooo", h)
		if h.State() != pool.StateManualDown || !h.Healthy() {
			t.Fatalf("after passing checks: state %v healthy %v, want manual_down, healthy", h.State(), h.Healthy())
		}
		h.SetAdmin(pool.StateUp, "operator")
		if h.State() != pool.StateUp {
			t.Fatalf("after manual up: %v", h.State())
		}
	})
}

// TestCheckerSet: removed targets' loops stop (and Set waits for them, even
// mid-probe), new ones start, unchanged ones keep their counters.
func TestCheckerSet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		c := NewChecker(rec)
		cfg := Config{Type: TypeTCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 3}
		a := &Target{Upstream: "u", Pool: "p", Host: pool.NewHost("a", "tcp", "10.0.0.1:1", 1), Check: cfg}
		b := &Target{Upstream: "u", Pool: "p", Host: pool.NewHost("b", "tcp", "10.0.0.2:1", 1), Check: cfg}
		none := &Target{Upstream: "u", Pool: "p", Host: pool.NewHost("n", "tcp", "10.0.0.3:1", 1)}
		if err := c.Set([]*Target{a, b, none}); err != nil {
			t.Fatal(err)
		}
		if len(c.loops) != 2 {
			t.Fatalf("%d loops, want 2 (none has no loop)", len(c.loops))
		}
		sa := &script{plan: "xx"} // two fails: one more would take a down
		sb := &script{delay: 40 * time.Millisecond}
		c.loops[targetKey{"u", "p", a.Host}].prober = sa
		c.loops[targetKey{"u", "p", b.Host}].prober = sb

		t0 := time.Now()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		time.Sleep(150 * time.Millisecond) // a probed twice; b mid-probe (140ms-180ms)
		synctest.Wait()
		if sa.count() != 2 {
			t.Fatalf("a probed %d times", sa.count())
		}
		// b goes; a stays with an equal config (a new *Target value, as a reload builds).
		a2 := *a
		if err := c.Set([]*Target{&a2}); err != nil {
			t.Fatal(err)
		}
		nb := sb.count()
		sa.mu.Lock()
		sa.plan = "xxx" // the third probe fails
		sa.mu.Unlock()
		time.Sleep(time.Second)
		synctest.Wait()
		if sb.count() != nb {
			t.Errorf("b probed after removal: %d then %d", nb, sb.count())
		}
		// The third probe (at 200ms) is the third fail in a row: down
		// then, which it would not be had Set restarted a's counter. The
		// script then passes, and a comes back.
		if ev := rec.get(); len(ev) != 2 || ev[0].host != "a" || ev[0].up || ev[0].at.Sub(t0) != 200*time.Millisecond || !ev[1].up {
			t.Errorf("events %+v, want a down at 200ms (counter kept), then up", ev)
		}
		// A bad check is reported and left out; the rest applies.
		bad := &Target{Upstream: "u", Pool: "p", Host: b.Host, Check: Config{Type: "icmp"}}
		if err := c.Set([]*Target{&a2, bad}); err == nil || !strings.Contains(err.Error(), "icmp") {
			t.Errorf("Set with a bad check: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// TestCheckerEndToEnd runs real HTTP checks against an httptest server whose
// status flips on a schedule: rise=2, fall=3, interval 100ms. It also measures
// the transition latency, which should be about (fall-1)×interval after the
// first failing probe, so at most fall×interval after the flip.
func TestCheckerEndToEnd(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	h := pool.NewHost("web", "tcp", strings.TrimPrefix(srv.URL, "http://"), 1)
	rec := &recorder{c: make(chan event, 10)}
	c := NewChecker(rec)
	const interval = 100 * time.Millisecond
	c.Set([]*Target{{Upstream: "u", Pool: "p", Host: h,
		Check: Config{Type: TypeHTTP, Interval: interval, Timeout: 50 * time.Millisecond, Jitter: 10 * time.Millisecond, Rise: 2, Fall: 3}}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	time.Sleep(3 * interval) // several passing probes: no event
	flip := time.Now()
	status.Store(503)
	e := waitEvent(t, rec.c, 2*time.Second)
	down := e.at.Sub(flip)
	if e.up || e.reason != "status 503" || down > 4*interval || down < 2*interval-20*time.Millisecond {
		t.Errorf("down event %+v after %v, want status 503 within ~3 intervals", e, down)
	}
	if h.State() != pool.StateDown {
		t.Errorf("host state %v", h.State())
	}
	flip = time.Now()
	status.Store(200)
	e = waitEvent(t, rec.c, 2*time.Second)
	up := e.at.Sub(flip)
	if !e.up || up > 3*interval {
		t.Errorf("up event %+v after %v", e, up)
	}
	t.Logf("http rise=2 fall=3 interval=100ms: down %v after the flip, up %v after", down.Round(time.Millisecond), up.Round(time.Millisecond))
	select {
	case e := <-rec.c:
		t.Errorf("extra event %+v", e)
	case <-time.After(3 * interval):
	}
}

func waitEvent(t *testing.T, c <-chan event, d time.Duration) event {
	t.Helper()
	select {
	case e := <-c:
		return e
	case <-time.After(d):
		t.Fatal("no health event")
	}
	return event{}
}

// TestDetectionTime measures, for each prober against its real peer, the time
// from the peer failing to the host marked down, with interval 100ms, fall 2.
func TestDetectionTime(t *testing.T) {
	type peer struct {
		addr string
		kill func()
		cfg  Config
	}
	listen := func(t *testing.T, serve func(net.Conn)) peer {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				serve(c)
				c.Close()
			}
		}()
		t.Cleanup(func() { l.Close(); wg.Wait() })
		return peer{addr: l.Addr().String(), kill: func() { l.Close(); wg.Wait() }}
	}
	for _, tc := range []struct {
		typ  string
		peer func(t *testing.T) peer
	}{
		{TypeTCP, func(t *testing.T) peer { return listen(t, func(net.Conn) {}) }},
		{TypeSendExpect, func(t *testing.T) peer {
			p := listen(t, func(c net.Conn) {
				b := make([]byte, 16)
				c.Read(b)
				c.Write([]byte("OK\n"))
			})
			p.cfg = Config{Send: "HI\n", Expect: "OK"}
			return p
		}},
		{TypeHTTP, func(t *testing.T) peer {
			var fail atomic.Bool
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if fail.Load() {
					w.WriteHeader(503)
				}
			}))
			t.Cleanup(srv.Close)
			return peer{addr: strings.TrimPrefix(srv.URL, "http://"), kill: func() { fail.Store(true) }}
		}},
		{TypeRedis, func(t *testing.T) peer {
			addr, s := startRedis(t)
			return peer{addr: addr, kill: s.Stop}
		}},
		{TypeMySQL, func(t *testing.T) peer {
			addr, s := startMariaDB(t)
			return peer{addr: addr, kill: s.Stop}
		}},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			p := tc.peer(t)
			cfg := p.cfg
			cfg.Type, cfg.Interval, cfg.Timeout, cfg.Rise, cfg.Fall = tc.typ, 100*time.Millisecond, 80*time.Millisecond, 2, 2
			h := pool.NewHost(tc.typ, "tcp", p.addr, 1)
			rec := &recorder{c: make(chan event, 10)}
			c := NewChecker(rec)
			if err := c.Set([]*Target{{Upstream: "u", Pool: "p", Host: h, Check: cfg}}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error)
			go func() { done <- c.Run(ctx) }()
			defer func() { cancel(); <-done }()
			time.Sleep(250 * time.Millisecond)
			if h.State() != pool.StateUp {
				t.Fatalf("healthy peer: host %v (%s)", h.State(), h.Stats().LastFailReason)
			}
			start := time.Now()
			p.kill()
			e := waitEvent(t, rec.c, 3*time.Second)
			d := e.at.Sub(start)
			t.Logf("detection %s: %v (interval 100ms, fall 2): %s", tc.typ, d.Round(time.Millisecond), e.reason)
			if e.up || d > 350*time.Millisecond {
				t.Errorf("event %+v after %v, want down within ~fall×interval", e, d)
			}
		})
	}
}

// TestRemovalLeavesNothing removes 20 hosts whose real send_expect checks are
// in the middle of a probe (the peer accepts and never answers, so every
// probe holds its socket until timeout). Set must cancel those probes: once
// it returns, every probe socket is closed (the peer sees EOF on each) and
// the process is back to its fd and goroutine counts from before the checks.
func TestRemovalLeavesNothing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 64)
	closed := make(chan struct{}, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // accept, read until EOF, say so; never write
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
			wg.Add(1)
			go func() {
				defer wg.Done()
				var b [64]byte
				for {
					if _, err := c.Read(b[:]); err != nil {
						c.Close()
						closed <- struct{}{}
						return
					}
				}
			}()
		}
	}()
	defer func() { l.Close(); wg.Wait() }()

	const n = 20
	baseFDs := openFDs(t)
	baseG := runtime.NumGoroutine()
	c := NewChecker(&recorder{})
	cfg := Config{Type: TypeSendExpect, Send: "PING\r\n", Expect: "+PONG", Interval: 5 * time.Second, Timeout: 4 * time.Second, Rise: 1, Fall: 1}
	var targets []*Target
	for i := range n {
		h := pool.NewHost(fmt.Sprintf("h%d", i), "tcp", l.Addr().String(), 1)
		targets = append(targets, &Target{Upstream: "u", Pool: "p", Host: h, Check: cfg})
	}
	if err := c.Set(targets); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Every loop probes at once (the first probe is not delayed past the
	// jitter), and each probe now holds a connection: wait for all 20.
	timeout := time.After(3 * time.Second)
	for i := range n {
		select {
		case <-accepted:
		case <-timeout:
			t.Fatalf("%d of %d probes connected", i, n)
		}
	}
	t0 := time.Now()
	if err := c.Set(nil); err != nil {
		t.Fatal(err)
	}
	// Set waits for the removed loops; their probes must stop when
	// cancelled, not at their 4s timeout.
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Set(nil) took %v: the removed hosts' probes ran to their timeout", d)
	}
	// The probes were cancelled, not left to their 4s timeout: the peer
	// sees every socket closed well within it.
	timeout = time.After(2 * time.Second)
	for i := range n {
		select {
		case <-closed:
		case <-timeout:
			t.Fatalf("%d of %d probe sockets closed after the hosts were removed", i, n)
		}
	}
	if got := openFDs(t); got > baseFDs {
		t.Errorf("%d fds open after removal, %d before the checks", got, baseFDs)
	}
	// The server's per-connection goroutines end after sending on closed;
	// allow them a moment to return.
	// Run's own goroutine is still running: one more than before.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseG+1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > baseG+1 {
		t.Errorf("%d goroutines after removal, %d before the checks (+1 for Run)", g, baseG)
	}
}
