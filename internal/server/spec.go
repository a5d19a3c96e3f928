package server

import (
	"fmt"
	"sort"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/l4lb/l4lb/pool"
)

// The live model is a set of specs: what each upstream should look like,
// built from the config file and then from every saved edit (the journal)
// replayed on top. Applying specs to the running pools is separate (live.go),
// so an edit is: copy the specs, change the copy (which validates), save the
// journal, then apply. A failure at any step before the apply changes
// nothing.

// upSpec is one upstream as it should be.
type upSpec struct {
	Name   string
	Cfg    *config.Upstream // the file's settings (health, max_fails, ...); defaults for API-made upstreams
	Method pool.Method
	Tries  int
	Source control.Source
	Pools  []*poolSpec
}

type poolSpec struct {
	Name     string
	Priority int
	Method   pool.Method // "" = the upstream's
	Health   *config.Health
	Source   control.Source
	Hosts    []*hostSpec
	// Consul is the service the pool follows; nil = its hosts are its own.
	// Its Hosts are then the discovered set (Server.fillConsul).
	Consul *discovery.Watch
}

type hostSpec struct {
	ID       string
	Address  string // as given: "10.0.0.1:6379", "name:port", "unix:/x.sock"
	Network  string // resolved
	Dial     string
	Weight   int
	MaxConns int
	Source   control.Source
	Admin    pool.State // StateUp (none), StateManualDown or StateDraining
}

type specs map[string]*upSpec

// specsFromConfig builds the specs the config file alone describes.
func specsFromConfig(cfg *config.Config) specs {
	out := make(specs, len(cfg.Upstreams))
	for name, uc := range cfg.Upstreams {
		u := &upSpec{Name: name, Cfg: uc, Method: pool.Method(uc.Method), Tries: uc.Tries, Source: control.SourceConfig}
		for _, pc := range uc.Pools {
			p := &poolSpec{Name: pc.Name, Priority: pc.Priority, Method: pool.Method(pc.Method), Health: pc.Health, Source: control.SourceConfig}
			if pc.Consul != nil {
				w := watchOf(pc.Consul)
				p.Consul = &w
			}
			for _, hc := range pc.Hosts {
				p.Hosts = append(p.Hosts, &hostSpec{
					ID: hc.ID, Address: hc.Address, Network: hc.Network, Dial: hc.Dial,
					Weight: hc.W(), MaxConns: hc.MaxConnections, Source: control.SourceConfig, Admin: pool.StateUp,
				})
			}
			u.Pools = append(u.Pools, p)
		}
		out[name] = u
	}
	return out
}

// watchOf is the discovery watch of a pool's consul table.
func watchOf(c *config.ConsulService) discovery.Watch {
	return discovery.Watch{Service: c.Service, Tags: c.AllTags(), Datacenter: c.Datacenter, PassingOnly: c.PassingOnly, Near: c.Near}
}

// clone returns a deep copy: edits change the copy only.
func (s specs) clone() specs {
	out := make(specs, len(s))
	for name, u := range s {
		cu := *u
		cu.Pools = make([]*poolSpec, len(u.Pools))
		for i, p := range u.Pools {
			cp := *p
			cp.Hosts = make([]*hostSpec, len(p.Hosts))
			for j, h := range p.Hosts {
				ch := *h
				cp.Hosts[j] = &ch
			}
			cu.Pools[i] = &cp
		}
		out[name] = &cu
	}
	return out
}

func (s specs) upstream(name string) (*upSpec, error) {
	u := s[name]
	if u == nil {
		return nil, fmt.Errorf("upstream %q: %w", name, control.ErrNotFound)
	}
	return u, nil
}

func (u *upSpec) pool(name string) (*poolSpec, error) {
	for _, p := range u.Pools {
		if p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("pool %q of upstream %q: %w", name, u.Name, control.ErrNotFound)
}

func (p *poolSpec) host(id string) (*hostSpec, int, error) {
	for i, h := range p.Hosts {
		if h.ID == id {
			return h, i, nil
		}
	}
	return nil, -1, fmt.Errorf("host %q in pool %q: %w", id, p.Name, control.ErrNotFound)
}

// hostIDTaken reports whether id is used anywhere in the upstream: host ids
// are unique per upstream, as in the config file.
func (u *upSpec) hostIDTaken(id string) bool {
	for _, p := range u.Pools {
		for _, h := range p.Hosts {
			if h.ID == id {
				return true
			}
		}
	}
	return false
}

// defaultUpstreamConfig is the file-level settings of an upstream made
// through the API: the config file's defaults, no active check.
func defaultUpstreamConfig(name string) *config.Upstream {
	return &config.Upstream{
		Name: name, Method: config.RoundRobin, HashKey: config.SourceIP, Tries: 3, MaxFails: 1,
		FailTimeout: config.Duration(10 * time.Second), AllDown: config.Reject,
	}
}

// view renders a spec as the control API shows it, with live states.
func (u *upSpec) view(live *liveUpstream) control.Upstream {
	out := control.Upstream{Name: u.Name, Method: u.Method, Tries: u.Tries, Pools: []control.Pool{}}
	for _, p := range sortedPools(u.Pools) {
		cp := control.Pool{Name: p.Name, Priority: p.Priority, Method: p.Method, Hosts: []control.Host{}}
		for _, h := range p.Hosts {
			st := h.Admin
			if live != nil {
				if lh := live.hosts[h.ID]; lh != nil {
					st = lh.State()
				}
			}
			cp.Hosts = append(cp.Hosts, control.Host{ID: h.ID, Address: h.Address, Weight: h.Weight, Source: h.Source, State: st})
		}
		out.Pools = append(out.Pools, cp)
	}
	return out
}

// sortedPools returns pools by priority, ties in insertion order.
func sortedPools(ps []*poolSpec) []*poolSpec {
	out := append([]*poolSpec(nil), ps...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Priority < out[j].Priority })
	return out
}
