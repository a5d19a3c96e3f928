// Package server is the running l4lb: it turns a validated config into live
// upstreams, listeners and health checks, owns their goroutines, and wires
// health transitions to logs, events and close_on_down.
//
// Start order: New (builds, starts nothing), Bind (opens every listening
// socket, or none), Run (serves until its context ends, then drains and
// returns after every goroutine has ended).
package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/l4lb/l4lb/health"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
)

// Server is one running l4lb.
type Server struct {
	log     zerolog.Logger
	feed    *events.Feed
	checker *health.Checker
	passive *health.Passive

	mu        sync.Mutex
	cfg       *config.Config
	upstreams map[string]*upstream
	listeners []*proxy.Listener
}

// upstream is a live upstream with the config it was built from.
type upstream struct {
	cfg *config.Upstream
	up  *pool.Upstream
}

// New builds the server for cfg. It starts nothing and binds nothing.
func New(cfg *config.Config, log zerolog.Logger) (*Server, error) {
	s := &Server{log: log, feed: events.New(1000)}
	s.checker = health.NewChecker(sink{s})
	s.passive = health.NewPassive(sink{s})
	ups, targets, err := buildUpstreams(cfg)
	if err != nil {
		return nil, err
	}
	s.cfg, s.upstreams = cfg, ups
	if err := s.checker.Set(targets); err != nil {
		return nil, err
	}
	s.passive.Set(targets)
	return s, nil
}

// Events returns the server's event feed.
func (s *Server) Events() *events.Feed { return s.feed }

// Upstream returns the live upstream called name, or nil.
func (s *Server) Upstream(name string) *pool.Upstream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.upstreams[name]; u != nil {
		return u.up
	}
	return nil
}

// Listeners returns the bound listeners.
func (s *Server) Listeners() []*proxy.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*proxy.Listener(nil), s.listeners...)
}

// Bind opens every listener's socket; on any failure it closes those it
// opened and returns the error.
func (s *Server) Bind() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lns []*proxy.Listener
	for _, lc := range s.cfg.Listeners {
		u := s.upstreams[lc.Upstream]
		l, err := proxy.Listen(lc.Name, lc.Network, lc.Address, s.settings(lc, u), s.log)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("listener %s: %w", lc.Name, err)
		}
		lns = append(lns, l)
		s.log.Info().Str(logkey.Listener, lc.Name).Str(logkey.Address, l.Addr().String()).
			Str(logkey.Upstream, lc.Upstream).Msg("listening")
	}
	s.listeners = lns
	return nil
}

func (s *Server) settings(lc *config.Listener, u *upstream) *proxy.Settings {
	return &proxy.Settings{
		Upstream:       u.up,
		Tries:          u.cfg.Tries,
		ConnectTimeout: time.Duration(lc.ConnectTimeout),
		IdleTimeout:    time.Duration(lc.IdleTimeout),
		FinTimeout:     time.Duration(lc.FinTimeout),
		DrainTimeout:   time.Duration(lc.DrainTimeout),
		Passive:        s.passive,
	}
}

// Run serves until ctx is done, then lets every listener drain, stops the
// health checks, and returns once every goroutine has ended.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(s.listeners)+2)
	for _, l := range s.Listeners() {
		wg.Add(1)
		go runListener(ctx, l, &wg, errs)
	}
	// Health checks run until the listeners are done draining: a host
	// must not be thought up for lack of checks while connections finish.
	hctx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	var hwg sync.WaitGroup
	hwg.Add(2)
	go runHealth(hctx, s.checker.Run, &hwg, errs)
	go runHealth(hctx, s.passive.Run, &hwg, errs)
	wg.Wait()
	stopHealth()
	hwg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func runListener(ctx context.Context, l *proxy.Listener, wg *sync.WaitGroup, errs chan<- error) {
	defer wg.Done()
	if err := l.Run(ctx); err != nil {
		errs <- fmt.Errorf("listener %s: %w", l.Name(), err)
	}
}

func runHealth(ctx context.Context, run func(context.Context) error, wg *sync.WaitGroup, errs chan<- error) {
	defer wg.Done()
	if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		errs <- err
	}
}

// sink receives health transitions: it logs them, publishes them on the
// feed, and closes the host's connections when the upstream asks for it.
type sink struct{ s *Server }

func (k sink) HealthChanged(t *health.Target, up bool, reason string) {
	s := k.s
	kind, msg, ev := events.HostUp, "host up", s.log.Info()
	if !up {
		kind, msg, ev = events.HostDown, "host down", s.log.Warn()
	}
	ev.Str(logkey.Upstream, t.Upstream).Str(logkey.Pool, t.Pool).Str(logkey.Host, t.Host.ID).
		Str(logkey.Reason, reason).Msg(msg)
	s.feed.Publish(events.Event{Kind: kind, Upstream: t.Upstream, Pool: t.Pool, Host: t.Host.ID, Reason: reason})
	if up {
		return
	}
	s.mu.Lock()
	u := s.upstreams[t.Upstream]
	closeOnDown := u != nil && u.cfg.CloseOnDown
	lns := s.listeners
	s.mu.Unlock()
	if !closeOnDown {
		return
	}
	n := 0
	for _, l := range lns {
		n += l.AbortHost(t.Host, "host down: "+reason)
	}
	if n > 0 {
		s.log.Info().Str(logkey.Upstream, t.Upstream).Str(logkey.Pool, t.Pool).Str(logkey.Host, t.Host.ID).
			Int(logkey.Count, n).Msg("close_on_down: closed the host's connections")
	}
}

// buildUpstreams turns the validated config into live upstreams and the
// health targets for their hosts.
func buildUpstreams(cfg *config.Config) (map[string]*upstream, []*health.Target, error) {
	ups := make(map[string]*upstream, len(cfg.Upstreams))
	var targets []*health.Target
	var errs []error
	for name, uc := range cfg.Upstreams {
		var pools []*pool.Pool
		for _, pc := range uc.Pools {
			check := healthConfig(uc.Health)
			if pc.Health != nil {
				check = healthConfig(pc.Health)
			}
			if err := check.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("upstream %s pool %s: %w", name, pc.Name, err))
			}
			hosts := make([]*pool.Host, 0, len(pc.Hosts))
			for _, hc := range pc.Hosts {
				h := pool.NewHost(hc.ID, hc.Network, hc.Dial, hc.W())
				h.SetSlowStart(time.Duration(uc.SlowStart))
				hosts = append(hosts, h)
				targets = append(targets, &health.Target{
					Upstream: name, Pool: pc.Name, Host: h, Check: check,
					MaxFails: uc.MaxFails, FailTimeout: time.Duration(uc.FailTimeout),
				})
			}
			method := pc.Method
			if method == "" {
				method = uc.Method
			}
			p, err := pool.NewPool(pc.Name, pc.Priority, pool.Method(method), hosts)
			if err != nil {
				errs = append(errs, fmt.Errorf("upstream %s pool %s: %w", name, pc.Name, err))
				continue
			}
			pools = append(pools, p)
		}
		allDown, err := pool.ParseAllDown(string(uc.AllDown))
		if err != nil {
			errs = append(errs, fmt.Errorf("upstream %s: %w", name, err))
		}
		ups[name] = &upstream{cfg: uc, up: pool.NewUpstream(name, pools, allDown)}
	}
	return ups, targets, errors.Join(errs...)
}

// healthConfig maps the TOML health table (nil: no active check) to the
// health package's plain config.
func healthConfig(h *config.Health) health.Config {
	if h == nil {
		return health.Config{Type: health.TypeNone}
	}
	return health.Config{
		Type:         string(h.Type),
		Interval:     time.Duration(h.Interval),
		Timeout:      time.Duration(h.Timeout),
		Jitter:       time.Duration(h.Jitter),
		Rise:         h.Rise,
		Fall:         h.Fall,
		CheckAddress: h.CheckAddress,
		Path:         h.Path,
		Method:       h.Method,
		Host:         h.Host,
		Headers:      h.Headers,
		FailStatus:   h.FailStatus,
		ExpectBody:   h.ExpectBody,
		TLS:          h.TLS,
		Send:         h.Send,
		Expect:       h.Expect,
		Password:     h.Password,
		Role:         h.Role,
	}
}
