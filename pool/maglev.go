package pool

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
)

// maglev is the hash method: a weighted Maglev lookup table (Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
// §3.4), the scheme Envoy and Katran use too.
//
// Why Maglev and not a ring: a pick is one table lookup whatever the number
// of hosts, the table holds each host's share of slots to within one slot
// (a ring needs hundreds of points per host, and a binary search per pick,
// to come near that), and weights are exact: a host of weight 3 fills three
// slots for every one of a weight 1 host. What Maglev gives up is perfectly
// minimal remapping: when a host leaves the set, a few keys of the other
// hosts move as well (under 1 % of all keys, see TestHashRemap). Removal is
// rare; a host going down, which is common, moves no other host's keys
// (below).
//
// The table is a pure function of the set of (host ID, weight) pairs: each
// host's preference list comes from an FNV-1a hash of its ID, hosts take
// their turns filling the table in ID order (not in the order of the pool),
// and nothing random or time-dependent goes in. Two l4lb processes with the
// same hosts build the same table, so behind ECMP they send a client to the
// same host. A host of weight 0 gets no slots, as if it were not listed.
//
// Health, limits, skip and slow start do not change the table: a host that
// may not be picked now is walked past to the next slot (then the next, up
// to maglevWalk slots), so its keys spread over the others in proportion
// to their slots while their own keys stay put, and come back when it does.
// A host in slow start accepts a fraction effective/full weight of its keys,
// chosen by the key, so the same keys return first and stay. Should the
// walk find nothing, the eligible host with the highest hash of (key, ID)
// (rendezvous hashing) is taken, which is deterministic too.
//
// The table is built on the first pick and rebuilt, under mu, when a
// weight changes (weightVersion tells, with one atomic load per pick); a
// pick otherwise takes no lock.
type maglev struct {
	mu  sync.Mutex // serialises rebuilds
	tab atomic.Pointer[maglevTable]
}

// maglevTable is immutable once published, but for version.
type maglevTable struct {
	version atomic.Uint64 // the weightVersion the weights were last checked at
	weights []int32       // the weights it was built from, by host index
	ids     []uint64      // FNV-1a hash of each host's ID, by host index
	slots   []uint32      // host index by slot; the length is a prime
}

const (
	// maglevMinSize is the smallest table, a prime. Envoy's default too:
	// 256 KiB, and each host's share is exact to 1/65537.
	maglevMinSize = 65537
	// maglevSlotsPerHost keeps the table at least this many times the
	// number of hosts, which the paper finds keeps the disruption of a
	// removal close to the minimum.
	maglevSlotsPerHost = 100
	// maglevWalk bounds the walk past hosts that may not be picked. A walk
	// misses every eligible host only when they hold few slots; then the
	// rendezvous fallback decides.
	maglevWalk = 64
	emptySlot  = ^uint32(0)
)

func (s *maglev) Pick(hosts []*Host, key uint64, skip func(*Host) bool) *Host {
	return s.pickEligible(hosts, key, skip, false)
}

func (s *maglev) pickEligible(hosts []*Host, key uint64, skip func(*Host) bool, tryAll bool) *Host {
	t := s.tab.Load()
	if t == nil || len(t.weights) != len(hosts) || t.version.Load() != weightVersion.Load() {
		t = s.refresh(hosts)
	}
	m := uint64(len(t.slots))
	if m == 0 {
		return nil // no host with a weight
	}
	k := mix64(key)
	var now int64
	slot := k % m
	for range min(m, maglevWalk) {
		i := t.slots[slot]
		h := hosts[i]
		if e := eligibleWeight(h, tryAll, &now); e > 0 && (skip == nil || !skip(h)) {
			// Slow start: the key is in the ramping host's share or
			// walks on. The share grows, and keys once in stay in.
			if w := int64(h.weight.Load()); e >= w || int64(mix64(k^t.ids[i])%uint64(w)) < e {
				return h
			}
		}
		if slot++; slot == m {
			slot = 0
		}
	}
	// Rendezvous over whatever is eligible, ramp or not.
	best, score := -1, uint64(0)
	for i, h := range hosts {
		if eligibleWeight(h, tryAll, &now) == 0 || (skip != nil && skip(h)) {
			continue
		}
		if sc := mix64(k ^ t.ids[i]); best < 0 || sc > score {
			best, score = i, sc
		}
	}
	if best < 0 {
		return nil
	}
	return hosts[best]
}

// refresh returns a table current for hosts' weights, building one if
// they changed.
func (s *maglev) refresh(hosts []*Host) *maglevTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Read the version first: a weight changed after this read is caught
	// by the next pick.
	v := weightVersion.Load()
	if t := s.tab.Load(); t != nil && len(t.weights) == len(hosts) {
		if t.version.Load() == v {
			return t // another pick refreshed it
		}
		same := true
		for i, h := range hosts {
			if h.weight.Load() != t.weights[i] {
				same = false
				break
			}
		}
		if same {
			// Some other host in the process changed weight.
			t.version.Store(v)
			return t
		}
	}
	t := buildMaglev(hosts)
	t.version.Store(v)
	s.tab.Store(t)
	return t
}

// buildMaglev fills a table for hosts' current weights. It depends only on
// the (ID, weight) pairs, not on the order of hosts.
func buildMaglev(hosts []*Host) *maglevTable {
	t := &maglevTable{
		weights: make([]int32, len(hosts)),
		ids:     make([]uint64, len(hosts)),
	}
	var order []int // hosts with a weight, by ID
	for i, h := range hosts {
		t.weights[i] = h.weight.Load()
		t.ids[i] = fnv1a(h.ID)
		if t.weights[i] > 0 {
			order = append(order, i)
		}
	}
	if len(order) == 0 {
		return t
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(hosts[a].ID, hosts[b].ID) })

	m := uint64(maglevSize(len(order)))
	t.slots = make([]uint32, m)
	for i := range t.slots {
		t.slots[i] = emptySlot
	}
	// Each host walks its own permutation of the slots: offset, then
	// steps of skip (m is prime, so any skip in [1, m) visits every slot).
	type turn struct {
		host      uint32
		w         int64
		pos, skip uint64
		count     int64 // slots filled
	}
	turns := make([]turn, len(order))
	for p, i := range order {
		id := t.ids[i]
		turns[p] = turn{
			host: uint32(i),
			w:    int64(t.weights[i]),
			pos:  mix64(id) % m,
			skip: mix64(id^0x9e3779b97f4a7c15)%(m-1) + 1,
		}
	}
	// Turns go to the host furthest behind its weighted share, the one with
	// the least (count+1)/weight, ties to the lower ID: with equal weights
	// that is the paper's round robin. A binary heap of turn positions.
	before := func(a, b int) bool {
		c := cmpRatio(turns[a].count+1, turns[a].w, turns[b].count+1, turns[b].w)
		return c < 0 || c == 0 && a < b
	}
	heap := make([]int, len(turns))
	for p := range heap {
		heap[p] = p
	}
	for p := len(heap)/2 - 1; p >= 0; p-- {
		siftDown(heap, p, before)
	}
	for range m {
		tn := &turns[heap[0]]
		for t.slots[tn.pos] != emptySlot {
			tn.pos += tn.skip
			if tn.pos >= m {
				tn.pos -= m
			}
		}
		t.slots[tn.pos] = tn.host
		tn.count++
		siftDown(heap, 0, before)
	}
	return t
}

func siftDown(heap []int, p int, before func(a, b int) bool) {
	for {
		c := 2*p + 1
		if c >= len(heap) {
			return
		}
		if c+1 < len(heap) && before(heap[c+1], heap[c]) {
			c++
		}
		if !before(heap[c], heap[p]) {
			return
		}
		heap[p], heap[c] = heap[c], heap[p]
		p = c
	}
}

// maglevSize returns the table size for n hosts: a prime, at least
// maglevMinSize and maglevSlotsPerHost*n.
func maglevSize(n int) int {
	m := max(maglevMinSize, maglevSlotsPerHost*n)
	for !isPrime(m) {
		m++
	}
	return m
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// fnv1a is FNV-1a 64 of s, as HashKey computes it.
func fnv1a(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// mix64 is the splitmix64 finaliser: it spreads every input bit over the
// output, so a weak key (sequential, or with a poor low half) still lands on
// a uniform slot.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
