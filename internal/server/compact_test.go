package server

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/l4lb/l4lb/control"
)

// TestCompact: what compaction keeps, op by op.
func TestCompact(t *testing.T) {
	w := func(n int) *int { return &n }
	add := func(pool, id string) op {
		return op{Op: opAddHost, Upstream: "u", Pool: pool, HostSpec: &control.HostSpec{ID: id, Address: "10.0.0.9:1", Weight: 1}}
	}
	addPool := func(name string) op {
		return op{Op: opAddPool, Upstream: "u", PoolSpec: &control.PoolSpec{Name: name}}
	}
	rm := func(pool, id string) op { return op{Op: opRemoveHost, Upstream: "u", Pool: pool, Host: id} }
	weight := func(pool, id string, n int) op {
		return op{Op: opPatchHost, Upstream: "u", Pool: pool, Host: id, Weight: w(n)}
	}
	put := op{Op: opPutUpstream, Upstream: "u", Body: &control.Upstream{Name: "u"}}
	delPool := func(name string) op { return op{Op: opDeletePool, Upstream: "u", Pool: name} }
	for _, tc := range []struct {
		name     string
		ops      []op
		wantKept []int // indexes of ops
	}{
		{"weights fold", []op{weight("p", "a", 1), weight("p", "a", 2), weight("p", "b", 3)}, []int{1, 2}},
		{"add then remove leaves nothing", []op{add("p", "x"), weight("p", "x", 5), rm("p", "x")}, nil},
		{"an add by address, removed by it", []op{
			{Op: opAddHost, Upstream: "u", Pool: "p", HostSpec: &control.HostSpec{Address: "10.0.0.9:1"}},
			rm("p", "10.0.0.9:1")}, nil},
		{"a config host's removal stays, its weights go", []op{weight("p", "a", 5), rm("p", "a")}, []int{1}},
		{"re-added config host removed again", []op{rm("p", "a"), add("p", "a"), rm("p", "a")}, []int{0}},
		{"same id in another pool is another host", []op{add("q", "x"), rm("p", "x")}, []int{0, 1}},
		{"a put is a barrier", []op{add("p", "x"), put, rm("p", "x")}, []int{1, 2}},
		{"everything before a put goes", []op{add("p", "x"), weight("p", "a", 2), put}, []int{2}},
		{"an API pool added and deleted leaves nothing", []op{addPool("n"), add("n", "x"), weight("n", "x", 3), delPool("n")}, nil},
		{"a config pool's deletion stays, its ops go but removals (they free ids)", []op{rm("p", "a"), weight("p", "b", 2), add("p", "x"), delPool("p")}, []int{0, 3}},
		{"a pool's deletion is a barrier for hosts", []op{add("p", "x"), delPool("p"), addPool("p"), rm("p", "x")}, []int{1, 2, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compact(tc.ops)
			var want []op
			for _, i := range tc.wantKept {
				want = append(want, tc.ops[i])
			}
			if !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Errorf("compact kept %s\nwant %s", opsString(got), opsString(want))
			}
		})
	}
}

func opsString(ops []op) string {
	b, _ := json.Marshal(ops)
	return string(b)
}

// TestCompactReplaysTheSame is compaction's contract: for random journals of
// accepted edits (pools and hosts added, removed, reweighted, set down, up
// or draining, pools patched and deleted), replaying the compacted journal
// over the config gives exactly the state replaying the whole one gives,
// and the compacted journal stays small while edits go on.
func TestCompactReplaysTheSame(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, filepath.Join(dir, "l4lb.toml"), fmt.Sprintf(editable, dir, "1s", "127.0.0.1:1"))
	base := specsFromConfig(s.cfg)
	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 0))
	pools := []string{"p", "n1", "n2"}
	ids := []string{"a", "x", "y", "z"}
	longest := 0
	for run := range 200 {
		sp := base.clone()
		var journal []op
		for range 60 {
			o := randomOp(rng, pools, ids)
			try := sp.clone()
			r := s.resolveOps([]op{o})
			if s.applyOp(try, o, r) != nil {
				continue // refused live: never journaled
			}
			sp = try
			journal = append(journal, o)
			c := compact(journal)
			longest = max(longest, len(c))
			r = s.resolveOps(journal)
			whole, _ := s.replay(base.clone(), journal, r)
			compacted, _ := s.replay(base.clone(), c, r)
			if !reflect.DeepEqual(view(whole), view(compacted)) {
				t.Fatalf("seed %d run %d: the compacted journal replays differently\njournal   %s\ncompacted %s\nwhole     %+v\ncompacted %+v",
					seed, run, opsString(journal), opsString(c), view(whole), view(compacted))
			}
		}
	}
	// 3 pools x 4 ids, each with at most an add or remove, a weight and a
	// state, plus a pool add/delete and patch each: far below 60.
	if longest > 40 {
		t.Errorf("seed %d: a compacted journal reached %d ops", seed, longest)
	}
	t.Logf("seed %d: longest compacted journal %d ops (of up to 60 edits)", seed, longest)
}

func view(sp specs) map[string]control.Upstream {
	out := map[string]control.Upstream{}
	for name, u := range sp {
		out[name] = u.view(nil)
	}
	return out
}

func randomOp(rng *rand.Rand, pools, ids []string) op {
	p := pools[rng.IntN(len(pools))]
	id := ids[rng.IntN(len(ids))]
	n := rng.IntN(10)
	switch rng.IntN(8) {
	case 0:
		return op{Op: opAddPool, Upstream: "u", PoolSpec: &control.PoolSpec{Name: p, Priority: n}}
	case 1:
		return op{Op: opDeletePool, Upstream: "u", Pool: p}
	case 2:
		return op{Op: opPatchPool, Upstream: "u", Pool: p, PoolSet: &control.PoolPatch{Priority: &n}}
	case 3, 4:
		return op{Op: opAddHost, Upstream: "u", Pool: p, HostSpec: &control.HostSpec{ID: id, Address: fmt.Sprintf("127.0.0.%d:1", n+2), Weight: n}}
	case 5:
		return op{Op: opRemoveHost, Upstream: "u", Pool: p, Host: id}
	case 6:
		return op{Op: opPatchHost, Upstream: "u", Pool: p, Host: id, Weight: &n}
	}
	acts := []control.Action{control.ActionDown, control.ActionUp, control.ActionDrain}
	return op{Op: opHostAction, Upstream: "u", Pool: p, Host: id, Action: acts[rng.IntN(len(acts))]}
}

// TestReplayRefusesBadOps: a journal read back from state_dir or from the
// fleet store may hold ops the API would never have journaled (hand edits,
// corruption, another writer): each is dropped with the reason, nothing
// panics, and the good ops around them still apply.
func TestReplayRefusesBadOps(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, filepath.Join(dir, "l4lb.toml"), fmt.Sprintf(editable, dir, "1s", "127.0.0.1:1"))
	w := func(n int) *int { return &n }
	bad := []op{
		{Op: opPutUpstream, Upstream: "u"},
		{Op: opAddPool, Upstream: "u"},
		{Op: opPatchPool, Upstream: "u", Pool: "p"},
		{Op: opAddHost, Upstream: "u", Pool: "p"},
		{Op: opPatchHost, Upstream: "u", Pool: "p", Host: "a"},
		{Op: opPatchHost, Upstream: "u", Pool: "p", Host: "a", Weight: w(-5)},
		{Op: opPatchHost, Upstream: "u", Pool: "p", Host: "a", Weight: w(1001)},
		{Op: opAddHost, Upstream: "u", Pool: "p", HostSpec: &control.HostSpec{ID: "big", Address: "127.0.0.2:1", Weight: 5000}},
		{Op: opHostAction, Upstream: "u", Pool: "p", Host: "a", Action: "explode"},
		{Op: "frobnicate", Upstream: "u"},
	}
	good := op{Op: opAddHost, Upstream: "u", Pool: "p", HostSpec: &control.HostSpec{ID: "ok", Address: "127.0.0.3:1", Weight: 7}}
	for _, b := range bad {
		if err := b.check(); err == nil && b.Op != opHostAction {
			t.Errorf("op %s: check passed", opsString([]op{b}))
		}
	}
	journal := append(append([]op(nil), bad...), good)
	r := s.resolveOps(journal)
	sp, kept := s.replay(specsFromConfig(s.cfg), journal, r)
	if len(kept) != 1 || kept[0].Op != opAddHost || kept[0].HostSpec.ID != "ok" {
		t.Fatalf("kept %s, want only the good op", opsString(kept))
	}
	v := view(sp)["u"]
	if len(v.Pools) != 1 || len(v.Pools[0].Hosts) != 2 {
		t.Fatalf("state after replay: %+v", v)
	}
	for _, h := range v.Pools[0].Hosts {
		if h.ID == "a" && (h.Weight != 1 || h.State != 0 && h.State.String() != "up") {
			t.Errorf("config host a changed by refused ops: %+v", h)
		}
	}
}
