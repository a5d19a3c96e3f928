package discovery

import (
	"testing"
	"testing/synctest"
	"time"
)

// baseDelay is the un-jittered delay before retry n: lo doubled n-1 times,
// capped at hi. The tests check backoff against it.
func baseDelay(n int, lo, hi time.Duration) time.Duration {
	b := lo
	for i := 1; i < n && b < hi; i++ {
		b *= 2
	}
	return min(b, hi)
}

// TestBackoff checks the retry delay itself: it starts at the floor,
// doubles on every failure, stops at the cap (also for very long outages,
// with no overflow), and is spread over the upper half of each step rather
// than the same value for every instance.
func TestBackoff(t *testing.T) {
	for _, b := range []struct{ lo, hi time.Duration }{
		{time.Second, time.Minute},                      // the defaults
		{50 * time.Millisecond, 400 * time.Millisecond}, // the tests' settings
		{time.Second, time.Second},                      // no room to grow: always the floor
	} {
		const samples = 4000
		prevMax := time.Duration(0)
		for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 10, 20, 64, 1000} {
			base := baseDelay(n, b.lo, b.hi)
			lo, hi := max(base/2, b.lo), base
			low, high := time.Duration(1<<62), time.Duration(0)
			var lowerHalf int
			for range samples {
				d := backoff(n, b.lo, b.hi)
				if d < lo || d > hi {
					t.Fatalf("%s..%s: retry %d waited %s, want %s..%s", b.lo, b.hi, n, d, lo, hi)
				}
				low, high = min(low, d), max(high, d)
				if d < lo+(hi-lo)/2 {
					lowerHalf++
				}
			}
			if spread := hi - lo; spread == 0 {
				if low != hi || high != hi {
					t.Errorf("%s..%s: retry %d: %s..%s, want exactly %s", b.lo, b.hi, n, low, high, hi)
				}
			} else {
				// Jitter: the samples reach both ends of the range and fall
				// evenly on both halves (uniform: 50% ± 10%, ~12 sigma).
				if low > lo+spread/10 || high < hi-spread/10 {
					t.Errorf("%s..%s: retry %d: samples %s..%s do not cover %s..%s: no real jitter", b.lo, b.hi, n, low, high, lo, hi)
				}
				if f := float64(lowerHalf) / samples; f < 0.4 || f > 0.6 {
					t.Errorf("%s..%s: retry %d: %.0f%% of the samples in the lower half of %s..%s", b.lo, b.hi, n, 100*f, lo, hi)
				}
			}
			// Doubling: each step's longest delay is twice the last one's,
			// until the cap.
			if n > 1 && n <= 8 && prevMax > 0 && base < b.hi {
				if r := float64(high) / float64(prevMax); r < 1.8 || r > 2.2 {
					t.Errorf("%s..%s: retry %d: longest delay %s after %s: not doubling", b.lo, b.hi, n, high, prevMax)
				}
			}
			if n >= 10 && (high > b.hi || low < b.hi/2 && b.hi/2 >= b.lo) {
				t.Errorf("%s..%s: retry %d: %s..%s, want within the cap %s..%s", b.lo, b.hi, n, low, high, max(b.hi/2, b.lo), b.hi)
			}
			prevMax = high
		}
	}
}

// TestJitter: the rate limit's pause is d plus up to a quarter, spread.
func TestJitter(t *testing.T) {
	const d = time.Second
	low, high := 2*d, time.Duration(0)
	for range 4000 {
		j := jitter(d)
		if j < d || j > d+d/4 {
			t.Fatalf("jitter(%s) = %s", d, j)
		}
		low, high = min(low, j), max(high, j)
	}
	if low > d+d/40 || high < d+d/4-d/40 {
		t.Errorf("jitter(%s) spans %s..%s only", d, low, high)
	}
}

// outageMin is the fewest requests a watcher makes in d while every
// request fails at once, if every delay takes its longest (the un-jittered
// step) and each request costs slack on top. A retry that is not capped
// (or waits longer than its step) makes fewer.
func outageMin(d, lo, hi, slack time.Duration) int {
	n, spent := 1, time.Duration(0)
	for i := 1; ; i++ {
		spent += baseDelay(i, lo, hi) + slack
		if spent > d {
			return n
		}
		n++
	}
}

// TestBackoffOutageHour runs an hour of outage with the default bounds
// (1s..60s) on a fake clock: Consul refuses every connection. The number of
// requests in each minute is counted; the total must lie between what the
// shortest and the longest delays allow, and once the delay has reached
// its cap every minute sees one or two requests. A constant retry (60 a
// minute at 1s) fails the upper bound; an uncapped one (minutes with none)
// the lower.
func TestBackoffOutageHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{Address: closedPort(t)} // every duration at its default
		cfg.defaults()
		d, _ := start(t, cfg, redis)
		failures := func() int {
			st, _ := d.Status(redis.Key())
			return st.Failures
		}
		perMinute := make([]int, 60)
		last := 0
		for m := range perMinute {
			time.Sleep(time.Minute)
			synctest.Wait() // the request due at this instant has been made
			n := failures()
			perMinute[m], last = n-last, n
		}
		total := last
		hi, lo := outageBound(time.Hour, cfg.BackoffMin, cfg.BackoffMax), outageMin(time.Hour, cfg.BackoffMin, cfg.BackoffMax, 0)
		t.Logf("outage of 1h, backoff %s..%s: %d requests (allowed %d..%d); per minute: %v",
			cfg.BackoffMin, cfg.BackoffMax, total, lo, hi, perMinute)
		if total < lo || total > hi {
			t.Errorf("%d requests in an hour of outage, want %d..%d", total, lo, hi)
		}
		// The delay reaches its cap with the 7th failure, at most 63s in
		// (0+1+2+4+8+16+32): from the third minute on, the delays are
		// 30s..60s, so every minute has one request or two.
		for m := 2; m < len(perMinute); m++ {
			if n := perMinute[m]; n < 1 || n > 2 {
				t.Errorf("minute %d of the outage: %d requests, want 1 or 2 (delays of 30s..60s)", m+1, n)
			}
		}
		// The first minute: requests at 0, then after 1s, 1-2s, 2-4s, 4-8s,
		// 8-16s and 16-32s: 6 or 7 of them.
		if perMinute[0] < 6 || perMinute[0] > 7 {
			t.Errorf("first minute: %d requests, want 6 or 7", perMinute[0])
		}
	})
}
