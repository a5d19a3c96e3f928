package pool

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// hostsW returns hosts named a, b, c, ... with the given weights.
func hostsW(weights ...int) []*Host {
	hs := make([]*Host, len(weights))
	for i, w := range weights {
		id := string(rune('a' + i))
		hs[i] = NewHost(id, "tcp", "10.0.0."+fmt.Sprint(i+1)+":1", w)
	}
	return hs
}

func mustPool(t testing.TB, name string, prio int, hosts []*Host) *Pool {
	t.Helper()
	p, err := NewPool(name, prio, MethodRoundRobin, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// seq picks n times and returns the chosen ids ("-" for nil), space separated.
func seq(p *Pool, n int, skip func(*Host) bool) string {
	ids := make([]string, n)
	for i := range ids {
		if h := p.Pick(0, skip); h != nil {
			ids[i] = h.ID
		} else {
			ids[i] = "-"
		}
	}
	return strings.Join(ids, " ")
}

func TestNewSelector(t *testing.T) {
	for _, m := range []Method{"", MethodRoundRobin} {
		if s, err := NewSelector(m); err != nil || s == nil {
			t.Errorf("NewSelector(%q) = %v, %v", m, s, err)
		}
	}
	if _, err := NewSelector("leastconn"); !errors.Is(err, ErrUnknownMethod) {
		t.Errorf("NewSelector(leastconn) err = %v, want ErrUnknownMethod", err)
	}
}

func TestSmoothWRRSequence(t *testing.T) {
	for _, tc := range []struct {
		weights []int
		want    string
	}{
		// The sequence from nginx's ngx_http_upstream_round_robin.c comment.
		{[]int{5, 1, 1}, "a a b a c a a a a b a c a a"},
		{[]int{1, 1, 1}, "a b c a b c"},
		{[]int{2, 1}, "a b a a b a"},
		{[]int{0, 1, 0}, "b b b"},
		{[]int{0, 0}, "- -"},
		{nil, "-"},
	} {
		t.Run(fmt.Sprint(tc.weights), func(t *testing.T) {
			p := mustPool(t, "p", 0, hostsW(tc.weights...))
			if got := seq(p, len(strings.Fields(tc.want)), nil); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestSmoothWRRDistribution(t *testing.T) {
	for _, weights := range [][]int{{1, 2, 3, 4}, {1, 0, 9}, {100, 1}, {7, 7, 7, 7, 7}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			hs := hostsW(weights...)
			p := mustPool(t, "p", 0, hs)
			const n = 100_000
			count := map[*Host]int{}
			for range n {
				count[p.Pick(0, nil)]++
			}
			sum := 0
			for _, w := range weights {
				sum += w
			}
			for i, h := range hs {
				want := float64(weights[i]) / float64(sum)
				got := float64(count[h]) / n
				if math.Abs(got-want) > 0.01 {
					t.Errorf("host %s weight %d: share %.4f, want %.4f ±0.01", h.ID, weights[i], got, want)
				}
				if weights[i] == 0 && count[h] != 0 {
					t.Errorf("weight 0 host %s picked %d times", h.ID, count[h])
				}
			}
			if count[nil] != 0 {
				t.Errorf("nil picked %d times", count[nil])
			}
		})
	}
}

func TestSetWeightNextPick(t *testing.T) {
	hs := hostsW(1, 1)
	p := mustPool(t, "p", 0, hs)
	if got := seq(p, 2, nil); got != "a b" {
		t.Fatalf("before: %s", got)
	}
	hs[1].SetWeight(0)
	if got := seq(p, 4, nil); got != "a a a a" {
		t.Errorf("after b weight 0: %s", got)
	}
	hs[1].SetWeight(3)
	count := map[string]int{}
	for _, id := range strings.Fields(seq(p, 400, nil)) {
		count[id]++
	}
	if count["a"] != 100 || count["b"] != 300 {
		t.Errorf("after b weight 3: %v, want a:100 b:300", count)
	}
}

func TestPickSkipsUnusableAndSkipped(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(hs []*Host)
		skip  func(*Host) bool
		want  string
	}{
		{"all usable", func([]*Host) {}, nil, "a b c a b c"},
		{"down", func(hs []*Host) { hs[1].SetState(StateDown, "", false) }, nil, "a c a c"},
		{"manual down", func(hs []*Host) { hs[0].SetState(StateManualDown, "", true) }, nil, "b c b c"},
		{"draining", func(hs []*Host) { hs[2].SetState(StateDraining, "", true) }, nil, "a b a b"},
		{"weight 0", func(hs []*Host) { hs[2].SetWeight(0) }, nil, "a b a b"},
		{"skip", func([]*Host) {}, func(h *Host) bool { return h.ID == "b" }, "a c a c"},
		{"skip all", func([]*Host) {}, func(*Host) bool { return true }, "- -"},
		{"skip rest, others down", func(hs []*Host) {
			hs[0].SetState(StateDown, "", false)
			hs[1].SetState(StateDown, "", false)
		}, func(h *Host) bool { return h.ID == "c" }, "- -"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := hostsW(1, 1, 1)
			tc.setup(hs)
			p := mustPool(t, "p", 0, hs)
			if got := seq(p, len(strings.Fields(tc.want)), tc.skip); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// A skipped host keeps its place in the rotation: skipping it for one pick
// does not hand it a burst later.
func TestSkipDoesNotDisturbRotation(t *testing.T) {
	p := mustPool(t, "p", 0, hostsW(1, 1))
	skipA := func(h *Host) bool { return h.ID == "a" }
	if got := seq(p, 1, skipA) + " " + seq(p, 4, nil); got != "b a b a b" {
		t.Errorf("got %s", got)
	}
}

func TestNewPool(t *testing.T) {
	a := NewHost("a", "tcp", "x:1", 1)
	if _, err := NewPool("p", 0, "bogus", []*Host{a}); !errors.Is(err, ErrUnknownMethod) {
		t.Errorf("bogus method: %v", err)
	}
	if _, err := NewPool("p", 0, "", []*Host{a, nil}); !errors.Is(err, ErrBadPool) {
		t.Errorf("nil host: %v", err)
	}
	if _, err := NewPool("p", 0, "", []*Host{a, NewHost("a", "tcp", "y:1", 1)}); !errors.Is(err, ErrBadPool) {
		t.Errorf("duplicate id: %v", err)
	}
	in := []*Host{a}
	p, err := NewPool("p", 3, "", in)
	if err != nil {
		t.Fatal(err)
	}
	in[0] = nil // the pool holds its own copy
	if p.Method != MethodRoundRobin || p.Priority != 3 || p.Hosts[0] != a {
		t.Errorf("got %+v", p)
	}
	if !p.Usable() {
		t.Error("pool with an up host not usable")
	}
	a.SetState(StateDown, "", false)
	if p.Usable() {
		t.Error("pool with only a down host usable")
	}
}
