package pool

import (
	"fmt"
	"sync/atomic"
)

// Pool is a named group of hosts with a priority (lower numbers are used
// first) and a selection method. A Pool is immutable once built: to change its
// hosts, build a new Pool (reusing the *Host values) and publish it with
// Upstream.SetPools.
type Pool struct {
	Name     string
	Priority int
	Method   Method
	Hosts    []*Host // do not mutate after the pool is published

	sel  Selector
	next atomic.Uint32 // rotation for the try-all fallback of foreign selectors
}

// NewPool builds a pool over a copy of hosts. An empty method means
// round_robin. Hosts must be non-nil with unique IDs.
func NewPool(name string, priority int, method Method, hosts []*Host) (*Pool, error) {
	if method == "" {
		method = MethodRoundRobin
	}
	sel, err := NewSelector(method)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", name, err)
	}
	seen := make(map[string]bool, len(hosts))
	for i, h := range hosts {
		if h == nil {
			return nil, fmt.Errorf("%w %q: host %d is nil", ErrBadPool, name, i)
		}
		if seen[h.ID] {
			return nil, fmt.Errorf("%w %q: duplicate host id %q", ErrBadPool, name, h.ID)
		}
		seen[h.ID] = true
	}
	return &Pool{
		Name:     name,
		Priority: priority,
		Method:   method,
		Hosts:    append([]*Host(nil), hosts...),
		sel:      sel,
	}, nil
}

// Pick returns a usable host not skipped, or nil.
func (p *Pool) Pick(key uint64, skip func(*Host) bool) *Host {
	return p.sel.Pick(p.Hosts, key, skip)
}

// Usable reports whether at least one host is usable.
func (p *Pool) Usable() bool {
	for _, h := range p.Hosts {
		if h.Usable() {
			return true
		}
	}
	return false
}

// pickAny is Pick for the AllDownTryAll fallback: health is ignored, but skip,
// weight 0 and operator states are honoured.
func (p *Pool) pickAny(key uint64, skip func(*Host) bool) *Host {
	if ep, ok := p.sel.(eligiblePicker); ok {
		return ep.pickEligible(p.Hosts, key, skip, true)
	}
	// A selector from outside this package: plain rotation.
	n := len(p.Hosts)
	if n == 0 {
		return nil
	}
	start := int(p.next.Add(1) % uint32(n))
	for i := range n {
		h := p.Hosts[(start+i)%n]
		if revivable(h) && (skip == nil || !skip(h)) {
			return h
		}
	}
	return nil
}
