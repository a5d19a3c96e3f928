package splice

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestDefaultLoops(t *testing.T) {
	for procs, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 16: 8} {
		if got := loopsFor(procs); got != want {
			t.Errorf("GOMAXPROCS %d: %d loops, want %d", procs, got, want)
		}
	}
	// The default follows GOMAXPROCS as the process started, not as it is
	// changed later (l4lb lowers it to the loop count).
	want := loopsFor(runtime.GOMAXPROCS(0))
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 4)
	if got := DefaultLoops(); got != want {
		t.Errorf("after GOMAXPROCS changed: %d loops, want %d as at start", got, want)
	}
}

// loopsChild is set in the environment of the process TestSetLoops starts:
// the loop count to ask for before the engine runs.
const loopsChild = "L4LB_TEST_SPLICE_LOOPS"

// TestSetLoops runs in a process of its own (this test binary again), since
// the engine, once started, lives as long as the process: the count set
// before the first session is the count the engine runs, sessions go round
// its loops, and asking for another count afterwards is refused.
func TestSetLoops(t *testing.T) {
	if v := os.Getenv(loopsChild); v != "" {
		n, _ := strconv.Atoi(v)
		setLoopsChild(t, n)
		return
	}
	if err := SetLoops(-1); err == nil {
		t.Error("SetLoops(-1) accepted")
	}
	for _, n := range []int{1, 3} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSetLoops$", "-test.v")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", loopsChild, n))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestSetLoops") {
			t.Errorf("child with %d loops: %v\n%s", n, err, out)
		}
	}
}

func setLoopsChild(t *testing.T, n int) {
	if engineCur.Load() != nil {
		t.Fatal("the engine runs before the test set its loops")
	}
	if err := SetLoops(n); err != nil {
		t.Fatal(err)
	}
	// The engine starts at the first session, with the count set.
	seen := map[*loop]bool{}
	for range 2 * n {
		st := startPair(t, Options{})
		st.exchange(t, []byte("ping"))
		st.sess.mu.Lock()
		seen[st.sess.lp] = true
		st.sess.mu.Unlock()
	}
	e := engineCur.Load()
	if e == nil || len(e.loops) != n {
		t.Fatalf("engine = %v, want %d loops", e, n)
	}
	if len(seen) != n {
		t.Errorf("%d sessions ran on %d loops, want all %d", 2*n, len(seen), n)
	}
	if err := SetLoops(n); err != nil {
		t.Errorf("SetLoops(%d) once running with %d: %v", n, n, err)
	}
	err := SetLoops(n + 1)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("already runs %d loops", n)) {
		t.Errorf("SetLoops(%d) once running with %d: %v, want refused", n+1, n, err)
	}
}
