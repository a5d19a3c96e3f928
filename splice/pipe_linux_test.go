package splice

import (
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// New pipes are 1 MiB while the pool's open pipes hold at most the big
// budget, then 256 KiB up to the mid budget, then the kernel's default;
// closing pipes gives their capacity back; an idle pipe is reused as it is.
func TestPipeSizesSpendABudget(t *testing.T) {
	skipUnlessBigPipes(t)
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
	if pp.capacity != total {
		t.Errorf("capacity %d, want %d", pp.capacity, total)
	}
	for _, p := range ps {
		pp.discard(p)
	}
	if pp.capacity != 0 || pp.Open() != 0 {
		t.Errorf("every pipe closed: capacity %d, open %d", pp.capacity, pp.Open())
	}
}

// The default pool's budgets follow the soft limit: up to a quarter of it
// (at most 16 MiB) in 1 MiB pipes, up to half (at most 32 MiB) in 256 KiB
// ones.
func TestPipeBudgetFromSoftLimit(t *testing.T) {
	pp := &PipePool{}
	pp.capacity = min(bigBudget, softLimit()/4) - pipeBig
	if s := pp.sizeFor(pp.capacity); s != pipeBig {
		t.Errorf("one big pipe left in the budget: asked %d", s)
	}
	pp.capacity += pipeBig
	if s := pp.sizeFor(pp.capacity); s != pipeMid {
		t.Errorf("big budget spent: asked %d, want %d", s, pipeMid)
	}
	pp.capacity = min(midBudget, softLimit()/2)
	if s := pp.sizeFor(pp.capacity); s != 0 {
		t.Errorf("both budgets spent: asked %d, want the default", s)
	}
}

// A pipe made small while the budget was spent is closed when given back
// once there is room again, so that the next get makes a big one; past
// MaxIdle even a big one is closed.
func TestPutDropsSmallAndSurplusPipes(t *testing.T) {
	skipUnlessBigPipes(t)
	pp := &PipePool{MaxIdle: 1, big: pipeBig, mid: -1}
	big := pp.get()
	small := pp.get() // over the budget: the kernel's default
	if big.size != pipeBig || small.size >= pipeBig {
		t.Fatalf("sizes %d and %d, want %d and the default", big.size, small.size, pipeBig)
	}
	pp.discard(big) // room for a big one again
	pp.put(small)
	if pp.Idle() != 0 || pp.Open() != 0 {
		t.Fatalf("a small pipe was kept while a big one fits: idle %d, open %d", pp.Idle(), pp.Open())
	}
	a, b := pp.get(), pp.get()
	if a.size != pipeBig {
		t.Fatalf("after the small pipe went: %d, want %d", a.size, pipeBig)
	}
	pp.put(b) // default-sized, but nothing bigger fits now (a holds the budget): kept
	pp.put(a) // MaxIdle 1 reached: closed
	if pp.Idle() != 1 || pp.Open() != 1 || pp.capacity != b.size {
		t.Errorf("idle %d, open %d, capacity %d; want 1, 1, %d", pp.Idle(), pp.Open(), pp.capacity, b.size)
	}
	pp.Flush()
}

// Gets and puts from many goroutines leave the accounting exact: with
// every pipe given back and the idle ones flushed, nothing is open and no
// capacity is counted.
func TestPipePoolConcurrent(t *testing.T) {
	pp := &PipePool{MaxIdle: 4, big: 4 * pipeBig, mid: 4*pipeBig + 8*pipeMid}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				p := pp.get()
				if p == nil {
					t.Error("no pipe")
					return
				}
				if (g+i)%3 == 0 {
					pp.discard(p)
				} else {
					pp.put(p)
				}
			}
		}()
	}
	wg.Wait()
	pp.mu.Lock()
	var idle int
	for _, p := range pp.idle {
		idle += p.size
	}
	if pp.capacity != idle || pp.open != len(pp.idle) {
		t.Errorf("capacity %d (idle pipes hold %d), open %d (idle %d)", pp.capacity, idle, pp.open, len(pp.idle))
	}
	pp.mu.Unlock()
	pp.Flush()
	if pp.capacity != 0 || pp.Open() != 0 {
		t.Errorf("after Flush: capacity %d, open %d", pp.capacity, pp.Open())
	}
}

// skipUnlessBigPipes skips a test that needs 1 MiB pipes where the kernel
// refuses them (pipe-max-size lowered, or this user past its pipe limit).
func skipUnlessBigPipes(t *testing.T) {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeBig); err != nil {
		t.Skipf("a 1 MiB pipe is refused here: %v", err)
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
