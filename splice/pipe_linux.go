package splice

import (
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Pipe sizes. A bigger pipe moves more per splice(2) pair: 1 MiB pipes took
// about a quarter off l4lb's CPU per GB of a single stream against 256 KiB
// (docs/PERFORMANCE.md). But the kernel counts every pipe's capacity against
// its owner's /proc/sys/fs/pipe-user-pages-soft (64 MiB by default), and an
// unprivileged process past it (l4lb under systemd's DynamicUser) gets
// two-page pipes; and a full pipe pins its capacity of kernel memory while
// its receiver is slow. So a pool spends a budget: a new pipe is asked to be
// pipeBig while the pool's open pipes (idle or in use) hold at most a
// quarter of the soft limit, capped at bigBudget; pipeMid while they hold at
// most half, capped at midBudget (half, so that the old and the new process
// of an upgrade, one user, stay within the limit together); past that it
// keeps the kernel's default (16 pages). A size the kernel refuses
// (pipe-max-size below 1 MiB, the soft limit reached) is tried one step
// smaller; a pipe is never made smaller than it was created.
const (
	pipeBig   = 1 << 20
	pipeMid   = 256 << 10
	bigBudget = 16 << 20 // 16 pipes of pipeBig
	midBudget = 32 << 20 // then 64 more of pipeMid
)

// softLimit is pipe-user-pages-soft in bytes, read once. 64 MiB if it
// cannot be read (the systemd unit's ProcSubset=pid hides /proc/sys) or is
// 0 (no limit).
var softLimit = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			return n * os.Getpagesize()
		}
	}
	return 64 << 20
})

type pipe struct {
	r, w int
	size int // capacity in bytes
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// PipePool keeps a few empty pipes for reuse, so a burst of bytes does not
// cost a pipe2 call. Pipes are taken only while bytes are in flight; at most
// MaxIdle stay open when unused.
type PipePool struct {
	MaxIdle int // zero means 16

	mu       sync.Mutex
	idle     []*pipe
	open     int // pipes open, idle or in use
	capacity int // their sizes' sum, plus sizes being asked for

	// The budgets (bytes of capacity; zero: from the soft limit). Tests
	// set them; -1: no pipes of that size.
	big, mid int
}

var defaultPipes = &PipePool{}

// DefaultPipes returns the pool sessions use when Options.Pipes is nil.
func DefaultPipes() *PipePool { return defaultPipes }

// get returns an empty pipe, or nil if none can be made (EMFILE, ENFILE).
func (pp *PipePool) get() *pipe {
	pp.mu.Lock()
	if n := len(pp.idle); n > 0 {
		p := pp.idle[n-1]
		pp.idle = pp.idle[:n-1]
		pp.mu.Unlock()
		return p
	}
	want := pp.sizeFor(pp.capacity)
	pp.open++
	pp.capacity += want // reserved, so that concurrent gets see it
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		pp.mu.Lock()
		pp.open--
		pp.capacity -= want
		pp.mu.Unlock()
		return nil
	}
	size := setSize(fds[1], want)
	pp.mu.Lock()
	pp.capacity += size - want
	pp.mu.Unlock()
	return &pipe{r: fds[0], w: fds[1], size: size}
}

// sizeFor returns the size to ask of a new pipe while open pipes hold used
// bytes, or 0 for the kernel's default. pp.mu is held.
func (pp *PipePool) sizeFor(used int) int {
	big, mid := pp.big, pp.mid
	if big == 0 {
		big = min(bigBudget, softLimit()/4)
	}
	if mid == 0 {
		mid = min(midBudget, softLimit()/2)
	}
	switch {
	case used+pipeBig <= big:
		return pipeBig
	case used+pipeMid <= mid:
		return pipeMid
	}
	return 0
}

// setSize asks the pipe whose write end is w for want bytes (0: none), one
// step smaller if refused, never less than it has, and returns the size it
// has then.
func setSize(w, want int) int {
	have, err := unix.FcntlInt(uintptr(w), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		have = 16 * os.Getpagesize() // the kernel's default
	}
	for _, size := range []int{pipeBig, pipeMid} {
		if size > want || size <= have {
			continue
		}
		if n, err := unix.FcntlInt(uintptr(w), unix.F_SETPIPE_SZ, size); err == nil {
			return n
		}
	}
	return have
}

// put gives back an empty pipe. It is kept for reuse unless MaxIdle pipes
// are idle already, or it is smaller than a new pipe would be now (made
// when the budget was spent, it would otherwise be reused in place of a
// bigger one for as long as the process runs).
func (pp *PipePool) put(p *pipe) {
	max := pp.MaxIdle
	if max == 0 {
		max = 16
	}
	pp.mu.Lock()
	if len(pp.idle) < max && pp.sizeFor(pp.capacity-p.size) <= p.size {
		pp.idle = append(pp.idle, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	pp.discard(p)
}

// discard closes a pipe that may still hold bytes.
func (pp *PipePool) discard(p *pipe) {
	pp.mu.Lock()
	pp.open--
	pp.capacity -= p.size
	pp.mu.Unlock()
	p.close()
}

// Open returns the number of pipes open (idle or in use). Each holds 2 fds.
func (pp *PipePool) Open() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.open
}

// Idle returns the number of idle pipes kept for reuse.
func (pp *PipePool) Idle() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return len(pp.idle)
}

// Flush closes every idle pipe.
func (pp *PipePool) Flush() {
	pp.mu.Lock()
	idle := pp.idle
	pp.idle = nil
	pp.open -= len(idle)
	for _, p := range idle {
		pp.capacity -= p.size
	}
	pp.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}
