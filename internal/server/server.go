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
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/health"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/fleet"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

// Server is one running l4lb.
type Server struct {
	log     zerolog.Logger
	path    string // the config file, for reload
	feed    *events.Feed
	checker *health.Checker
	passive *health.Passive
	disc    *discovery.Discovery // built always (cheap); follows what the specs ask for
	fleet   *fleet.Store         // the shared journal (store = "consul"); nil = the local file

	// resolveHost resolves a host's "name:port": config.ResolveHost, or in
	// tests a slow one, set before Run. Called without s.mu (resolve.go).
	resolveHost func(ctx context.Context, addr string) (network, dial string, err error)

	reloadMu       sync.Mutex // one reload at a time
	reloadFailures atomic.Uint64
	reloads        atomic.Uint64 // successful ones

	// editMu: one change of the journal at a time (an edit, a reset, a
	// reload, a journal from the fleet store). Taken before mu; held over
	// the fleet store's network writes, which mu is not.
	editMu sync.Mutex

	mu      sync.Mutex // guards everything below
	cfg     *config.Config
	specs   specs
	journal []op // the stored journal (fleet mode: whole, also the edits this file does not take)
	// Fleet mode: the ModifyIndex of the key the journal is a copy of,
	// whether it was read since start (edits need it), where the journal in
	// force comes from, a stored value that could not be read, and the
	// index of the last-known-good copy served at start.
	fleetIndex  uint64
	fleetRead   bool
	fleetSource string
	fleetErr    string
	lkgIndex    uint64
	live        map[string]*liveUpstream
	drains      map[*pool.Host]*drain
	drainKick   chan struct{}
	lns         []*runningListener
	runCtx      context.Context // set by Run; nil before
	stopping    bool
	errs        chan error             // Run's error channel, for listeners started by a reload
	found       map[string][]*hostSpec // discovered hosts by watch key
	inherit     Inheritor              // sockets from an upgrade, for Bind; nil = none

	access *zerolog.Logger // the access log; nil = the main log

	// view is what the health sink needs, published whenever it changes so
	// that the sink never takes s.mu.
	view atomic.Pointer[sinkView]
	wg   sync.WaitGroup // listener goroutines
}

type sinkView struct {
	closeOnDown map[string]bool // by upstream
	listeners   []*proxy.Listener
}

// publishView refreshes the sink's view. s.mu held.
func (s *Server) publishView() {
	v := &sinkView{closeOnDown: map[string]bool{}, listeners: s.listenersLocked()}
	for name, lu := range s.live {
		v.closeOnDown[name] = lu.spec.Cfg.CloseOnDown
	}
	s.view.Store(v)
}

// engine is what both listener kinds are to the server: a TCP listener
// (package proxy) or a UDP one (package udp).
type engine interface {
	Name() string
	Addr() net.Addr
	Run(ctx context.Context) error
	Close() error
}

var (
	_ engine = (*proxy.Listener)(nil)
	_ engine = (*udp.Listener)(nil)
)

type runningListener struct {
	eng    engine
	tcp    *proxy.Listener // one of tcp and udp is set
	udp    *udp.Listener
	lc     *config.Listener
	cancel context.CancelFunc
}

// New builds the server for cfg, read from path (kept for reload; "" means
// no reload), with the saved live edits replayed on top. It starts nothing
// and binds nothing.
func New(path string, cfg *config.Config, log zerolog.Logger) (*Server, error) {
	if err := checkHealthConfigs(cfg); err != nil {
		return nil, err
	}
	s := &Server{
		log: log, path: path, feed: events.New(1000), cfg: cfg,
		live: map[string]*liveUpstream{}, drains: map[*pool.Host]*drain{}, drainKick: make(chan struct{}, 1),
		found: map[string][]*hostSpec{}, resolveHost: config.ResolveHost,
	}
	s.checker = health.NewChecker(sink{s})
	s.passive = health.NewPassive(sink{s})
	disc, err := discovery.New(consulConfig(cfg), discoverySink{s}, log)
	if err != nil {
		return nil, err
	}
	s.disc = disc
	if fc := fleetConfig(cfg); fc != nil {
		if s.fleet, err = fleet.New(*fc, log); err != nil {
			return nil, err
		}
	}
	jf, err := loadJournal(s.journalPath())
	if err != nil {
		return nil, fmt.Errorf("saved edits: %w (move the file away to start from the config file alone)", err)
	}
	var journal []op
	if jf != nil {
		journal = jf.Ops
	}
	r := s.resolveOps(journal)
	s.mu.Lock()
	defer s.mu.Unlock()
	next, kept := s.replay(specsFromConfig(cfg), journal, r)
	if s.fleet != nil {
		// The copy is served until the fleet store answers (Run waits up
		// to startup_timeout for that); it is kept whole.
		s.journal, s.fleetSource = journal, sourceNone
		if jf != nil {
			s.fleetSource = sourceLKG
			if jf.Store != nil && jf.Store.Key == s.fleet.Key() {
				s.lkgIndex = jf.Store.Index
			}
		}
	} else {
		if len(kept) != len(journal) {
			if err := saveJournal(s.journalPath(), kept); err != nil {
				return nil, err
			}
		}
		s.journal = kept
	}
	if len(kept) > 0 {
		log.Info().Int(logkey.Count, len(kept)).Str("file", s.journalPath()).Msg("live edits restored")
	}
	s.apply(next)
	return s, nil
}

// SetAccessLog sends per-connection lines to log (nil: the main log). Call
// it before Bind.
func (s *Server) SetAccessLog(log *zerolog.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.access = log
}

// checkHealthConfigs validates every pool's active check.
func checkHealthConfigs(cfg *config.Config) error {
	var errs []error
	for name, uc := range cfg.Upstreams {
		for _, pc := range uc.Pools {
			hc := uc.Health
			if pc.Health != nil {
				hc = pc.Health
			}
			if err := healthConfig(hc).Validate(); err != nil {
				errs = append(errs, fmt.Errorf("upstream %s pool %s: %w", name, pc.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Events returns the server's event feed.
func (s *Server) Events() *events.Feed { return s.feed }

// ReloadFailures counts failed reloads.
func (s *Server) ReloadFailures() uint64 { return s.reloadFailures.Load() }

// Reloads counts successful reloads.
func (s *Server) Reloads() uint64 { return s.reloads.Load() }

// Upstream returns the live upstream called name, or nil.
func (s *Server) LiveUpstream(name string) *pool.Upstream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.live[name]; u != nil {
		return u.up
	}
	return nil
}

// Listeners returns the listeners, in config order.
func (s *Server) Listeners() []*proxy.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listenersLocked()
}

// listenersLocked returns the TCP listeners. s.mu held.
func (s *Server) listenersLocked() []*proxy.Listener {
	var out []*proxy.Listener
	for _, rl := range s.lns {
		if rl.tcp != nil {
			out = append(out, rl.tcp)
		}
	}
	return out
}

// UDPListeners returns the UDP listeners, in config order.
func (s *Server) UDPListeners() []*udp.Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*udp.Listener
	for _, rl := range s.lns {
		if rl.udp != nil {
			out = append(out, rl.udp)
		}
	}
	return out
}

// Bind opens every listener's socket; on any failure it closes those it
// opened and returns the error.
func (s *Server) Bind() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Before any listener: the engine starts at the first connection.
	if err := splice.SetLoops(s.cfg.Engine.Loops); err != nil {
		return fmt.Errorf("engine.loops: %w", err)
	}
	var lns []*runningListener
	for _, lc := range s.cfg.Listeners {
		rl, err := s.listen(lc)
		if err != nil {
			for _, rl := range lns {
				rl.eng.Close()
			}
			return err
		}
		lns = append(lns, rl)
	}
	s.lns = lns
	s.publishView()
	return nil
}

// listen binds lc with the engine its protocol needs. s.mu held.
func (s *Server) listen(lc *config.Listener) (*runningListener, error) {
	if f := s.takeInherited(lc); f != nil {
		return s.listenInherited(lc, f)
	}
	rl := &runningListener{lc: lc}
	var err error
	if lc.Protocol == config.UDP {
		rl.udp, err = udp.Listen(lc.Name, lc.Address, s.udpSettings(lc), s.log)
		rl.eng = rl.udp
	} else {
		rl.tcp, err = proxy.Listen(lc.Name, lc.Network, lc.Address, s.settings(lc), s.log)
		rl.eng = rl.tcp
	}
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	s.log.Info().Str(logkey.Listener, lc.Name).Str(logkey.Address, rl.eng.Addr().String()).
		Str(logkey.Upstream, lc.Upstream).Msg("listening")
	return rl, nil
}

// setSettings publishes a listener's settings under the current config.
// s.mu held.
func (s *Server) setSettings(rl *runningListener) {
	if rl.udp != nil {
		rl.udp.Set(s.udpSettings(rl.lc))
	} else {
		rl.tcp.Set(s.settings(rl.lc))
	}
}

// udpSettings are a UDP listener's settings under the current config.
// s.mu held.
func (s *Server) udpSettings(lc *config.Listener) *udp.Settings {
	lu := s.live[lc.Upstream]
	passive := s.passive
	return &udp.Settings{
		Upstream:       lu.up,
		IdleTimeout:    time.Duration(lc.IdleTimeout),
		Responses:      lc.Responses,
		MaxSessions:    lc.MaxSessions,
		HashSourcePort: lu.spec.Cfg.HashKey == config.SourceIPPort,
		Access:         s.access,
		OnHostError:    func(_ *pool.Pool, h *pool.Host, reason string) { passive.Failed(h, reason) },
	}
}

// settings are a listener's settings under the current config. s.mu held.
func (s *Server) settings(lc *config.Listener) *proxy.Settings {
	lu := s.live[lc.Upstream]
	uc := lu.spec.Cfg
	set := &proxy.Settings{
		Upstream:       lu.up,
		Tries:          lu.spec.Tries,
		ConnectTimeout: time.Duration(lc.ConnectTimeout),
		IdleTimeout:    time.Duration(lc.IdleTimeout),
		FinTimeout:     time.Duration(lc.FinTimeout),
		DrainTimeout:   time.Duration(lc.DrainTimeout),
		Keepalive:      time.Duration(lc.TCPKeepalive),
		MaxConnections: lc.MaxConnections,
		MaxPerClient:   lc.MaxConnectionsPerClient,
		HashWithPort:   uc.HashKey == config.SourceIPPort,
		Allow:          lc.AllowNets,
		Deny:           lc.DenyNets,
		AcceptProxy:    lc.AcceptProxyProtocol,
		Trusted:        lc.TrustedNets,
		ProxyTimeout:   time.Duration(lc.ProxyProtocolTimeout),
		SourceIP:       lc.SourceIP,
		Passive:        s.passive,
		Access:         s.access,
	}
	switch lc.ProxyProtocol {
	case "v1":
		set.SendProxy = 1
	case "v2":
		set.SendProxy = 2
	}
	return set
}

// Run serves until ctx is done, then lets every listener drain, stops the
// health checks, and returns once every goroutine has ended.
//
// Pools that follow Consul get their first hosts before the listeners
// start accepting: Run waits for every watch's first answer, or for its
// last-known-good copy once Consul has not answered within
// startup_timeout. The sockets are bound already, so clients that connect
// meanwhile wait in the backlog; they are not refused.
func (s *Server) Run(ctx context.Context) error {
	errs := make(chan error, 64)
	dctx, stopDisc := context.WithCancel(context.WithoutCancel(ctx))
	discDone := make(chan error, 1)
	go runDiscovery(dctx, s.disc, discDone)
	fleetDone := make(chan struct{})
	if s.fleet != nil {
		go runFleet(dctx, s, fleetDone)
	} else {
		close(fleetDone)
	}
	// Serve the fleet's journal (or, if Consul does not answer within
	// startup_timeout, the last-known-good copy) from the first connection.
	if s.fleet != nil {
		select {
		case <-s.fleet.Ready():
		case <-ctx.Done():
		}
	}
	select {
	case <-s.disc.Ready():
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.runCtx = ctx
	for _, rl := range s.lns {
		s.startListener(rl, errs)
	}
	s.errs = errs
	s.mu.Unlock()
	// Health checks and drains run until the listeners are done draining:
	// a host must not be thought up for lack of checks while connections
	// finish.
	hctx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	var hwg sync.WaitGroup
	hwg.Add(3)
	go runHealth(hctx, s.checker.Run, &hwg, errs)
	go runHealth(hctx, s.passive.Run, &hwg, errs)
	go runDrains(s, hctx.Done(), &hwg)
	<-ctx.Done()
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.wg.Wait()
	// s.mu is not held here: a watcher may be waiting for it to apply an
	// update, and the discovery returns only once its watchers have.
	stopDisc()
	if err := <-discDone; err != nil {
		errs <- err
	}
	<-fleetDone
	stopHealth()
	hwg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// startListener runs rl under its own context, a child of Run's. s.mu held.
func (s *Server) startListener(rl *runningListener, errs chan<- error) {
	lctx, cancel := context.WithCancel(s.runCtx)
	rl.cancel = cancel
	s.wg.Add(1)
	go runListener(lctx, rl.eng, &s.wg, errs)
}

func runDrains(s *Server, done <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	s.drainLoop(done)
}

// listenerPlan is what a reload does to the listeners.
type listenerPlan struct {
	keep  map[*runningListener]*config.Listener // same address: new settings
	added []*runningListener                    // bound, not yet running
	gone  []*runningListener                    // to stop (they drain)
	order []*runningListener
}

// planListeners binds the listeners a new config adds; on failure it closes
// them again and nothing has changed.
func (s *Server) planListeners(cfg *config.Config, next specs) (*listenerPlan, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, errors.New("shutting down")
	}
	plan := &listenerPlan{keep: map[*runningListener]*config.Listener{}}
	byName := map[string]*runningListener{}
	for _, rl := range s.lns {
		byName[rl.lc.Name] = rl
	}
	used := map[*runningListener]bool{}
	for _, lc := range cfg.Listeners {
		if rl := byName[lc.Name]; rl != nil && rl.lc.Network == lc.Network && rl.lc.Address == lc.Address {
			plan.keep[rl] = lc
			used[rl] = true
			plan.order = append(plan.order, rl)
			continue
		}
		var rl *runningListener
		var err error
		if next[lc.Upstream] == nil {
			err = fmt.Errorf("listener %s: no upstream %q", lc.Name, lc.Upstream)
		} else {
			rl, err = s.bindOnly(lc)
		}
		if err != nil {
			for _, rl := range plan.added {
				rl.eng.Close()
			}
			return nil, err
		}
		plan.added = append(plan.added, rl)
		plan.order = append(plan.order, rl)
	}
	for _, rl := range s.lns {
		if !used[rl] {
			plan.gone = append(plan.gone, rl)
		}
	}
	return plan, nil
}

// switchListeners carries out a plan after the new config is in force.
func (s *Server) switchListeners(plan *listenerPlan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for rl, lc := range plan.keep {
		rl.lc = lc
		s.setSettings(rl)
	}
	for _, rl := range plan.added {
		s.setSettings(rl)
		s.log.Info().Str(logkey.Listener, rl.lc.Name).Str(logkey.Address, rl.eng.Addr().String()).
			Str(logkey.Upstream, rl.lc.Upstream).Msg("listening")
		if s.runCtx != nil {
			s.startListener(rl, s.errs)
		}
	}
	for _, rl := range plan.gone {
		s.log.Info().Str(logkey.Listener, rl.lc.Name).Msg("listener removed by reload: draining")
		if rl.cancel != nil {
			rl.cancel()
		} else {
			rl.eng.Close()
		}
	}
	s.lns = plan.order
	s.publishView()
}

// bindOnly binds a listener a reload adds, with placeholder settings: the
// real ones are set once the new config is in force (switchListeners).
func (s *Server) bindOnly(lc *config.Listener) (*runningListener, error) {
	rl := &runningListener{lc: lc}
	var err error
	if lc.Protocol == config.UDP {
		rl.udp, err = udp.Listen(lc.Name, lc.Address, &udp.Settings{}, s.log)
		rl.eng = rl.udp
	} else {
		rl.tcp, err = proxy.Listen(lc.Name, lc.Network, lc.Address, &proxy.Settings{}, s.log)
		rl.eng = rl.tcp
	}
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", lc.Name, err)
	}
	return rl, nil
}

func runListener(ctx context.Context, l engine, wg *sync.WaitGroup, errs chan<- error) {
	defer wg.Done()
	if err := l.Run(ctx); err != nil {
		select {
		case errs <- fmt.Errorf("listener %s: %w", l.Name(), err):
		default:
		}
	}
}

func runHealth(ctx context.Context, run func(context.Context) error, wg *sync.WaitGroup, errs chan<- error) {
	defer wg.Done()
	if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		select {
		case errs <- err:
		default:
		}
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
	// No s.mu here: the checker calls this from a probe loop, and an edit
	// holding s.mu may be waiting in Checker.Set for that loop to end.
	v := s.view.Load()
	if v == nil || !v.closeOnDown[t.Upstream] {
		return
	}
	lns := v.listeners
	n := 0
	for _, l := range lns {
		n += l.AbortHost(t.Host, "host down: "+reason)
	}
	if n > 0 {
		s.log.Info().Str(logkey.Upstream, t.Upstream).Str(logkey.Pool, t.Pool).Str(logkey.Host, t.Host.ID).
			Int(logkey.Count, n).Msg("close_on_down: closed the host's connections")
	}
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
