package pool

import (
	"cmp"
	"sync"
)

// leastLoad picks the eligible host with the lowest load and shares ties by
// smooth weighted round robin, as nginx's least_conn does
// (ngx_http_upstream_get_least_conn_peer). It serves two methods:
//
//   - least_conn: the load is active connections divided by the effective
//     weight (compared as a1*w2 < a2*w1, in 128 bits, so no division and no
//     overflow). With short connections every host often has 0 active, and
//     the tie-break makes least_conn fall back to plain weighted round robin
//     rather than to the first host.
//   - fastest: the load is the host's connect time EWMA (ConnectEWMA). Speed
//     comes first: the weight does not scale the time, it only shares the
//     connections among hosts that are equally fast, that is within 1/8 of
//     the fastest (connect times jitter by more than that between two equally
//     near hosts, and an exact tie would almost never happen). A host never
//     measured counts as time 0, the fastest, so it is probed at once.
//
// Ties are remembered across picks in cur, so they are broken fairly (in
// proportion to weight, interleaved) rather than always to the same host.
type leastLoad struct {
	fastest bool

	mu   sync.Mutex
	cur  []int64 // smooth WRR current weight among ties, by host index
	w    []int64 // this pick: effective weight, 0 = not eligible
	load []int64 // this pick: active connections, or connect EWMA in ns
}

func (s *leastLoad) Pick(hosts []*Host, key uint64, skip func(*Host) bool) *Host {
	return s.pickEligible(hosts, key, skip, false)
}

func (s *leastLoad) pickEligible(hosts []*Host, _ uint64, skip func(*Host) bool, tryAll bool) *Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cur) != len(hosts) {
		// First pick, or a caller broke the one-slice rule: start afresh.
		s.cur = make([]int64, len(hosts))
		s.w = make([]int64, len(hosts))
		s.load = make([]int64, len(hosts))
	}
	// Pass 1: snapshot weights and loads (they move under us), find the
	// least, and count the hosts tied with it (least_conn: exact ties).
	best, ties := -1, 0
	var bestL, bestW, now int64
	for i, h := range hosts {
		w := eligibleWeight(h, tryAll, &now)
		if w > 0 && skip != nil && skip(h) {
			w = 0
		}
		s.w[i] = w
		if w == 0 {
			continue
		}
		var l int64
		if s.fastest {
			l = h.connectEWMA.Load()
		} else {
			l = max(h.active.Load(), 0)
		}
		s.load[i] = l
		c := -1
		if best >= 0 {
			if s.fastest {
				c = cmp.Compare(l, bestL)
			} else {
				c = cmpRatio(l, w, bestL, bestW)
			}
		}
		switch c {
		case -1:
			best, bestL, bestW, ties = i, l, w, 1
		case 0:
			ties++
		}
	}
	if best < 0 {
		return nil
	}
	if ties == 1 && !s.fastest {
		// nginx's shortcut: a lone least host wins outright; its current
		// weight would rise and fall by the same amount.
		return hosts[best]
	}
	// Pass 2: smooth WRR among the hosts tied with the least.
	pick := -1
	var total int64
	for i, w := range s.w {
		if w == 0 {
			continue
		}
		if s.fastest {
			// Within 1/8 of the fastest. EWMAs are nanoseconds, far
			// from overflowing when multiplied by 9.
			if s.load[i]*8 > bestL*9 {
				continue
			}
		} else if cmpRatio(s.load[i], w, bestL, bestW) != 0 {
			continue
		}
		s.cur[i] += w
		total += w
		if pick < 0 || s.cur[i] > s.cur[pick] {
			pick = i
		}
	}
	s.cur[pick] -= total
	return hosts[pick]
}
