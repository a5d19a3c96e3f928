package pool

import (
	"math/rand/v2"
	"sync"
)

// random2 is the power of two random choices (Mitzenmacher): draw two
// distinct eligible hosts at random, in proportion to their effective
// weights, and take the one with fewer active connections relative to its
// weight. It balances almost as well as least_conn while the counters it
// reads may be stale (several l4lb instances, or a burst of connects that
// have not opened yet), because it never sends every new connection to the
// same least loaded host. With no connections open it is weighted random.
//
// The random numbers come from math/rand/v2's global functions, a
// per-thread ChaCha8 source: no lock, no allocation.
type random2 struct {
	mu  sync.Mutex
	cum []int64 // this pick: running total of effective weights, by host index
}

func (s *random2) Pick(hosts []*Host, key uint64, skip func(*Host) bool) *Host {
	return s.pickEligible(hosts, key, skip, false)
}

func (s *random2) pickEligible(hosts []*Host, _ uint64, skip func(*Host) bool, tryAll bool) *Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cum) != len(hosts) {
		s.cum = make([]int64, len(hosts))
	}
	var total, now int64
	eligible, last := 0, -1
	for i, h := range hosts {
		w := eligibleWeight(h, tryAll, &now)
		if w > 0 && skip != nil && skip(h) {
			w = 0
		}
		if w > 0 {
			eligible++
			last = i
		}
		total += w // at most len(hosts) * MaxInt32: no overflow
		s.cum[i] = total
	}
	switch eligible {
	case 0:
		return nil
	case 1:
		return hosts[last]
	}
	// Host i owns [cum[i-1], cum[i]). The second draw leaves out the
	// first host's range, so the two are distinct.
	i := s.find(rand.Int64N(total))
	lo, hi := s.lo(i), s.cum[i]
	r := rand.Int64N(total - (hi - lo))
	if r >= lo {
		r += hi - lo
	}
	j := s.find(r)
	a, b := hosts[i], hosts[j]
	if cmpRatio(max(b.active.Load(), 0), s.cum[j]-s.lo(j), max(a.active.Load(), 0), hi-lo) < 0 {
		return b
	}
	return a
}

// lo returns where host i's range starts.
func (s *random2) lo(i int) int64 {
	if i == 0 {
		return 0
	}
	return s.cum[i-1]
}

// find returns the host whose range holds r: the first i with cum[i] > r.
func (s *random2) find(r int64) int {
	lo, hi := 0, len(s.cum)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s.cum[m] > r {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}
