package splice

import (
	"testing"

	"golang.org/x/sys/unix"
)

// New pipes are 1 MiB while the pool's open pipes hold at most the big
// budget, then 256 KiB up to the mid budget, then the kernel's default;
// closing pipes gives their capacity back, and idle pipes keep theirs.
func TestPipeSizesSpendABudget(t *testing.T) {
	pp := &PipePool{MaxIdle: 16, big: 2 * pipeBig, mid: 2*pipeBig + 2*pipeMid}
	def := defaultPipeSize(t)
	want := []int{pipeBig, pipeBig, pipeMid, pipeMid, def, def}
	var ps []*pipe
	for i, w := range want {
		p := pp.get()
		if p == nil {
			t.Fatalf("pipe %d: none", i)
		}
		ps = append(ps, p)
		got, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got != w || p.size != w {
			t.Errorf("pipe %d: %d bytes (recorded %d), want %d", i, got, p.size, w)
		}
	}
	total := 2*pipeBig + 2*pipeMid + 2*def
	if pp.capacity != total {
		t.Errorf("capacity %d, want %d", pp.capacity, total)
	}

	// Two big pipes closed make room for one more big one (the budget
	// counts every open pipe); an idle pipe is reused as it is.
	pp.discard(ps[0])
	pp.discard(ps[1])
	ps = ps[2:]
	p := pp.get()
	if p.size != pipeBig {
		t.Errorf("after two big pipes closed: %d, want %d", p.size, pipeBig)
	}
	ps = append(ps, p)
	total -= pipeBig
	pp.put(ps[0])
	if p := pp.get(); p != ps[0] {
		t.Error("an idle pipe was not reused")
	}
	for _, p := range ps {
		pp.put(p)
	}
	if pp.capacity != total {
		t.Errorf("capacity with every pipe idle %d, want %d", pp.capacity, total)
	}
	pp.Flush()
	if pp.capacity != 0 || pp.Open() != 0 {
		t.Errorf("after Flush: capacity %d, open %d", pp.capacity, pp.Open())
	}
}

// The default pool's budgets follow the soft limit: a quarter of it (at
// most 16 MiB) in 1 MiB pipes, and so on.
func TestPipeBudgetFromSoftLimit(t *testing.T) {
	pp := &PipePool{}
	pp.capacity = min(bigBudget, softLimit()/4) - pipeBig
	if s := pp.sizeFor(); s != pipeBig {
		t.Errorf("one big pipe left in the budget: asked %d", s)
	}
	pp.capacity += pipeBig
	if s := pp.sizeFor(); s != pipeMid {
		t.Errorf("big budget spent: asked %d, want %d", s, pipeMid)
	}
	pp.capacity = min(midBudget, softLimit()*3/4)
	if s := pp.sizeFor(); s != 0 {
		t.Errorf("both budgets spent: asked %d, want the default", s)
	}
}

func defaultPipeSize(t *testing.T) int {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	n, err := unix.FcntlInt(uintptr(fds[1]), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
