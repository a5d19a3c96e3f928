package server

import (
	"sort"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/health"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/pool"
)

// liveUpstream is an upstream as it runs: the pool.Upstream every listener
// of it points to (kept across edits and reloads, so a listener never has to
// be told), and the hosts by id (kept too, so state and counters survive).
type liveUpstream struct {
	up    *pool.Upstream
	spec  *upSpec
	hosts map[string]*pool.Host
	src   map[*pool.Host]control.Source
}

// drain is a host whose remaining connections will be closed at deadline:
// one an operator drains (still in its pool, admin state draining), or one
// that was removed (no longer in any pool).
type drain struct {
	upstream, pool string
	host           *pool.Host
	deadline       time.Time
	removed        bool
}

// apply makes the running pools look like next. It cannot fail: next was
// validated when it was built. Hosts that stay (same id and address) keep
// their state and counters; removed ones stop taking connections at once
// and drain. s.mu must be held.
func (s *Server) apply(next specs) {
	now := time.Now()
	s.fillConsul(next)
	for name, u := range next {
		lu := s.live[name]
		if lu == nil {
			allDown, _ := pool.ParseAllDown(string(u.Cfg.AllDown))
			lu = &liveUpstream{up: pool.NewUpstream(name, nil, allDown)}
			s.live[name] = lu
		}
		hosts := make(map[string]*pool.Host)
		src := make(map[*pool.Host]control.Source)
		var pools []*pool.Pool
		for _, ps := range u.Pools {
			var hs []*pool.Host
			for _, h := range ps.Hosts {
				lh := lu.hosts[h.ID]
				if lh == nil || lh.Network != h.Network || lh.Address != h.Dial {
					lh = pool.NewHost(h.ID, h.Network, h.Dial, h.Weight)
				}
				lh.SetWeight(h.Weight)
				lh.SetMaxConns(h.MaxConns)
				lh.SetSlowStart(time.Duration(u.Cfg.SlowStart))
				if cur := lh.State(); h.Admin != adminOf(cur) {
					if lh.SetAdmin(h.Admin, "operator") {
						s.publishAdmin(name, ps.Name, lh, h.Admin)
					}
				}
				if h.Admin == pool.StateDraining {
					s.startDrain(name, ps.Name, lh, false, now)
				} else {
					s.stopDrain(lh, false)
				}
				hosts[h.ID] = lh
				src[lh] = h.Source
				hs = append(hs, lh)
			}
			method := ps.Method
			if method == "" {
				method = u.Method
			}
			p, err := pool.NewPool(ps.Name, ps.Priority, method, hs)
			if err != nil {
				// Specs are validated when built; this is a bug.
				s.log.Error().Err(err).Str(logkey.Upstream, name).Str(logkey.Pool, ps.Name).Msg("cannot build pool")
				continue
			}
			pools = append(pools, p)
		}
		lu.up.SetPools(pools)
		for id, old := range lu.hosts {
			if hosts[id] != old {
				s.startDrain(name, poolOf(lu, old), old, true, now)
			}
		}
		lu.hosts, lu.src, lu.spec = hosts, src, u
	}
	for name, lu := range s.live {
		if next[name] == nil {
			for _, h := range lu.hosts {
				s.startDrain(name, poolOf(lu, h), h, true, now)
			}
			delete(s.live, name)
		}
	}
	s.specs = next
	s.disc.SetWatches(watches(next))
	s.publishView()
	targets := s.targets()
	if err := s.checker.Set(targets); err != nil {
		s.log.Error().Err(err).Msg("health checks")
	}
	s.passive.Set(targets)
	s.kickDrains()
}

// adminOf maps an effective state to the admin state that could cause it.
func adminOf(st pool.State) pool.State {
	if st == pool.StateManualDown || st == pool.StateDraining {
		return st
	}
	return pool.StateUp
}

func poolOf(lu *liveUpstream, h *pool.Host) string {
	for _, p := range lu.up.Pools() {
		for _, x := range p.Hosts {
			if x == h {
				return p.Name
			}
		}
	}
	return ""
}

func (s *Server) publishAdmin(up, pl string, h *pool.Host, st pool.State) {
	kind := events.HostUp
	switch st {
	case pool.StateManualDown:
		kind = events.HostManualDown
	case pool.StateDraining:
		kind = events.HostDraining
	}
	s.log.Info().Str(logkey.Upstream, up).Str(logkey.Pool, pl).Str(logkey.Host, h.ID).
		Str(logkey.Kind, kind).Msg("host state set by operator")
	s.feed.Publish(events.Event{Kind: kind, Upstream: up, Pool: pl, Host: h.ID, Reason: "operator"})
}

// targets lists every live host for the health checker.
func (s *Server) targets() []*health.Target {
	var out []*health.Target
	for name, lu := range s.live {
		u := lu.spec
		for _, ps := range u.Pools {
			hc := u.Cfg.Health
			if ps.Health != nil {
				hc = ps.Health
			}
			check := healthConfig(hc)
			for _, h := range ps.Hosts {
				out = append(out, &health.Target{
					Upstream: name, Pool: ps.Name, Host: lu.hosts[h.ID], Check: check,
					MaxFails: u.Cfg.MaxFails, FailTimeout: time.Duration(u.Cfg.FailTimeout),
				})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Upstream != b.Upstream {
			return a.Upstream < b.Upstream
		}
		if a.Pool != b.Pool {
			return a.Pool < b.Pool
		}
		return a.Host.ID < b.Host.ID
	})
	return out
}

// drainTimeout is how long a drained or removed host of upstream keeps its
// connections: the longest drain_timeout of the listeners that use it.
func (s *Server) drainTimeout(upstream string) time.Duration {
	d := time.Duration(-1)
	for _, l := range s.cfg.Listeners {
		if l.Upstream == upstream && time.Duration(l.DrainTimeout) > d {
			d = time.Duration(l.DrainTimeout)
		}
	}
	if d < 0 {
		d = 30 * time.Second
	}
	return d
}

func (s *Server) startDrain(up, pl string, h *pool.Host, removed bool, now time.Time) {
	if d, ok := s.drains[h]; ok {
		d.removed = d.removed || removed
		return
	}
	s.drains[h] = &drain{upstream: up, pool: pl, host: h, deadline: now.Add(s.drainTimeout(up)), removed: removed}
	if removed {
		s.log.Info().Str(logkey.Upstream, up).Str(logkey.Pool, pl).Str(logkey.Host, h.ID).
			Int64(logkey.Active, h.Stats().Active).Msg("host removed: draining its connections")
		s.feed.Publish(events.Event{Kind: events.HostRemoved, Upstream: up, Pool: pl, Host: h.ID})
	}
}

func (s *Server) stopDrain(h *pool.Host, removed bool) {
	if d, ok := s.drains[h]; ok && d.removed == removed {
		delete(s.drains, h)
	}
}

func (s *Server) kickDrains() {
	select {
	case s.drainKick <- struct{}{}:
	default:
	}
}

// drainLoop closes the connections of drained hosts at their deadlines:
// one timer for all of them, reset when the set changes.
func (s *Server) drainLoop(done <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		next := now.Add(time.Hour)
		for h, d := range s.drains {
			if d.removed && h.Stats().Active == 0 {
				delete(s.drains, h) // nothing left to wait for
				continue
			}
			if !d.deadline.After(now) {
				n := 0
				for _, l := range s.listenersLocked() {
					n += l.AbortHost(h, "drain timeout")
				}
				if n > 0 {
					s.log.Warn().Str(logkey.Upstream, d.upstream).Str(logkey.Pool, d.pool).Str(logkey.Host, h.ID).
						Int(logkey.Count, n).Msg("drain timeout: closed the host's remaining connections")
				}
				if d.removed {
					delete(s.drains, h)
				} else {
					d.deadline = now.Add(100 * 365 * 24 * time.Hour) // drained host: closed once
				}
				continue
			}
			if d.deadline.Before(next) {
				next = d.deadline
			}
		}
		// Removed hosts leave the status once idle: look again soon.
		for _, d := range s.drains {
			if d.removed && now.Add(time.Second).Before(next) {
				next = now.Add(time.Second)
			}
		}
		s.mu.Unlock()
		t.Reset(time.Until(next))
		select {
		case <-done:
			return
		case <-t.C:
		case <-s.drainKick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
	}
}

// status is GET /v1/status: every host, removed ones still draining last. s.mu held.
func (s *Server) status() control.Status {
	st := control.Status{Hosts: []control.HostStatus{}}
	names := make([]string, 0, len(s.live))
	for name := range s.live {
		names = append(names, name)
	}
	sort.Strings(names)
	seen := map[*pool.Host]bool{}
	for _, name := range names {
		lu := s.live[name]
		for _, p := range lu.up.Pools() {
			for _, h := range p.Hosts {
				seen[h] = true
				hs := control.HostStatus{Upstream: name, Pool: p.Name, Source: lu.src[h], HostStats: h.Stats()}
				if d := s.drains[h]; d != nil && d.deadline.Before(time.Now().Add(50*365*24*time.Hour)) {
					hs.DrainDeadline = d.deadline
				}
				st.Hosts = append(st.Hosts, hs)
			}
		}
	}
	// Removed hosts still draining.
	var gone []*drain
	for h, d := range s.drains {
		if !seen[h] && d.removed {
			gone = append(gone, d)
		}
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].host.ID < gone[j].host.ID })
	for _, d := range gone {
		hs := control.HostStatus{Upstream: d.upstream, Pool: d.pool, HostStats: d.host.Stats(), DrainDeadline: d.deadline}
		hs.State = pool.StateDraining
		hs.Reason = "removed"
		st.Hosts = append(st.Hosts, hs)
	}
	return st
}

// hostSpecFrom turns an API host into a spec, resolving its address.
func hostSpecFrom(h control.HostSpec, src control.Source, resolve func(string) (string, string, error)) (*hostSpec, error) {
	network, dial, err := resolve(h.Address)
	if err != nil {
		return nil, &control.FieldError{Field: "address", Msg: err.Error()}
	}
	id := h.ID
	if id == "" {
		id = h.Address
	}
	return &hostSpec{ID: id, Address: h.Address, Network: network, Dial: dial, Weight: h.Weight, Source: src, Admin: pool.StateUp}, nil
}
