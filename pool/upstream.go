package pool

import (
	"cmp"
	"slices"
	"sync/atomic"
)

// Upstream is a named, ordered set of pools. The pool list is an immutable
// snapshot published through an atomic pointer: Pick never locks it, and edits
// build a new slice and call SetPools (copy on write).
type Upstream struct {
	Name string

	allDown AllDown
	pools   atomic.Pointer[[]*Pool]
}

// NewUpstream returns an upstream over pools (see SetPools).
func NewUpstream(name string, pools []*Pool, allDown AllDown) *Upstream {
	u := &Upstream{Name: name, allDown: allDown}
	u.SetPools(pools)
	return u
}

// AllDown returns the policy for when no host is usable.
func (u *Upstream) AllDown() AllDown { return u.allDown }

// Pools returns the current snapshot, sorted by Priority ascending. It is shared:
// do not modify it.
func (u *Upstream) Pools() []*Pool { return *u.pools.Load() }

// SetPools publishes a copy of pools, stably sorted by Priority (pools of equal
// priority keep their order). Picks already running finish on the old snapshot.
func (u *Upstream) SetPools(pools []*Pool) {
	ps := slices.Clone(pools)
	ps = slices.DeleteFunc(ps, func(p *Pool) bool { return p == nil })
	slices.SortStableFunc(ps, func(a, b *Pool) int { return cmp.Compare(a.Priority, b.Priority) })
	u.pools.Store(&ps)
}

// Pick returns the first pool, in priority order, that has a usable host not
// skipped, and that host. When every usable host is skipped it returns
// (nil, nil): the caller has tried them all.
//
// With AllDownTryAll, when no pool has any usable host at all, it picks in the
// same order among hosts that are down, honouring skip and never choosing
// weight 0, manual_down or draining hosts.
func (u *Upstream) Pick(key uint64, skip func(*Host) bool) (*Pool, *Host) {
	pools := *u.pools.Load()
	for _, p := range pools {
		if h := p.Pick(key, skip); h != nil {
			return p, h
		}
	}
	if u.allDown != AllDownTryAll {
		return nil, nil
	}
	for _, p := range pools {
		if p.Usable() {
			return nil, nil // usable hosts exist; they were all skipped
		}
	}
	for _, p := range pools {
		if h := p.pickAny(key, skip); h != nil {
			return p, h
		}
	}
	return nil, nil
}

// FindHost returns the first host with this id in the current snapshot, and
// its pool, or (nil, nil).
func (u *Upstream) FindHost(id string) (*Pool, *Host) {
	for _, p := range *u.pools.Load() {
		for _, h := range p.Hosts {
			if h.ID == id {
				return p, h
			}
		}
	}
	return nil, nil
}
