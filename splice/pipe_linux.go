package splice

import (
	"sync"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked of each pipe with F_SETPIPE_SZ. Larger
// pipes mean fewer splice calls per megabyte; the kernel caps it at
// /proc/sys/fs/pipe-max-size (1 MiB by default) and keeps the default 64 KiB
// when it refuses.
const pipeSize = 256 << 10

type pipe struct{ r, w int }

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// PipePool keeps a few empty pipes for reuse, so a burst of bytes does not
// cost a pipe2 call. Pipes are taken only while bytes are in flight; at most
// MaxIdle stay open when unused.
type PipePool struct {
	MaxIdle int // zero means 16

	mu   sync.Mutex
	idle []*pipe
	open int // pipes open, idle or in use
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
	pp.open++
	pp.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		pp.mu.Lock()
		pp.open--
		pp.mu.Unlock()
		return nil
	}
	// Best effort: a refused size leaves the default 64 KiB.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}
}

// put gives back an empty pipe.
func (pp *PipePool) put(p *pipe) {
	max := pp.MaxIdle
	if max == 0 {
		max = 16
	}
	pp.mu.Lock()
	if len(pp.idle) < max {
		pp.idle = append(pp.idle, p)
		pp.mu.Unlock()
		return
	}
	pp.open--
	pp.mu.Unlock()
	p.close()
}

// discard closes a pipe that may still hold bytes.
func (pp *PipePool) discard(p *pipe) {
	pp.mu.Lock()
	pp.open--
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
	pp.mu.Unlock()
	for _, p := range idle {
		p.close()
	}
}
