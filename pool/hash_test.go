package pool

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hashHosts returns n hosts with addresses as ids, as a config would give.
func hashHosts(n int, weight func(i int) int) []*Host {
	hs := make([]*Host, n)
	for i := range hs {
		hs[i] = NewHost("", "tcp", fmt.Sprintf("10.1.%d.%d:6379", i/250, i%250+1), weight(i))
	}
	return hs
}

func one(int) int { return 1 }

// mapping returns the host id each of n keys goes to.
func mapping(p *Pool, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		if h := p.Pick(keyN(i), nil); h != nil {
			ids[i] = h.ID
		}
	}
	return ids
}

// digest sums a mapping up in a short hex string.
func digest(ids []string) string {
	return strconv.FormatUint(fnv1a(strings.Join(ids, ",")), 16)
}

// TestHashOrderFree: the table is a function of the set of hosts, not of
// their order in the pool.
func TestHashOrderFree(t *testing.T) {
	hs := hashHosts(20, func(i int) int { return 1 + i%3 })
	want := mapping(methodPool(t, "p", 0, MethodHash, hs), 20_000)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 3 {
		shuffled := slices.Clone(hs)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := mapping(methodPool(t, "p", 0, MethodHash, shuffled), 20_000); !slices.Equal(got, want) {
			t.Fatal("a shuffled pool maps keys differently")
		}
	}
}

// hashGolden is the digest of mapping(…, 10 000) over hashHosts(10, weights
// 1,2,3,1,2,3,…). It pins the table across restarts and l4lb versions: if it
// changes, clients move to other hosts when a fleet is upgraded, and
// instances running the old and the new version disagree. Change it only on
// purpose, and say so in the release notes.
const hashGolden = "7f4190b66b125a9f"

func goldenMapping(t testing.TB) []string {
	hs := hashHosts(10, func(i int) int { return 1 + i%3 })
	slices.Reverse(hs) // insertion order must not matter
	return mapping(methodPool(t, "p", 0, MethodHash, hs), 10_000)
}

// TestHashAcrossProcesses: another process (this test binary run again)
// maps the same keys to the same hosts, and so does every version.
func TestHashAcrossProcesses(t *testing.T) {
	if os.Getenv("L4LB_HASH_CHILD") == "1" {
		fmt.Printf("digest=%s\n", digest(goldenMapping(t)))
		return
	}
	here := digest(goldenMapping(t))
	cmd := exec.Command(os.Args[0], "-test.run=^TestHashAcrossProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), "L4LB_HASH_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	_, rest, ok := strings.Cut(string(out), "digest=")
	there, _, _ := strings.Cut(rest, "\n")
	if !ok || there != here {
		t.Fatalf("this process %s, the other %q:\n%s", here, there, out)
	}
	t.Logf("hash: this process and another map 10000 keys alike (digest %s)", here)
	if here != hashGolden {
		t.Errorf("digest %s, want %s: the hash method's mapping changed", here, hashGolden)
	}
}

// TestHashRemap measures how many keys move when one of N hosts leaves the
// pool (a new pool without it, as a config edit gives), and that they all
// come back when it returns. Minimal remapping is 1/N: the leaving host's
// keys and no other.
func TestHashRemap(t *testing.T) {
	const keys = 100_000
	for _, n := range []int{2, 5, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			hs := hashHosts(n, one)
			before := mapping(methodPool(t, "p", 0, MethodHash, hs), keys)
			worst, worstOther := 0.0, 0.0
			// Every host leaves in turn (of 50, every fifth: a table
			// build and 100 000 picks each take a while under -race).
			step := max(n/10, 1)
			for gone := 0; gone < n; gone += step {
				rest := slices.Delete(slices.Clone(hs), gone, gone+1)
				after := mapping(methodPool(t, "p", 0, MethodHash, rest), keys)
				moved, other := 0, 0
				for i := range before {
					if before[i] != after[i] {
						moved++
						if before[i] != hs[gone].ID {
							other++ // a key of a host that stayed
						}
					}
				}
				worst = max(worst, float64(moved)/keys)
				worstOther = max(worstOther, float64(other)/keys)
				if gone == 0 {
					back := mapping(methodPool(t, "p", 0, MethodHash, hs), keys)
					if !slices.Equal(back, before) {
						t.Fatalf("host %d back: keys did not all return", gone)
					}
				}
			}
			t.Logf("hash remap, one of %d hosts removed: worst %.4f of keys moved (1/N = %.4f), of which %.4f belonged to hosts that stayed; all return with it",
				n, worst, 1/float64(n), worstOther)
			if limit := 1/float64(n) + 0.02; worst > limit {
				t.Errorf("worst remap %.4f > 1/N + 2%% = %.4f", worst, limit)
			}
		})
	}
}

// TestHashDown: a host that goes down (and stays in the pool) moves only its
// own keys, spread over the others, and gets them all back when it is up.
func TestHashDown(t *testing.T) {
	const keys = 100_000
	for _, n := range []int{2, 5, 10, 50} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			hs := hashHosts(n, one)
			p := methodPool(t, "p", 0, MethodHash, hs)
			before := mapping(p, keys)
			down := hs[n/2]
			down.SetHealth(false, "test")
			during := mapping(p, keys)
			got := map[string]int{}
			moved := 0
			for i := range before {
				switch {
				case before[i] == down.ID:
					moved++
					got[during[i]]++
					if during[i] == down.ID {
						t.Fatal("a key still on the down host")
					}
				case during[i] != before[i]:
					t.Fatalf("key %d of %s moved to %s", i, before[i], during[i])
				}
			}
			// Its keys spread: no host takes much more than an even share.
			most := 0
			for _, c := range got {
				most = max(most, c)
			}
			even := float64(moved) / float64(n-1)
			t.Logf("hash, one of %d hosts down: %.4f of keys moved, all its own, over %d hosts (most %.2f× an even share)",
				n, float64(moved)/keys, len(got), float64(most)/even)
			if n > 2 && float64(most) > 1.6*even {
				t.Errorf("one host took %d of %d moved keys, even is %.0f", most, moved, even)
			}
			down.SetHealth(true, "test")
			if !slices.Equal(mapping(p, keys), before) {
				t.Error("keys did not come back")
			}
		})
	}
}

// TestHashTries: the tries loop walks a key's hosts in a fixed order,
// each host once.
func TestHashTries(t *testing.T) {
	hs := hashHosts(5, one)
	p := methodPool(t, "p", 0, MethodHash, hs)
	walk := func(key uint64) string {
		var tried []*Host
		skip := func(h *Host) bool { return slices.Contains(tried, h) }
		for h := p.Pick(key, skip); h != nil; h = p.Pick(key, skip) {
			tried = append(tried, h)
		}
		ids := make([]string, len(tried))
		for i, h := range tried {
			ids[i] = h.ID
		}
		return strings.Join(ids, " ")
	}
	for i := range 100 {
		a, b := walk(keyN(i)), walk(keyN(i))
		if a != b || len(strings.Fields(a)) != 5 {
			t.Fatalf("key %d: %q then %q, want the same 5 hosts", i, a, b)
		}
	}
}

// TestHashWeights: a weight change rebuilds the table at the next pick, and
// the old weight brings the old mapping back.
func TestHashWeights(t *testing.T) {
	hs := hashHosts(4, one)
	p := methodPool(t, "p", 0, MethodHash, hs)
	before := mapping(p, 20_000)
	hs[1].SetWeight(3)
	share := 0
	for _, id := range mapping(p, 20_000) {
		if id == hs[1].ID {
			share++
		}
	}
	if f := float64(share) / 20_000; f < 0.48 || f > 0.52 {
		t.Errorf("weight 3 of 6: share %.3f, want 0.5", f)
	}
	hs[1].SetWeight(1)
	if !slices.Equal(mapping(p, 20_000), before) {
		t.Error("weight restored, mapping not")
	}
	hs[2].SetWeight(0) // weight 0: as if removed
	for _, id := range mapping(p, 20_000) {
		if id == hs[2].ID {
			t.Fatal("a weight 0 host picked")
		}
	}
}

// TestHashSlowStart: a ramping host takes a growing share of its keys, and a
// key once back stays back.
func TestHashSlowStart(t *testing.T) {
	const keys = 50_000
	hs := hashHosts(4, func(int) int { return 100 })
	p := methodPool(t, "p", 0, MethodHash, hs)
	before := mapping(p, keys)
	h := hs[0]
	const d = time.Hour
	h.SetSlowStart(d)
	h.SetHealth(false, "")
	h.SetHealth(true, "")
	var prev []string
	for _, frac := range []float64{0, 0.5, 0.9} {
		// Pretend frac of the period has passed.
		h.rampEnd.Store(monoNow() + int64(float64(d)*(1-frac)))
		now := mapping(p, keys)
		own, back := 0, 0
		for i := range before {
			if before[i] == h.ID {
				own++
				if now[i] == h.ID {
					back++
				}
			} else if now[i] != before[i] {
				t.Fatalf("ramp %.1f: a key of %s moved", frac, before[i])
			}
			if prev != nil && prev[i] == h.ID && now[i] != h.ID {
				t.Fatalf("ramp %.1f: key %d left the ramping host again", frac, i)
			}
		}
		want := (10 + 90*frac) / 100
		got := float64(back) / float64(own)
		t.Logf("hash, slow start %.0f%% through: %.3f of the host's keys back (weight ratio %.3f)", frac*100, got, want)
		if got < want-0.03 || got > want+0.03 {
			t.Errorf("ramp %.1f: %.3f of its keys back, want %.3f", frac, got, want)
		}
		prev = now
	}
}
