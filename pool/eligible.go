package pool

import (
	"cmp"
	"math/bits"
)

// eligibleWeight returns the weight h has in this pick, or 0 when h may not
// be picked: not up (with tryAll, not up or down), weight 0, or full. While a
// slow start ramp runs the weight is the ramped one. *now caches the clock
// for the whole pick: it is read once, and only when some host ramps. skip is
// left to the caller, which calls it last because it is the caller's code.
//
// smoothWRR inlines the same rules by hand; the other selectors share this.
func eligibleWeight(h *Host, tryAll bool, now *int64) int64 {
	st := State(h.state.Load())
	if st != StateUp && !(tryAll && st == StateDown) {
		return 0
	}
	w := int64(h.weight.Load())
	if w <= 0 {
		return 0
	}
	if end := h.rampEnd.Load(); end != 0 {
		if *now == 0 {
			*now = monoNow()
		}
		w = h.rampWeight(w, end, *now)
	}
	if m := h.maxConns.Load(); m > 0 && h.active.Load() >= m {
		return 0 // full: skipped like a down host
	}
	return w
}

// cmpRatio compares a1/w1 with a2/w2 for a1, a2 >= 0 and w1, w2 > 0 without
// dividing and without overflow (the products are 128-bit).
func cmpRatio(a1, w1, a2, w2 int64) int {
	if uint64(a1|a2|w1|w2)>>31 == 0 {
		// The common case, connection counts and weights below 2^31:
		// the products fit in 62 bits.
		return cmp.Compare(a1*w2, a2*w1)
	}
	h1, l1 := bits.Mul64(uint64(a1), uint64(w2))
	h2, l2 := bits.Mul64(uint64(a2), uint64(w1))
	switch {
	case h1 < h2 || h1 == h2 && l1 < l2:
		return -1
	case h1 == h2 && l1 == l2:
		return 0
	}
	return 1
}
