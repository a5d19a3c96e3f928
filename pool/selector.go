package pool

import (
	"fmt"
	"sync"
)

// Method names a host selection algorithm.
type Method string

// MethodRoundRobin is smooth weighted round robin. It is the default: an empty
// Method means round_robin.
const MethodRoundRobin Method = "round_robin"

// The other methods; see the package documentation for how each composes
// with health, weights, slow start and tries.
const (
	// MethodLeastConn picks the host with the fewest active connections
	// relative to its weight; ties are shared by smooth weighted round robin.
	MethodLeastConn Method = "least_conn"
	// MethodHash maps the key to a host with a weighted Maglev table, so a
	// client keeps its host and l4lb instances with the same hosts agree.
	MethodHash Method = "hash"
	// MethodRandom2 draws two hosts at random, in proportion to weight, and
	// picks the one with fewer active connections relative to weight.
	MethodRandom2 Method = "random2"
	// MethodFastest picks the host with the lowest connect time average
	// (see Host.ObserveConnect); hosts never measured are tried first.
	MethodFastest Method = "fastest"
)

// Selector picks one host among hosts. It skips hosts for which skip(h) is true
// (skip may be nil) and hosts that are not Usable, and returns nil when none can
// be chosen. key identifies the client for methods that hash it (see HashKey);
// others ignore it.
//
// A Selector may keep state per index of hosts, so one Selector value serves one
// hosts slice (NewPool gives each pool its own). Implementations must be safe
// for concurrent use and must not allocate per pick. skip is called with the
// selector's lock held: it must be cheap and must not call back into the pool.
type Selector interface {
	Pick(hosts []*Host, key uint64, skip func(*Host) bool) *Host
}

// eligiblePicker is implemented by this package's selectors so that the
// AllDownTryAll fallback reuses their balancing with a looser eligibility test
// than Usable: with tryAll set, down hosts are eligible too (see revivable).
type eligiblePicker interface {
	pickEligible(hosts []*Host, key uint64, skip func(*Host) bool, tryAll bool) *Host
}

// NewSelector returns a new selector for m. An empty m means round_robin.
func NewSelector(m Method) (Selector, error) {
	switch m {
	case "", MethodRoundRobin:
		return new(smoothWRR), nil
	case MethodLeastConn:
		return new(leastLoad), nil
	case MethodFastest:
		return &leastLoad{fastest: true}, nil
	case MethodRandom2:
		return new(random2), nil
	case MethodHash:
		return new(maglev), nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownMethod, m)
}

var (
	_ Selector       = (*smoothWRR)(nil)
	_ eligiblePicker = (*smoothWRR)(nil)
	_ Selector       = (*leastLoad)(nil)
	_ eligiblePicker = (*leastLoad)(nil)
	_ Selector       = (*random2)(nil)
	_ eligiblePicker = (*random2)(nil)
	_ Selector       = (*maglev)(nil)
	_ eligiblePicker = (*maglev)(nil)
)

// smoothWRR is nginx's smooth weighted round robin
// (ngx_http_upstream_get_peer): on each pick every eligible host's current
// weight grows by its weight, the host with the largest current weight wins,
// and the winner's current weight drops by the total. Over a cycle each host is
// chosen in proportion to its weight, interleaved rather than in bursts: 5,1,1
// gives a a b a c a a.
//
// Hosts not eligible for a pick are left out of that pick entirely (their
// current weight is neither raised nor counted in the total), so skipping a
// host for one connection does not disturb the others' rotation.
type smoothWRR struct {
	mu  sync.Mutex
	cur []int64 // current weight, by index into hosts
}

func (s *smoothWRR) Pick(hosts []*Host, _ uint64, skip func(*Host) bool) *Host {
	return s.pickEligible(hosts, 0, skip, false)
}

func (s *smoothWRR) pickEligible(hosts []*Host, _ uint64, skip func(*Host) bool, tryAll bool) *Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cur) != len(hosts) {
		// First pick, or a caller broke the one-slice rule: start afresh.
		s.cur = make([]int64, len(hosts))
	}
	best := -1
	var total, now int64
	for i, h := range hosts {
		// The state and weight are read once each, inline: this loop is the
		// hot path and an indirect call per host doubled its cost.
		st := State(h.state.Load())
		w := int64(h.weight.Load())
		if end := h.rampEnd.Load(); end != 0 {
			// Slow start: the clock is read once per pick, and only
			// while some host ramps.
			if now == 0 {
				now = monoNow()
			}
			w = h.rampWeight(w, end, now)
		}
		if w <= 0 || (st != StateUp && !(tryAll && st == StateDown)) {
			continue
		}
		if m := h.maxConns.Load(); m > 0 && h.active.Load() >= m {
			continue // full: skipped like a down host
		}
		if skip != nil && skip(h) {
			continue
		}
		s.cur[i] += w
		total += w
		if best < 0 || s.cur[i] > s.cur[best] {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	s.cur[best] -= total
	return hosts[best]
}
