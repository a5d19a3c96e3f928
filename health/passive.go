package health

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// Passive is passive health with nginx semantics: MaxFails failed connects
// within FailTimeout mark a host down for FailTimeout; then it is tried again
// (marked up), unless the target has an active check, which then decides
// when the host comes back. The proxy reports every connect through Failed
// or Succeeded. One timer, owned by Run, revives hosts: there is no
// goroutine per failure.
//
// The zero value is not usable: call NewPassive.
type Passive struct {
	sink Sink
	now  func() time.Time

	mu      sync.Mutex
	hosts   map[*pool.Host]*passiveHost
	running bool
	kick    chan struct{} // wakes Run when a revival is scheduled
}

type passiveHost struct {
	t         *Target
	n         int       // failures in the current window
	first     time.Time // start of the current window
	downUntil time.Time // when we marked it down, until when; zero if we did not
}

// NewPassive returns a Passive that reports to sink. It starts nothing.
func NewPassive(sink Sink) *Passive {
	return &Passive{sink: sink, now: time.Now, hosts: make(map[*pool.Host]*passiveHost), kick: make(chan struct{}, 1)}
}

// Set replaces the targets. Hosts still present keep their counts and
// revival times; a host listed by several targets is followed once, under
// the first. Targets with MaxFails 0 are left out.
func (p *Passive) Set(targets []*Target) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[*pool.Host]*passiveHost, len(targets))
	for _, t := range targets {
		if t == nil || t.Host == nil || t.MaxFails <= 0 || next[t.Host] != nil {
			continue
		}
		ph := p.hosts[t.Host]
		if ph == nil {
			ph = new(passiveHost)
		}
		ph.t = t
		next[t.Host] = ph
	}
	p.hosts = next
	p.wake()
}

func (p *Passive) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Failed records a failed connect to h. Callers use it instead of
// h.ConnectFailed, which it calls.
func (p *Passive) Failed(h *pool.Host, reason string) {
	now := p.now()
	h.ConnectFailed(reason, now)
	p.mu.Lock()
	ph := p.hosts[h]
	if ph == nil {
		p.mu.Unlock()
		return
	}
	ft := ph.t.failTimeout()
	if ph.n == 0 || now.Sub(ph.first) > ft {
		ph.n, ph.first = 0, now
	}
	ph.n++
	if ph.n < ph.t.MaxFails {
		p.mu.Unlock()
		return
	}
	t, n := ph.t, ph.n
	ph.n = 0
	p.mu.Unlock()

	plural := "s"
	if n == 1 {
		plural = ""
	}
	why := fmt.Sprintf("%d failed connect%s in %v: %s", n, plural, ft, reason)
	if !apply(p.sink, t, false, why) {
		return // already down
	}
	if t.activeCheck() {
		return // the active check brings it back
	}
	p.mu.Lock()
	if cur := p.hosts[h]; cur == ph {
		ph.downUntil = now.Add(ft)
		p.wake()
	}
	p.mu.Unlock()
}

// Succeeded records a successful connect to h: the fail count starts over,
// and a host that passive health took down (and that has no active check)
// is up again.
func (p *Passive) Succeeded(h *pool.Host) {
	// Hot path: called on every successful connect. A host with no failure
	// on record (the common case) costs one atomic load and no lock; a
	// host that passive health took down has a non-zero count (Failed
	// recorded it), so it still reaches the revive below.
	if h.FailCount() == 0 {
		return
	}
	p.mu.Lock()
	ph := p.hosts[h]
	if ph == nil || (ph.n == 0 && ph.downUntil.IsZero()) {
		p.mu.Unlock()
		if h.FailCount() != 0 {
			h.ResetFails()
		}
		return
	}
	ph.n = 0
	revive := !ph.downUntil.IsZero()
	ph.downUntil = time.Time{}
	t := ph.t
	p.mu.Unlock()
	h.ResetFails()
	if revive {
		apply(p.sink, t, true, "connect succeeded")
	}
}

// Run revives hosts whose fail_timeout has passed until ctx is done.
func (p *Passive) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("health: Passive.Run called twice")
	}
	p.running = true
	p.mu.Unlock()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if next := p.revive(); !next.IsZero() {
			timer.Reset(next.Sub(p.now()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-p.kick:
		}
	}
}

// revive marks up the hosts whose time has come and returns the earliest
// pending revival, or zero.
func (p *Passive) revive() (next time.Time) {
	now := p.now()
	var due []*Target
	p.mu.Lock()
	for h, ph := range p.hosts {
		if ph.downUntil.IsZero() {
			continue
		}
		if ph.downUntil.After(now) {
			if next.IsZero() || ph.downUntil.Before(next) {
				next = ph.downUntil
			}
			continue
		}
		ph.downUntil = time.Time{}
		ph.n = 0
		h.ResetFails()
		if !ph.t.activeCheck() {
			due = append(due, ph.t)
		}
	}
	p.mu.Unlock()
	for _, t := range due {
		apply(p.sink, t, true, fmt.Sprintf("fail_timeout %v passed; retrying", t.failTimeout()))
	}
	return next
}
