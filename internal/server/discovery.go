package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/pool"
)

// Pools with a consul table take their hosts from the discovery: the
// watchers report each new set of instances (discoverySink.Update), the
// server keeps it by watch key (s.found) and applies it like an edit: the
// specs are copied, every consul pool gets the current set (fillConsul, in
// apply, so that a reload, a replayed journal or a reset all see it too),
// and the running pools are made to match. Hosts that stay keep their
// state and counters; removed ones drain.

// consulConfig maps the [consul] section to the discovery's config.
func consulConfig(cfg *config.Config) discovery.Config {
	c := cfg.Consul
	return discovery.Config{
		Address: c.Address, Scheme: c.Scheme, Token: c.Token, TokenFile: c.TokenFile, Datacenter: c.Datacenter,
		CAFile: c.TLSCAFile, CertFile: c.TLSCertFile, KeyFile: c.TLSKeyFile, SkipVerify: c.TLSSkipVerify,
		Wait: c.Wait.D(), BackoffMin: c.BackoffMin.D(), BackoffMax: c.BackoffMax.D(), StartupTimeout: c.StartupTimeout.D(),
		StateDir: cfg.Control.StateDir,
	}
}

// errConsulPool refuses a host edit in a pool that follows Consul.
func errConsulPool(p *poolSpec) error {
	return fmt.Errorf("pool %q takes its hosts from Consul (service %s): change the registration in Consul, or put the instance in maintenance there: %w",
		p.Name, p.Consul.Key(), control.ErrConflict)
}

// fillConsul gives every consul pool of sp the current discovered set.
// Host ids are unique per upstream: a discovered "address:port" that
// another pool of the upstream already uses becomes "pool/address:port".
// s.mu held.
func (s *Server) fillConsul(sp specs) {
	for _, u := range sp {
		taken := map[string]bool{}
		for _, p := range u.Pools {
			if p.Consul == nil {
				for _, h := range p.Hosts {
					taken[h.ID] = true
				}
			}
		}
		for _, p := range u.Pools {
			if p.Consul == nil {
				continue
			}
			p.Hosts = nil
			for _, h := range s.found[p.Consul.Key()] {
				ch := *h
				if taken[ch.ID] {
					ch.ID = p.Name + "/" + ch.ID
				}
				taken[ch.ID] = true
				p.Hosts = append(p.Hosts, &ch)
			}
		}
	}
}

// watches lists what sp follows. s.mu held.
func watches(sp specs) []discovery.Watch {
	var out []discovery.Watch
	for _, u := range sp {
		for _, p := range u.Pools {
			if p.Consul != nil {
				out = append(out, *p.Consul)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// consulPools lists "upstream/pool" names that follow the watch with key,
// sorted. s.mu held.
func (s *Server) consulPools(key string) [][2]string {
	var out [][2]string
	for name, u := range s.specs {
		for _, p := range u.Pools {
			if p.Consul != nil && p.Consul.Key() == key {
				out = append(out, [2]string{name, p.Name})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0]+"/"+out[i][1] < out[j][0]+"/"+out[j][1] })
	return out
}

// discoverySink is how the discovery reports into the server. Its calls
// come from watcher goroutines; they take s.mu, which Run never holds
// while it waits for the discovery to end.
type discoverySink struct{ s *Server }

var _ discovery.Sink = discoverySink{}

// Update applies a watch's new set of instances.
func (k discoverySink) Update(w discovery.Watch, in []discovery.Instance, src discovery.Source) {
	s := k.s
	// Names are resolved before s.mu is taken: DNS can be slow.
	hosts := s.hostsFrom(w, in)
	key := w.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.found[key] = hosts
	s.apply(s.specs.clone())
	for _, up := range s.consulPools(key) {
		s.log.Info().Str(logkey.Upstream, up[0]).Str(logkey.Pool, up[1]).Str("watch", key).Str("source", string(src)).
			Int(logkey.Count, len(hosts)).Msg("pool updated from consul")
		s.feed.Publish(events.Event{Kind: events.PoolUpdated, Upstream: up[0], Pool: up[1],
			Reason: fmt.Sprintf("%d hosts from %s", len(hosts), src)})
	}
}

// Error publishes the first failure of a watch for each of its pools.
func (k discoverySink) Error(w discovery.Watch, err error) {
	k.publish(w, events.DiscoveryError, err.Error())
}

// Recovered publishes the recovery of a watch for each of its pools.
func (k discoverySink) Recovered(w discovery.Watch) {
	k.publish(w, events.DiscoveryRecovered, "consul answers again")
}

func (k discoverySink) publish(w discovery.Watch, kind, reason string) {
	s := k.s
	s.mu.Lock()
	pools := s.consulPools(w.Key())
	s.mu.Unlock()
	for _, up := range pools {
		s.feed.Publish(events.Event{Kind: kind, Upstream: up[0], Pool: up[1], Reason: reason})
	}
}

// hostsFrom turns instances into host specs, resolving names; an instance
// whose name does not resolve is left out (and logged).
func (s *Server) hostsFrom(w discovery.Watch, in []discovery.Instance) []*hostSpec {
	out := make([]*hostSpec, 0, len(in))
	for _, x := range in {
		addr := x.HostPort()
		network, dial := "tcp", addr
		if net.ParseIP(x.Address) == nil {
			ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
			var err error
			network, dial, err = s.resolveHost(ctx, addr)
			cancel()
			if err != nil {
				s.log.Warn().Err(err).Str("watch", w.Key()).Str(logkey.Host, x.ID).Msg("discovered instance left out: its address does not resolve")
				continue
			}
		}
		out = append(out, &hostSpec{
			ID: x.ID, Address: addr, Network: network, Dial: dial, Weight: x.Weight,
			Source: control.SourceConsul, Admin: pool.StateUp,
		})
	}
	return out
}

// DiscoveryStatus is, per pool that follows Consul, where its hosts come
// from and how fresh they are.
func (s *Server) DiscoveryStatus() []control.DiscoveryStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discoveryStatus()
}

// discoveryStatus: s.mu held (the discovery's own lock is a leaf).
func (s *Server) discoveryStatus() []control.DiscoveryStatus {
	var out []control.DiscoveryStatus
	now := time.Now()
	for _, name := range sortedNames(s.specs) {
		for _, p := range sortedPools(s.specs[name].Pools) {
			if p.Consul == nil {
				continue
			}
			key := p.Consul.Key()
			ds := control.DiscoveryStatus{Upstream: name, Pool: p.Name, Watch: key, Source: string(discovery.SourceWaiting), Hosts: len(p.Hosts)}
			if st, ok := s.disc.Status(key); ok {
				ds.Source, ds.Index, ds.Updated = string(st.Source), st.Index, st.Updated
				ds.Failures, ds.Error, ds.EmptySince = st.Failures, st.LastError, st.EmptySince
				if !st.Updated.IsZero() {
					ds.Age = now.Sub(st.Updated).Round(time.Second).String()
				}
			}
			out = append(out, ds)
		}
	}
	return out
}

func sortedNames(sp specs) []string {
	out := make([]string, 0, len(sp))
	for n := range sp {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// sameConsul refuses a reload that changes the [consul] section: the
// client is built once (restart for that).
func sameConsul(a, b *config.Config) error {
	if a.Consul != b.Consul {
		return errors.New("the [consul] section cannot change on reload: restart l4lb to change it")
	}
	return nil
}

func runDiscovery(ctx context.Context, d *discovery.Discovery, done chan<- error) {
	done <- d.Run(ctx)
}
