package health

import (
	"context"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// runPassive starts p.Run and returns a stop function that waits for it.
func runPassive(t *testing.T, p *Passive) func() {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestPassive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		p := NewPassive(rec)
		h := pool.NewHost("h", "tcp", "10.0.0.1:1", 1)
		p.Set([]*Target{{Upstream: "u", Pool: "p", Host: h, MaxFails: 3, FailTimeout: 10 * time.Second}})
		defer runPassive(t, p)()

		// Two fails, then the window passes: the count starts over.
		p.Failed(h, "connection refused")
		p.Failed(h, "connection refused")
		time.Sleep(11 * time.Second)
		p.Failed(h, "connection refused")
		p.Failed(h, "connection refused")
		if h.State() != pool.StateUp {
			t.Fatalf("2+2 fails in separate windows: %v", h.State())
		}
		// A success resets the count too.
		p.Succeeded(h)
		p.Failed(h, "connection refused")
		p.Failed(h, "connection refused")
		if h.State() != pool.StateUp || h.FailCount() != 2 {
			t.Fatalf("after a success and 2 fails: %v, fail count %d", h.State(), h.FailCount())
		}
		p.Failed(h, "connection refused")
		if h.State() != pool.StateDown {
			t.Fatalf("3 fails in the window: %v", h.State())
		}
		time.Sleep(10*time.Second - time.Millisecond)
		synctest.Wait()
		if h.State() != pool.StateDown {
			t.Fatal("revived before fail_timeout")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if h.State() != pool.StateUp {
			t.Fatal("not revived after fail_timeout")
		}
		ev := rec.get()
		want := []string{"3 failed connects in 10s: connection refused", "fail_timeout 10s passed; retrying"}
		if len(ev) != 2 || ev[0].reason != want[0] || ev[1].reason != want[1] || ev[0].up || !ev[1].up {
			t.Errorf("events %+v, want %q", ev, want)
		}
	})
}

// TestPassiveWithActiveCheck: passive health takes the host down, and the
// active check, not fail_timeout, brings it back after rise successes.
func TestPassiveWithActiveCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		h := pool.NewHost("h", "tcp", "10.0.0.1:1", 1)
		tg := &Target{Upstream: "u", Pool: "p", Host: h, MaxFails: 1, FailTimeout: time.Second,
			Check: Config{Type: TypeTCP, Interval: 10 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}}
		p := NewPassive(rec)
		p.Set([]*Target{tg})
		c := NewChecker(rec)
		c.Set([]*Target{tg})
		c.loops[targetKey{"u", "p", h}].prober = &script{} // always ok
		defer runPassive(t, p)()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		defer func() { cancel(); <-done }()

		time.Sleep(time.Second) // first probe passed at 0
		p.Failed(h, "connection refused")
		if h.State() != pool.StateDown {
			t.Fatalf("after max_fails: %v", h.State())
		}
		time.Sleep(5 * time.Second) // fail_timeout passes: still down
		synctest.Wait()
		if h.State() != pool.StateDown {
			t.Fatalf("fail_timeout revived a host with an active check")
		}
		time.Sleep(15 * time.Second) // probes at 10s and 20s: rise 2
		synctest.Wait()
		if h.State() != pool.StateUp {
			t.Fatalf("active check did not bring it back: %v", h.State())
		}
		if ev := rec.get(); len(ev) != 2 || ev[1].reason != "2 checks passed" {
			t.Errorf("events %+v", ev)
		}
	})
}

// TestPassiveRealSockets: a host refusing connections is skipped after
// max_fails and tried again after fail_timeout, with real dials through a
// real pool.
func TestPassiveRealSockets(t *testing.T) {
	good := silentServer(t)
	bad := pool.NewHost("bad", "tcp", closedPort(t), 1)
	ok := pool.NewHost("ok", "tcp", good, 1)
	pl, err := pool.NewPool("p", 0, "", []*pool.Host{bad, ok})
	if err != nil {
		t.Fatal(err)
	}
	u := pool.NewUpstream("u", []*pool.Pool{pl}, pool.AllDownReject)
	const ft = 300 * time.Millisecond
	p := NewPassive(&recorder{})
	p.Set([]*Target{{Upstream: "u", Pool: "p", Host: bad, MaxFails: 2, FailTimeout: ft},
		{Upstream: "u", Pool: "p", Host: ok, MaxFails: 2, FailTimeout: ft}})
	defer runPassive(t, p)()

	// connect is the proxy's loop: pick, dial, report.
	connect := func() string {
		_, h := u.Pick(0, nil)
		c, err := net.DialTimeout("tcp", h.Address, time.Second)
		if err != nil {
			p.Failed(h, "connection refused")
			return h.ID
		}
		c.Close()
		p.Succeeded(h)
		return h.ID
	}
	picks := func(n int) (badPicks int) {
		for range n {
			if connect() == "bad" {
				badPicks++
			}
		}
		return badPicks
	}
	if n := picks(10); n != 2 {
		t.Fatalf("bad picked %d times, want 2 (max_fails) before it is skipped", n)
	}
	if n := picks(10); n != 0 {
		t.Fatalf("bad picked %d times while down", n)
	}
	deadline := time.Now().Add(2 * time.Second)
	for bad.State() != pool.StateUp && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := picks(10); n != 2 {
		t.Fatalf("after fail_timeout bad picked %d times, want 2 (retried, then down again)", n)
	}
}
