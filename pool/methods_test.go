package pool

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// methods lists every selection method; tests that state a rule for all of
// them range over it.
var methods = []Method{MethodRoundRobin, MethodLeastConn, MethodHash, MethodRandom2, MethodFastest}

func methodPool(t testing.TB, name string, prio int, m Method, hosts []*Host) *Pool {
	t.Helper()
	p, err := NewPool(name, prio, m, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// keyN returns the n-th test key: a client hash as the proxy computes it.
func keyN(n int) uint64 {
	return HashKey(netipAddrPort(n), true)
}

func TestNewSelectorMethods(t *testing.T) {
	for _, m := range methods {
		s, err := NewSelector(m)
		if err != nil || s == nil {
			t.Errorf("NewSelector(%q) = %v, %v", m, s, err)
		}
		if _, ok := s.(eligiblePicker); !ok {
			t.Errorf("%s: selector %T does not implement eligiblePicker (try_all)", m, s)
		}
	}
}

// TestMethodsEligibility: whatever the method, a pick never lands on a host
// that is down, taken out by an operator, of weight 0, full or skipped, and
// every host that may be picked is picked over a few hundred picks.
func TestMethodsEligibility(t *testing.T) {
	for _, m := range methods {
		for _, tc := range []struct {
			name  string
			setup func(hs []*Host)
			skip  string // ids, comma-separated
			want  string // ids that may be picked, sorted, "" = none
		}{
			{"all usable", func([]*Host) {}, "", "abcd"},
			{"down", func(hs []*Host) { hs[1].SetHealth(false, "") }, "", "acd"},
			{"manual down", func(hs []*Host) { hs[0].SetAdmin(StateManualDown, "") }, "", "bcd"},
			{"draining", func(hs []*Host) { hs[2].SetAdmin(StateDraining, "") }, "", "abd"},
			{"weight 0", func(hs []*Host) { hs[3].SetWeight(0) }, "", "abc"},
			{"full", func(hs []*Host) { hs[0].SetMaxConns(1); hs[0].ConnOpened() }, "", "bcd"},
			{"skip", func([]*Host) {}, "b,c", "ad"},
			{"skip all", func([]*Host) {}, "a,b,c,d", ""},
			{"slow start", func(hs []*Host) {
				hs[0].SetSlowStart(time.Hour)
				hs[0].SetHealth(false, "")
				hs[0].SetHealth(true, "")
			}, "", "abcd"},
			{"all out", func(hs []*Host) {
				hs[0].SetHealth(false, "")
				hs[1].SetAdmin(StateManualDown, "")
				hs[2].SetWeight(0)
			}, "d", ""},
		} {
			t.Run(string(m)+"/"+tc.name, func(t *testing.T) {
				hs := hostsW(10, 10, 10, 10)
				tc.setup(hs)
				p := methodPool(t, "p", 0, m, hs)
				skip := func(h *Host) bool { return strings.Contains(tc.skip, h.ID) }
				seen := map[string]bool{}
				for i := range 400 {
					h := p.Pick(keyN(i), skip)
					if h == nil {
						seen["-"] = true
						continue
					}
					seen[h.ID] = true
				}
				got := slices.Sorted(func(yield func(string) bool) {
					for id := range seen {
						if !yield(id) {
							return
						}
					}
				})
				want := strings.Split(tc.want, "")
				if tc.want == "" {
					want = []string{"-"}
				}
				if !slices.Equal(got, want) {
					t.Errorf("picked %v, want %v", got, want)
				}
			})
		}
	}
}

// TestMethodsTryAll: with AllDownTryAll and every host down, each method
// still balances among the down hosts, and still honours skip, weight 0 and
// operator states.
func TestMethodsTryAll(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			hs := hostsW(1, 1, 1, 1, 1)
			for _, h := range hs {
				h.SetHealth(false, "")
			}
			hs[0].SetAdmin(StateManualDown, "")
			hs[1].SetAdmin(StateDraining, "")
			hs[2].SetWeight(0)
			u := NewUpstream("u", []*Pool{methodPool(t, "p", 0, m, hs)}, AllDownTryAll)
			count := map[string]int{}
			for i := range 400 {
				_, h := u.Pick(keyN(i), nil)
				if h == nil {
					t.Fatalf("pick %d: nothing, want a down host", i)
				}
				count[h.ID]++
			}
			if len(count) != 2 || count["d"] == 0 || count["e"] == 0 {
				t.Errorf("picked %v, want d and e only", count)
			}
			skipD := func(h *Host) bool { return h.ID == "d" }
			for i := range 50 {
				if _, h := u.Pick(keyN(i), skipD); h != hs[4] {
					t.Fatalf("skip d: picked %v, want e", h)
				}
			}
		})
	}
}

func TestLeastConnPicksLeast(t *testing.T) {
	hs := hostsW(1, 2, 1)
	p := methodPool(t, "p", 0, MethodLeastConn, hs)
	open := func(h *Host, n int) {
		for range n {
			h.ConnOpened()
		}
	}
	// a 3/1, b 4/2, c 1/1: c is least.
	open(hs[0], 3)
	open(hs[1], 4)
	open(hs[2], 1)
	if got := seq(p, 3, nil); got != "c c c" {
		t.Errorf("got %s, want c c c (picks do not open connections)", got)
	}
	// a 3/1, b 4/2, c 2/1: b and c tie at 2 and share by weight, b twice as often.
	open(hs[2], 1)
	if got := seq(p, 6, nil); got != "b c b b c b" {
		t.Errorf("tie of b (w2) and c (w1): got %s", got)
	}
	// Skip the least loaded: next least.
	if got := seq(p, 1, func(h *Host) bool { return h.ID != "a" }); got != "a" {
		t.Errorf("only a left: got %s", got)
	}
}

// TestLeastConnLongLived opens connections that never close: least_conn
// keeps active connections in proportion to weight at every step, where
// round robin only does so on average.
func TestLeastConnLongLived(t *testing.T) {
	weights := []int{1, 2, 3, 4}
	hs := hostsW(weights...)
	p := methodPool(t, "p", 0, MethodLeastConn, hs)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 100_000
	var worst float64
	for i := range n {
		h := p.Pick(0, nil)
		h.ConnOpened()
		if rng.IntN(3) == 0 {
			// Churn: one connection somewhere closes.
			if c := hs[rng.IntN(len(hs))]; c.active.Load() > 0 {
				c.ConnClosed(0, 0)
			}
		}
		if i%97 == 0 {
			// Every host is within one connection of its share.
			var total int64
			for _, h := range hs {
				total += h.active.Load()
			}
			for j, h := range hs {
				want := float64(total) * float64(weights[j]) / 10
				worst = max(worst, math.Abs(float64(h.active.Load())-want))
			}
		}
	}
	t.Logf("least_conn, %d long-lived connections with churn, weights %v: worst deviation from the weighted share %.2f connections", n, weights, worst)
	if worst > 4 {
		t.Errorf("worst deviation %.2f connections, want <= 4", worst)
	}
}

func TestObserveConnect(t *testing.T) {
	h := NewHost("a", "tcp", "a:1", 1)
	if h.ConnectEWMA() != 0 {
		t.Fatal("new host measured")
	}
	h.ObserveConnect(800 * time.Microsecond)
	if got := h.ConnectEWMA(); got != 800*time.Microsecond {
		t.Fatalf("first observation: %v", got)
	}
	h.ObserveConnect(1600 * time.Microsecond) // moves by an eighth of the difference
	if got := h.ConnectEWMA(); got != 900*time.Microsecond {
		t.Fatalf("second observation: %v, want 900µs", got)
	}
	h.ObserveConnect(0) // too fast to measure still counts as measured
	if got := h.ConnectEWMA(); got <= 0 || got >= 900*time.Microsecond {
		t.Fatalf("after a 0 observation: %v", got)
	}
	h.SetHealth(false, "down")
	h.SetHealth(true, "up")
	if got := h.ConnectEWMA(); got != 0 {
		t.Fatalf("back up: %v, want 0 (measured afresh)", got)
	}
}

func TestFastest(t *testing.T) {
	hs := hostsW(1, 1, 2, 1)
	p := methodPool(t, "p", 0, MethodFastest, hs)
	// Nothing measured: every host ties at 0, weighted round robin.
	if got := seq(p, 5, nil); got != "c a b d c" {
		t.Errorf("unmeasured: got %s", got)
	}
	hs[0].ObserveConnect(5 * time.Millisecond)
	hs[1].ObserveConnect(time.Millisecond)
	hs[2].ObserveConnect(2 * time.Millisecond)
	// d is unmeasured: probed first.
	if got := seq(p, 2, nil); got != "d d" {
		t.Errorf("d unmeasured: got %s", got)
	}
	hs[3].ObserveConnect(1050 * time.Microsecond)
	// b (1ms) and d (1.05ms) are equally fast (within 1/8) and share; a
	// and c are slower and get nothing. The weight does not beat speed: c
	// has weight 2 and is still left out.
	count := map[string]int{}
	for _, id := range strings.Fields(seq(p, 100, nil)) {
		count[id]++
	}
	if count["b"] != 50 || count["d"] != 50 {
		t.Errorf("b and d tie: got %v, want 50 each", count)
	}
	// The fastest is skipped (a try failed): the next fastest.
	if got := seq(p, 2, func(h *Host) bool { return h.ID == "b" || h.ID == "d" }); got != "c c" {
		t.Errorf("b, d skipped: got %s", got)
	}
}

// netipAddrPort returns the n-th test client: 10.x.y.z with a port that
// varies too.
func netipAddrPort(n int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), uint16(1024+n%50000))
}

// TestRandom2 checks the two choices: the less loaded of two is taken, so
// a loaded host is avoided whenever it is drawn with another.
func TestRandom2(t *testing.T) {
	hs := hostsW(1, 1, 1)
	p := methodPool(t, "p", 0, MethodRandom2, hs)
	for range 5 {
		hs[0].ConnOpened()
	}
	for i := range 300 {
		if h := p.Pick(0, nil); h == hs[0] {
			t.Fatalf("pick %d: the loaded host was taken over an idle one", i)
		}
	}
	// Only two eligible: always the less loaded one.
	hs[1].ConnOpened()
	for i := range 100 {
		if h := p.Pick(0, func(h *Host) bool { return h == hs[2] }); h != hs[1] {
			t.Fatalf("pick %d: %v, want b (1 active, a has 5)", i, h.ID)
		}
	}
	// Relative to weight: a with 5 active and weight 10 is less loaded than
	// b with 1 active and weight 1.
	hs[0].SetWeight(10)
	for i := range 100 {
		if h := p.Pick(0, func(h *Host) bool { return h == hs[2] }); h != hs[0] {
			t.Fatalf("pick %d: %v, want a (5/10 < 1/1)", i, h.ID)
		}
	}
}

// TestMethodsDistribution: over 100 000 picks of short connections (none
// left open), every method shares the picks in proportion to weight, within
// ±2 % of all picks. least_conn and fastest see only ties and fall back to
// smooth WRR; random2 is weighted random; hash gets 100 000 distinct clients.
func TestMethodsDistribution(t *testing.T) {
	const n = 100_000
	for _, m := range methods {
		for _, weights := range [][]int{{1, 2, 3, 4}, {7, 7, 7, 7, 7}, {100, 1}} {
			t.Run(fmt.Sprint(m, weights), func(t *testing.T) {
				hs := hostsW(weights...)
				for _, h := range hs {
					h.ObserveConnect(time.Millisecond)
				}
				p := methodPool(t, "p", 0, m, hs)
				count := map[*Host]int{}
				for i := range n {
					count[p.Pick(keyN(i), nil)]++
				}
				sum := 0
				for _, w := range weights {
					sum += w
				}
				worst := 0.0
				for i, h := range hs {
					want := float64(weights[i]) / float64(sum)
					worst = max(worst, math.Abs(float64(count[h])/n-want))
				}
				t.Logf("%s weights %v: worst share error %.4f over %d picks", m, weights, worst, n)
				if worst > 0.02 || count[nil] > 0 {
					t.Errorf("worst share error %.4f (nil %d), want <= 0.02", worst, count[nil])
				}
			})
		}
	}
}

// TestRandom2LongLived: with connections that stay open, two choices keep
// the active connections close to the weighted share, where plain weighted
// random drifts by the square root of the count.
func TestRandom2LongLived(t *testing.T) {
	weights := []int{1, 2, 3, 4}
	hs := hostsW(weights...)
	p := methodPool(t, "p", 0, MethodRandom2, hs)
	const n = 100_000
	for range n {
		p.Pick(0, nil).ConnOpened()
	}
	worst := 0.0
	for i, h := range hs {
		want := float64(n) * float64(weights[i]) / 10
		worst = max(worst, math.Abs(float64(h.active.Load())-want))
	}
	t.Logf("random2, %d long-lived connections, weights %v: worst deviation from the weighted share %.0f connections (%.4f%%)", n, weights, worst, 100*worst/n)
	if worst > 0.01*n {
		t.Errorf("worst deviation %.0f connections, want <= 1%%", worst)
	}
}

// TestMethodsConcurrent picks from several goroutines while hosts change
// weight, health and load, for the race detector; the hash table is rebuilt
// under the picks' feet.
func TestMethodsConcurrent(t *testing.T) {
	for _, m := range methods {
		t.Run(string(m), func(t *testing.T) {
			hs := hostsW(1, 2, 3, 4)
			p := methodPool(t, "p", 0, m, hs)
			stop := make(chan struct{})
			var writer, pickers sync.WaitGroup
			writer.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					h := hs[i%len(hs)]
					// A weight change rebuilds the hash table (~1ms, much
					// more under -race): change weights now and then, as
					// operators do, and states and timings all the time.
					if i%64 == 0 && i/64 < 20 {
						h.SetWeight(1 + (i/64)%5)
					}
					h.SetHealth(i%3 != 0, "")
					h.ObserveConnect(time.Duration(i%7) * time.Millisecond)
				}
			})
			for g := range 4 {
				pickers.Go(func() {
					for i := range 2000 {
						if h := p.Pick(keyN(g*2000+i), nil); h != nil {
							h.ConnOpened()
							h.ConnClosed(0, 0)
						}
					}
				})
			}
			pickers.Wait()
			close(stop)
			writer.Wait()
		})
	}
}
