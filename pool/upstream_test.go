package pool

import (
	"fmt"
	"sync"
	"testing"
)

// pick returns "pool/host" or "-" for (nil, nil).
func pick(u *Upstream, skip func(*Host) bool) string {
	p, h := u.Pick(0, skip)
	switch {
	case p == nil && h == nil:
		return "-"
	case p == nil || h == nil:
		return fmt.Sprintf("BAD(%v,%v)", p, h)
	}
	return p.Name + "/" + h.ID
}

func TestUpstreamPriorityOrder(t *testing.T) {
	hs := hostsW(1, 1, 1)
	p0 := mustPool(t, "p0", 0, hs[:1])
	p5a := mustPool(t, "p5a", 5, hs[1:2])
	p5b := mustPool(t, "p5b", 5, hs[2:])
	p9 := mustPool(t, "p9", 9, nil)
	u := NewUpstream("u", []*Pool{p9, p5a, p0, p5b}, AllDownReject)

	var names []string
	for _, p := range u.Pools() {
		names = append(names, p.Name)
	}
	if got := fmt.Sprint(names); got != "[p0 p5a p5b p9]" {
		t.Errorf("Pools() = %s", got)
	}
	if got := pick(u, nil); got != "p0/a" {
		t.Errorf("pick = %s, want p0/a", got)
	}
	// Equal priorities keep insertion order.
	u.SetPools([]*Pool{p5b, p9, p5a})
	if got := pick(u, nil); got != "p5b/c" {
		t.Errorf("after SetPools pick = %s, want p5b/c", got)
	}
}

func TestUpstreamSetPoolsCopies(t *testing.T) {
	hs := hostsW(1, 1)
	in := []*Pool{mustPool(t, "b", 1, hs[1:]), mustPool(t, "a", 0, hs[:1])}
	u := NewUpstream("u", in, AllDownReject)
	if in[0].Name != "b" {
		t.Error("SetPools sorted the caller's slice")
	}
	in[1] = nil
	if got := pick(u, nil); got != "a/a" {
		t.Errorf("pick = %s, want a/a", got)
	}
	u.SetPools(nil)
	if got := pick(u, nil); got != "-" || len(u.Pools()) != 0 {
		t.Errorf("empty upstream pick = %s", got)
	}
}

func TestUpstreamFailoverAndFailback(t *testing.T) {
	hs := hostsW(1, 1, 1, 1) // a b in primary, c d in backup
	u := NewUpstream("u", []*Pool{
		mustPool(t, "primary", 0, hs[:2]),
		mustPool(t, "backup", 1, hs[2:]),
	}, AllDownReject)

	steps := []struct {
		do   func()
		want []string
	}{
		{func() {}, []string{"primary/a", "primary/b", "primary/a"}},
		{func() { hs[0].SetState(StateDown, "refused", false) }, []string{"primary/b", "primary/b"}},
		{func() { hs[1].SetState(StateDown, "refused", false) }, []string{"backup/c", "backup/d", "backup/c"}},
		{func() { hs[1].SetState(StateUp, "rise", false) }, []string{"primary/b", "primary/b"}},
		{func() { hs[1].SetWeight(0) }, []string{"backup/d", "backup/c"}},
		{func() { hs[2].SetState(StateDown, "", false); hs[3].SetState(StateDraining, "", true) }, []string{"-"}},
	}
	for i, st := range steps {
		st.do()
		for j, want := range st.want {
			if got := pick(u, nil); got != want {
				t.Fatalf("step %d pick %d = %s, want %s", i, j, got, want)
			}
		}
	}
}

// The proxy's tries loop: skip hosts already tried; once the first pool is
// exhausted, fall through to the next one, then give up.
func TestUpstreamTriesFallThrough(t *testing.T) {
	hs := hostsW(1, 1, 1)
	u := NewUpstream("u", []*Pool{
		mustPool(t, "p0", 0, hs[:2]),
		mustPool(t, "p1", 1, hs[2:]),
	}, AllDownTryAll)
	var tried []*Host
	skip := func(h *Host) bool {
		for _, th := range tried {
			if th == h {
				return true
			}
		}
		return false
	}
	var got []string
	for range 4 {
		p, h := u.Pick(0, skip)
		got = append(got, pick2(p, h))
		if h != nil {
			tried = append(tried, h)
		}
	}
	// Every host is usable but tried, so try_all does not kick in.
	if want := "[p0/a p0/b p1/c -]"; fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
}

func pick2(p *Pool, h *Host) string {
	if p == nil || h == nil {
		return "-"
	}
	return p.Name + "/" + h.ID
}

func TestUpstreamAllDown(t *testing.T) {
	type hostSetup struct {
		s      State
		weight int
	}
	for _, tc := range []struct {
		name   string
		policy AllDown
		hosts  []hostSetup // a b in p0, c d in p1
		skip   string      // id to skip
		want   []string
	}{
		{"reject", AllDownReject,
			[]hostSetup{{StateDown, 1}, {StateDown, 1}, {StateDown, 1}, {StateDown, 1}}, "",
			[]string{"-"}},
		{"try all uses priority order", AllDownTryAll,
			[]hostSetup{{StateDown, 1}, {StateDown, 1}, {StateDown, 1}, {StateDown, 1}}, "",
			[]string{"p0/a", "p0/b", "p0/a"}},
		{"try all honours skip", AllDownTryAll,
			[]hostSetup{{StateDown, 1}, {StateDown, 1}, {StateDown, 1}, {StateDown, 1}}, "a",
			[]string{"p0/b", "p0/b"}},
		{"try all never manual down, draining or weight 0", AllDownTryAll,
			[]hostSetup{{StateManualDown, 1}, {StateDraining, 1}, {StateDown, 0}, {StateDown, 1}}, "",
			[]string{"p1/d", "p1/d"}},
		{"try all with nothing eligible", AllDownTryAll,
			[]hostSetup{{StateManualDown, 1}, {StateDraining, 1}, {StateDown, 0}, {StateUp, 0}}, "",
			[]string{"-"}},
		{"try all not used while a host is usable", AllDownTryAll,
			[]hostSetup{{StateDown, 1}, {StateDown, 1}, {StateDown, 1}, {StateUp, 1}}, "",
			[]string{"p1/d", "p1/d"}},
		{"usable host skipped: nothing, not a down host", AllDownTryAll,
			[]hostSetup{{StateDown, 1}, {StateDown, 1}, {StateDown, 1}, {StateUp, 1}}, "d",
			[]string{"-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := hostsW(1, 1, 1, 1)
			for i, s := range tc.hosts {
				hs[i].SetState(s.s, "", true)
				hs[i].SetWeight(s.weight)
			}
			u := NewUpstream("u", []*Pool{
				mustPool(t, "p0", 0, hs[:2]),
				mustPool(t, "p1", 1, hs[2:]),
			}, tc.policy)
			skip := func(h *Host) bool { return h.ID == tc.skip }
			for i, want := range tc.want {
				if got := pick(u, skip); got != want {
					t.Errorf("pick %d = %s, want %s", i, got, want)
				}
			}
		})
	}
}

func TestUpstreamManualDownSticky(t *testing.T) {
	hs := hostsW(1, 1)
	u := NewUpstream("u", []*Pool{
		mustPool(t, "p0", 0, hs[:1]),
		mustPool(t, "p1", 1, hs[1:]),
	}, AllDownTryAll)
	hs[0].SetState(StateManualDown, "maintenance", true)
	if got := pick(u, nil); got != "p1/b" {
		t.Fatalf("pick = %s, want p1/b", got)
	}
	// A health check reporting up does not revive it.
	if _, changed := hs[0].SetState(StateUp, "rise 2", false); changed {
		t.Error("non-manual up changed a manual_down host")
	}
	if got := pick(u, nil); got != "p1/b" {
		t.Errorf("after health up pick = %s, want p1/b", got)
	}
	// Neither does try_all when everything else is down.
	hs[1].SetState(StateDown, "refused", false)
	if got := pick(u, nil); got != "p1/b" {
		t.Errorf("try_all pick = %s, want p1/b (down, not manual_down)", got)
	}
	// A manual up does.
	if prev, changed := hs[0].SetState(StateUp, "operator", true); !changed || prev != StateManualDown {
		t.Errorf("manual up = %v, %v", prev, changed)
	}
	if got := pick(u, nil); got != "p0/a" {
		t.Errorf("after manual up pick = %s, want p0/a", got)
	}
}

func TestUpstreamFindHost(t *testing.T) {
	hs := hostsW(1, 1, 1)
	u := NewUpstream("u", []*Pool{
		mustPool(t, "p0", 0, hs[:2]),
		mustPool(t, "p1", 1, hs[2:]),
	}, AllDownReject)
	for _, tc := range []struct{ id, want string }{{"a", "p0/a"}, {"c", "p1/c"}, {"z", "-"}} {
		if got := pick2(u.FindHost(tc.id)); got != tc.want {
			t.Errorf("FindHost(%q) = %s, want %s", tc.id, got, tc.want)
		}
	}
}

// Pickers run while another goroutine swaps snapshots and flips host states.
// Every pick must come from a pool of some published snapshot and the host
// must belong to that pool. Run with -race.
func TestUpstreamConcurrent(t *testing.T) {
	hs := hostsW(1, 2, 3, 4, 5, 6)
	snapshots := [][]*Pool{
		{mustPool(t, "a0", 0, hs[:3]), mustPool(t, "a1", 1, hs[3:])},
		{mustPool(t, "b0", 0, hs[2:5])},
		{mustPool(t, "c1", 1, hs[5:]), mustPool(t, "c0", 0, hs[:1])},
		{},
	}
	published := map[*Pool]bool{}
	for _, s := range snapshots {
		for _, p := range s {
			published[p] = true
		}
	}
	u := NewUpstream("u", snapshots[0], AllDownTryAll)

	stop := make(chan struct{}) // closed by the writer when it is done
	var writer sync.WaitGroup
	writer.Go(func() {
		defer close(stop)
		for i := range 5000 {
			u.SetPools(snapshots[i%len(snapshots)])
			h := hs[i%len(hs)]
			switch i % 4 {
			case 0:
				h.SetState(StateDown, "check", false)
			case 1:
				h.SetState(StateUp, "check", false)
			case 2:
				h.SetWeight(i % 3)
			case 3:
				h.SetState(StateManualDown, "op", true)
				h.SetState(StateUp, "op", true)
			}
		}
	})

	type result struct {
		picks, nils int
		err         string
	}
	results := make([]result, 8)
	var readers sync.WaitGroup
	for g := range results {
		readers.Go(func() {
			r := &results[g]
			skipID := hs[g%len(hs)]
			skip := func(h *Host) bool { return h == skipID }
			// Pick until the writer is done, and at least 1000 times.
			for i := 0; ; i++ {
				if i >= 1000 {
					select {
					case <-stop:
						return
					default:
					}
				}
				p, h := u.Pick(uint64(g), skip)
				if p == nil || h == nil {
					if p != nil || h != nil {
						r.err = fmt.Sprintf("half-nil pick %v %v", p, h)
						return
					}
					r.nils++
					continue
				}
				if !published[p] {
					r.err = "pool " + p.Name + " was never published"
					return
				}
				if h == skipID {
					r.err = "skipped host " + h.ID + " picked"
					return
				}
				found := false
				for _, ph := range p.Hosts {
					found = found || ph == h
				}
				if !found {
					r.err = "host " + h.ID + " not in pool " + p.Name
					return
				}
				r.picks++
			}
		})
	}
	writer.Wait()
	readers.Wait()
	picks, nils := 0, 0
	for g, r := range results {
		if r.err != "" {
			t.Errorf("goroutine %d: %s", g, r.err)
		}
		picks += r.picks
		nils += r.nils
	}
	// One snapshot in four is empty, so nils are expected; picks must happen too.
	if picks == 0 {
		t.Errorf("no pick returned a host (%d nils)", nils)
	}
	t.Logf("%d picks, %d nils", picks, nils)
}
