package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// Target is one host under watch, in one pool of one upstream.
type Target struct {
	Upstream, Pool string
	Host           *pool.Host
	Check          Config // active check; Type "" or none = no active check

	// Passive health (see Passive). MaxFails 0 turns it off.
	MaxFails    int
	FailTimeout time.Duration // 0 = 10s
}

func (t *Target) activeCheck() bool { return t.Check.Type != "" && t.Check.Type != TypeNone }

func (t *Target) failTimeout() time.Duration {
	if t.FailTimeout <= 0 {
		return 10 * time.Second
	}
	return t.FailTimeout
}

// Sink hears about health transitions, once per change, never per probe. The
// binary implements it: log at info, publish an events.Event. It is called
// after the host's health has been set, from a probe loop or from Passive, so
// it must not block.
type Sink interface {
	HealthChanged(t *Target, up bool, reason string)
}

// apply is the one place where a health verdict reaches the host: Host.SetHealth
// decides, atomically, whether anything changed, and only then is the sink
// told. Checker and Passive both come through here, so when they race, one
// of them reports the change and the other sees nothing to do.
func apply(sink Sink, t *Target, up bool, reason string) bool {
	if !t.Host.SetHealth(up, reason) {
		return false
	}
	if sink != nil {
		sink.HealthChanged(t, up, reason)
	}
	return true
}

// Checker runs the active checks: one loop per target, each with one timer
// and one probe at a time. The zero value is not usable: call NewChecker.
type Checker struct {
	sink Sink

	mu      sync.Mutex
	ctx     context.Context // Run's, while it runs
	loops   map[targetKey]*loop
	wg      sync.WaitGroup
	running bool
}

type targetKey struct {
	upstream, pool string
	host           *pool.Host
}

// loop is one target's probe loop.
type loop struct {
	t      *Target
	cfg    Config // with defaults
	prober Prober
	addr   Addr
	cancel context.CancelFunc // nil until started
	done   chan struct{}
}

// NewChecker returns a checker that reports to sink. It starts nothing.
func NewChecker(sink Sink) *Checker {
	return &Checker{sink: sink, loops: make(map[targetKey]*loop)}
}

// Set replaces the set of targets. Loops of targets no longer present (or
// whose check changed) are stopped and waited for before Set returns; new
// ones start if Run is running; unchanged ones go on with their counters.
// Targets without an active check get no loop. A target whose check is
// invalid is left out and reported in the error; the others are applied.
func (c *Checker) Set(targets []*Target) error {
	var errs []error
	next := make(map[targetKey]*loop, len(targets))
	for _, t := range targets {
		if t == nil || t.Host == nil || !t.activeCheck() {
			continue
		}
		k := targetKey{t.Upstream, t.Pool, t.Host}
		p, err := NewProber(t.Check)
		var a Addr
		if err == nil {
			a, err = t.Check.CheckAddr(t.Host)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream %s pool %s host %s: %w", t.Upstream, t.Pool, t.Host.ID, err))
			continue
		}
		next[k] = &loop{t: t, cfg: t.Check.withDefaults(), prober: p, addr: a}
	}

	c.mu.Lock()
	var stopped []*loop
	for k, old := range c.loops {
		if nl, ok := next[k]; ok && reflect.DeepEqual(nl.cfg, old.cfg) {
			next[k] = old // unchanged: keep the loop and its counter
			continue
		}
		if old.cancel != nil {
			old.cancel()
			stopped = append(stopped, old)
		}
	}
	c.loops = next
	if c.ctx != nil {
		for _, l := range next {
			if l.cancel == nil {
				c.start(c.ctx, l)
			}
		}
	}
	c.mu.Unlock()
	for _, l := range stopped {
		<-l.done
	}
	return errors.Join(errs...)
}

// start launches l's loop. c.mu held.
func (c *Checker) start(ctx context.Context, l *loop) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	c.wg.Add(1)
	go c.probeLoop(ctx, l)
}

// Run runs the loops until ctx is done, then stops them and returns after
// they have all exited. It may be called once.
func (c *Checker) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return errors.New("health: Checker.Run called twice")
	}
	c.running = true
	c.ctx = ctx
	for _, l := range c.loops {
		c.start(ctx, l)
	}
	c.mu.Unlock()

	<-ctx.Done()
	c.mu.Lock()
	c.ctx = nil
	for _, l := range c.loops {
		if l.cancel != nil {
			l.cancel()
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// probeLoop probes l's target every interval (± jitter) until ctx is done.
// Probes run inline: there is never more than one per target, and none
// outlives the loop.
func (c *Checker) probeLoop(ctx context.Context, l *loop) {
	defer c.wg.Done()
	defer close(l.done)
	cnt := counter{rise: l.cfg.Rise, fall: l.cfg.Fall, up: l.t.Host.Healthy()}
	timer := time.NewTimer(jitter(0, l.cfg.Jitter))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		pctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
		start := time.Now()
		err := l.prober.Probe(pctx, l.addr)
		cancel()
		if ctx.Err() != nil {
			return // stopped mid-probe: not the host's fault
		}
		l.t.Host.ObserveCheck(time.Since(start)) // for metrics
		c.observe(l, &cnt, err)
		timer.Reset(jitter(l.cfg.Interval, l.cfg.Jitter))
	}
}

// observe feeds one probe result through the hysteresis.
func (c *Checker) observe(l *loop, cnt *counter, err error) {
	h := l.t.Host
	if err != nil {
		h.ConnectFailed(err.Error(), time.Now())
	} else if h.FailCount() != 0 {
		h.ResetFails()
	}
	cnt.sync(h.Healthy()) // passive health or a reload may have moved it
	changed, up := cnt.observe(err == nil)
	if !changed {
		return
	}
	reason := fmt.Sprintf("%d checks passed", cnt.rise)
	if !up {
		reason = err.Error() // the last failure says most
	}
	apply(c.sink, l.t, up, reason)
}

// jitter returns d plus a uniform random part of ±j (only +j for d == 0).
func jitter(d, j time.Duration) time.Duration {
	if j <= 0 {
		return d
	}
	if d == 0 {
		return rand.N(j)
	}
	return d - j + rand.N(2*j)
}
