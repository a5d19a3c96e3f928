package pool

import "sync"

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
	// Pass 1: snapshot weights and loads (they move under us), find the least.
	best := -1
	var now int64
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
		if best < 0 || s.less(i, best) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	// Pass 2: smooth WRR among the hosts tied with the least.
	pick := -1
	var total int64
	for i, w := range s.w {
		if w == 0 || !s.tied(i, best) {
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

// less reports whether host i is less loaded than host j in this pick.
func (s *leastLoad) less(i, j int) bool {
	if s.fastest {
		return s.load[i] < s.load[j]
	}
	return cmpRatio(s.load[i], s.w[i], s.load[j], s.w[j]) < 0
}

// tied reports whether host i counts as tied with the least loaded, best.
func (s *leastLoad) tied(i, best int) bool {
	if s.fastest {
		// Within 1/8 of the fastest. EWMAs are nanoseconds, far from
		// overflowing when multiplied by 9.
		return s.load[i]*8 <= s.load[best]*9
	}
	return cmpRatio(s.load[i], s.w[i], s.load[best], s.w[best]) == 0
}
