package server

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/udp"
	"github.com/l4lb/l4lb/splice"
)

// Server implements the control API over its live specs.
var _ control.API = (*Server)(nil)

// edit applies one op: on a copy of the specs (which validates), then to
// the store (the journal file, or the fleet's Consul key with
// check-and-set), then to the running pools. Any failure before the last
// step changes nothing. Its addresses are resolved first, with no lock
// held: a slow resolver delays this request only.
func (s *Server) edit(o op) error {
	r := s.resolveOps([]op{o})
	s.editMu.Lock()
	defer s.editMu.Unlock()
	if err := s.syncStore(); err != nil {
		return err
	}
	s.mu.Lock()
	next := s.specs.clone()
	if err := s.applyOp(next, o, r); err != nil {
		s.mu.Unlock()
		return err
	}
	journal := compact(append(append([]op(nil), s.journal...), o))
	s.mu.Unlock()
	// Under editMu only: nothing else changes the specs or the journal
	// meanwhile (discovery updates only refill consul pools, which apply
	// does again).
	if err := s.commit(journal); err != nil {
		return err
	}
	s.mu.Lock()
	s.journal = journal
	s.apply(next)
	s.mu.Unlock()
	s.committed(journal)
	return nil
}

// Upstreams returns every upstream, sorted by name.
func (s *Server) Upstreams() []control.Upstream {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.specs))
	for n := range s.specs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]control.Upstream, 0, len(names))
	for _, n := range names {
		out = append(out, s.specs[n].view(s.live[n]))
	}
	return out
}

// Upstream returns one upstream.
func (s *Server) Upstream(name string) (control.Upstream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, err := s.specs.upstream(name)
	if err != nil {
		return control.Upstream{}, err
	}
	return u.view(s.live[name]), nil
}

// PutUpstream creates or replaces an upstream whole.
func (s *Server) PutUpstream(u control.Upstream) (bool, error) {
	s.mu.Lock()
	_, exists := s.specs[u.Name]
	s.mu.Unlock()
	if err := s.edit(op{Op: opPutUpstream, Upstream: u.Name, Body: &u}); err != nil {
		return false, err
	}
	return !exists, nil
}

// DeleteUpstream removes an upstream no listener uses; its hosts drain.
func (s *Server) DeleteUpstream(name string) error {
	return s.edit(op{Op: opDeleteUpstream, Upstream: name})
}

// AddPool adds an empty pool.
func (s *Server) AddPool(upstream string, p control.PoolSpec) error {
	return s.edit(op{Op: opAddPool, Upstream: upstream, PoolSpec: &p})
}

// PatchPool changes a pool's priority or method.
func (s *Server) PatchPool(upstream, pl string, p control.PoolPatch) error {
	return s.edit(op{Op: opPatchPool, Upstream: upstream, Pool: pl, PoolSet: &p})
}

// DeletePool removes a pool; its hosts drain.
func (s *Server) DeletePool(upstream, pl string) error {
	return s.edit(op{Op: opDeletePool, Upstream: upstream, Pool: pl})
}

// AddHost adds a host to a pool.
func (s *Server) AddHost(upstream, pl string, h control.HostSpec) error {
	return s.edit(op{Op: opAddHost, Upstream: upstream, Pool: pl, HostSpec: &h})
}

// PatchHost changes a host's weight.
func (s *Server) PatchHost(upstream, pl, host string, p control.HostPatch) error {
	return s.edit(op{Op: opPatchHost, Upstream: upstream, Pool: pl, Host: host, Weight: p.Weight})
}

// RemoveHost takes a host out at once and drains its connections.
func (s *Server) RemoveHost(upstream, pl, host string) error {
	return s.edit(op{Op: opRemoveHost, Upstream: upstream, Pool: pl, Host: host})
}

// HostAction sets a host manual_down, up or draining.
func (s *Server) HostAction(upstream, pl, host string, a control.Action) error {
	return s.edit(op{Op: opHostAction, Upstream: upstream, Pool: pl, Host: host, Action: a})
}

// Status returns every host's live state and counters.
func (s *Server) Status() control.Status {
	s.mu.Lock()
	st := s.status()
	st.Discovery = s.discoveryStatus()
	st.Store = s.storeStatus(time.Now())
	lns := append([]*runningListener(nil), s.lns...)
	s.mu.Unlock()
	for _, rl := range lns {
		ls := control.ListenerStatus{Name: rl.lc.Name, Protocol: string(rl.lc.Protocol), Address: rl.eng.Addr().String()}
		if rl.tcp != nil {
			ls.Counters = tcpCounters(rl.tcp.Stats())
		} else {
			ls.Counters = udpCounters(rl.udp.Stats())
		}
		st.Listeners = append(st.Listeners, ls)
	}
	return st
}

func tcpCounters(st proxy.Stats) map[string]int64 {
	return map[string]int64{
		"accepted": int64(st.Accepted), "active": st.Active, "no_backend": int64(st.NoBackend),
		"accept_errors": int64(st.AcceptErrors), "connect_fails": int64(st.ConnectFails),
		"denied": int64(st.Denied), "over_listener_limit": int64(st.OverListenerLimit),
		"over_client_limit": int64(st.OverClientLimit), "untrusted_proxy": int64(st.Untrusted),
		"bad_proxy_header": int64(st.BadProxyHeader),
	}
}

func udpCounters(st udp.Stats) map[string]int64 {
	return map[string]int64{
		"sessions_active": st.SessionsActive, "sessions_created": int64(st.SessionsCreated),
		"sessions_expired": int64(st.SessionsExpired), "sessions_completed": int64(st.SessionsCompleted),
		"sessions_failed": int64(st.SessionsFailed), "dropped_full": int64(st.DroppedFull),
		"dropped_no_host": int64(st.DroppedNoHost), "dropped_error": int64(st.DroppedError),
		"host_errors": int64(st.HostErrors), "datagrams_up": int64(st.DatagramsUp),
		"datagrams_down": int64(st.DatagramsDown), "bytes_up": int64(st.BytesUp), "bytes_down": int64(st.BytesDown),
	}
}

// Sessions returns the live sessions of every UDP listener.
func (s *Server) Sessions() []control.Session {
	var out []control.Session
	for _, l := range s.UDPListeners() {
		for _, x := range l.Sessions() {
			out = append(out, control.Session(x))
		}
	}
	return out
}

// Subscribe streams the event feed.
func (s *Server) Subscribe(since uint64, buf int) ([]events.Event, *events.Sub) {
	return s.feed.Subscribe(since, buf)
}

// Reset drops every saved edit and goes back to the config file. In fleet
// mode it empties the shared journal (with check-and-set): every instance
// goes back to its config file.
func (s *Server) Reset() error {
	s.editMu.Lock()
	defer s.editMu.Unlock()
	if err := s.syncStore(); err != nil {
		return err
	}
	if err := s.commit(nil); err != nil {
		return err
	}
	s.mu.Lock()
	s.journal = nil
	s.apply(specsFromConfig(s.cfg))
	s.mu.Unlock()
	s.committed(nil)
	s.log.Info().Msg("live edits dropped: back to the config file")
	return nil
}

// Reload re-reads the config file. It is parsed and validated whole first;
// on any error nothing changes and the error lists every problem. On success
// the saved edits are replayed over it (those that no longer apply are
// dropped, with a warning), listeners that did not change keep their
// sockets, and established connections are never touched.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	err := s.reload()
	if err != nil {
		s.reloadFailures.Add(1)
		s.log.Error().Err(err).Msg("reload failed: keeping the running config")
		s.feed.Publish(events.Event{Kind: events.ConfigReloadFailed, Reason: err.Error()})
		return fmt.Errorf("%w: %w", control.ErrInvalid, err)
	}
	s.reloads.Add(1)
	s.log.Info().Str(logkey.Config, s.path).Msg("config reloaded")
	s.feed.Publish(events.Event{Kind: events.ConfigReloaded})
	return nil
}

func (s *Server) reload() error {
	s.editMu.Lock()
	defer s.editMu.Unlock()
	if s.path == "" {
		return errors.New("no config file to reload")
	}
	cfg, err := config.Load(s.path)
	if err != nil {
		return err
	}
	if err := checkHealthConfigs(cfg); err != nil {
		return err
	}
	if err := sameControl(s.cfg, cfg); err != nil {
		return err
	}
	if err := sameConsul(s.cfg, cfg); err != nil {
		return err
	}
	// The journal changes only under editMu, held here: it can be read
	// once, and its names resolved before s.mu is taken.
	s.mu.Lock()
	saved := s.journal
	s.mu.Unlock()
	r := s.resolveOps(saved)
	s.mu.Lock()
	old := s.cfg
	s.cfg = cfg // replay checks listeners of the new file
	next, journal := s.replay(specsFromConfig(cfg), saved, r)
	s.cfg = old
	s.mu.Unlock()

	// Listeners: bind the new ones before touching anything, so a port
	// already taken fails the reload with nothing changed.
	plan, err := s.planListeners(cfg, next)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cfg = cfg
	// The local journal drops the edits that no longer apply; the fleet's
	// is not this instance's alone to prune (another's file may differ),
	// so it stays whole: they are skipped here, on each replay.
	if s.fleet == nil {
		if len(journal) != len(s.journal) {
			if err := saveJournal(s.journalPath(), journal); err != nil {
				s.log.Error().Err(err).Msg("saving the journal without the edits that no longer apply")
			}
		}
		s.journal = journal
	}
	s.apply(next)
	s.mu.Unlock()
	s.switchListeners(plan)
	return nil
}

// replay applies the journal to sp, dropping (and logging) the ops that no
// longer apply. r holds the journal's addresses, resolved (resolveOps).
func (s *Server) replay(sp specs, journal []op, r resolved) (specs, []op) {
	var kept []op
	for _, o := range journal {
		try := sp.clone()
		if err := s.applyOp(try, o, r); err != nil {
			s.log.Warn().Err(err).Str("op", o.Op).Str(logkey.Upstream, o.Upstream).Str(logkey.Pool, o.Pool).
				Str(logkey.Host, o.Host).Msg("a saved edit no longer applies to the config file: dropped")
			continue
		}
		sp = try
		kept = append(kept, o)
	}
	return sp, kept
}

// sameControl refuses a reload that changes what a reload cannot: the
// whole [control] section (the socket, its mode, group and allowed uids,
// the state directory and the store), the metrics address, the logs and
// the engine's loop count, which are set up once at start (restart for
// those). Refusing is better than accepting the file and silently keeping
// the old values: a uid taken out of allow_uids would otherwise still be
// let in. The mode is compared as parsed ("600" is "0600"), allow_uids as
// a set, and the loop count as resolved (0 is the default count).
func sameControl(a, b *config.Config) error {
	var changed []string
	for _, c := range []struct {
		key  string
		a, b any
	}{
		{"control.socket", a.Control.Socket, b.Control.Socket},
		{"control.state_dir", a.Control.StateDir, b.Control.StateDir},
		{"control.mode", a.Control.FileMode, b.Control.FileMode},
		{"control.group", a.Control.Group, b.Control.Group},
		{"control.allow_uids", uidSet(a.Control.AllowUIDs), uidSet(b.Control.AllowUIDs)},
		{"control.store", a.Control.Store, b.Control.Store},
		{"control.kv_prefix", a.Control.KVPrefix, b.Control.KVPrefix},
		{"metrics.listen", a.Metrics.Listen, b.Metrics.Listen},
		{"log.level", a.Log.Level, b.Log.Level},
		{"log.format", a.Log.Format, b.Log.Format},
		{"log.access", a.Log.Access, b.Log.Access},
		{"engine.loops", splice.ResolveLoops(a.Engine.Loops), splice.ResolveLoops(b.Engine.Loops)},
	} {
		if c.a != c.b {
			changed = append(changed, c.key)
		}
	}
	if len(changed) > 0 {
		return fmt.Errorf("%s cannot change on reload: restart l4lb to change them (nothing was changed)", strings.Join(changed, ", "))
	}
	return nil
}

// uidSet is a list of uids sorted and without repeats, as a comparable
// string: the order of allow_uids does not matter.
func uidSet(uids []int) string {
	u := slices.Clone(uids)
	slices.Sort(u)
	return fmt.Sprint(slices.Compact(u))
}
