package splice

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/rawsys"
	"github.com/l4lb/l4lb/internal/uring"
	"golang.org/x/sys/unix"
)

// The engine runs sessions on a few event loops instead of goroutines: each
// loop owns an epoll set holding both sockets of each of its sessions, and
// moves bytes when epoll says a socket is ready. An idle session costs its
// two sockets and its state (a few hundred bytes), no goroutine stack.
//
// Waiting. A loop's epoll fd is itself pollable: it is readable when it has
// events. The loop hands it to Go's netpoller (os.NewFile) and waits on it
// with RawConn.Read, so it parks like any goroutine waiting for a socket,
// holds no thread while idle, and wakes through the scheduler rather than
// from a blocking epoll_wait that the runtime would have to hand its P away
// from. Its timers are the read deadline of that file. Go's netpoller also
// keeps its own (unused) registration of every socket: those events arrive
// together with the epoll fd's, so they cost no extra wake-up.
//
// Edges. Sockets are registered edge-triggered with EPOLLRDHUP, and the loop
// sees each event's flags, which Go's netpoller does not pass on. That is
// what allows the small-message path to stop after a short read (see
// flow.pump).

const maxEvents = 128

// evSlot marks the eventfd's epoll entry.
const evSlot = -1

// epoch is the origin of the loops' monotonic clock (ns since epoch).
var epoch = time.Now()

func mono() int64 { return int64(time.Since(epoch)) }

// engine is a set of loops; sessions are spread over them round-robin.
type engine struct {
	loops []*loop
	next  atomic.Uint32
}

var (
	engineMu    sync.Mutex
	engineCur   atomic.Pointer[engine]
	engineLoops int // loops the engine starts with; 0 = DefaultLoops(). Under engineMu
)

// SetLoops sets how many loops the engine runs: n >= 1, or 0 for
// DefaultLoops. It must come before the engine starts (at the first session
// or StartEngine): its loops live as long as the process, so asking for
// another count once it runs is an error, and asking for the count it runs
// is not.
func SetLoops(n int) error {
	if n < 0 {
		return fmt.Errorf("splice: %d loops", n)
	}
	engineMu.Lock()
	defer engineMu.Unlock()
	if e := engineCur.Load(); e != nil {
		if want := ResolveLoops(n); want != len(e.loops) {
			return fmt.Errorf("the engine already runs %d loops, not %d (the count is set once per process)", len(e.loops), want)
		}
		return nil
	}
	engineLoops = n
	return nil
}

// StartEngine starts the package's engine now rather than at the first
// session that needs it. The engine lives as long as the process, like Go's
// netpoller: each of its loops (DefaultLoops of them, or as SetLoops said)
// is a goroutine, an epoll fd and an eventfd. Tests that count goroutines
// and fds call it before they take their baseline, so the engine is not
// taken for a leak. An error means the engine cannot start (out of fds,
// say): sessions then run on the goroutine copier, and the next session
// tries again.
func StartEngine() error {
	_, err := defaultEngine()
	return err
}

func defaultEngine() (*engine, error) {
	if e := engineCur.Load(); e != nil {
		return e, nil
	}
	engineMu.Lock()
	defer engineMu.Unlock()
	if e := engineCur.Load(); e != nil {
		return e, nil
	}
	e, err := newEngine(ResolveLoops(engineLoops))
	if err != nil {
		return nil, err
	}
	engineCur.Store(e)
	return e, nil
}

// newEngine makes n loops and starts their goroutines. The package's engine
// lives as long as the process, like Go's own netpoller.
func newEngine(n int) (*engine, error) {
	e := &engine{}
	for i := 0; i < n; i++ {
		l, err := newLoop()
		if err != nil {
			for _, l := range e.loops {
				l.file.Close() // ends its goroutine
				unix.Close(l.evfd)
				if l.ring != nil {
					l.ring.Close()
				}
			}
			return nil, err
		}
		e.loops = append(e.loops, l)
	}
	for _, l := range e.loops {
		go l.run()
	}
	return e, nil
}

func (e *engine) pick() *loop {
	// In uint32: int(...) of the counter goes negative past 2^31 on 32-bit
	// builds, and a negative index panics.
	return e.loops[e.next.Add(1)%uint32(len(e.loops))]
}

// loop is one event loop. Fields below mu are owned by the loop's goroutine.
type loop struct {
	epfd int
	evfd int
	file *os.File // epfd, registered with Go's netpoller
	rc   syscall.RawConn

	mu    sync.Mutex
	cmds  []command
	woken bool // an eventfd write is on its way: later commands need not write

	pollFn func(uintptr) bool
	spare  []command
	sess   []*Session // by slot; nil = free
	gen    []uint32   // by slot: bumped when a slot is freed
	free   []int32
	timers timerHeap
	armed  int64 // deadline in force on file (mono ns); 0 none, -1 unknown
	now    int64 // mono ns, taken once per batch of events
	events [maxEvents]unix.EpollEvent
	ring   *uring.Ring // batched writes (uring_linux.go); nil: write(2)
	doneFn func(uint64, int32)
	// ringSent and ringFull count sends completed through ring, and those
	// of them that found dst full (read by tests).
	ringSent, ringFull atomic.Uint64
	// orphans holds the buffers of sends whose session ended before
	// their completion was read, by completion.
	orphans map[uint64]*[]byte
}

// command is what other goroutines ask of a loop: add s, or abort it.
type command struct {
	s      *Session
	abort  bool
	reason string
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	// Edge-triggered, and never read: every write(2) to an eventfd wakes
	// its waiters, so each one is a new edge; the counter (+1 a write)
	// cannot overflow in practice.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: evSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// os.NewFile registers a non-blocking fd with the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	l := &loop{epfd: epfd, evfd: evfd, file: os.NewFile(uintptr(epfd), "splice-epoll")}
	rc, err := l.file.SyscallConn()
	if err != nil {
		l.file.Close()
		unix.Close(evfd)
		return nil, err
	}
	l.rc = rc
	l.pollFn = l.poll
	l.ring = newLoopRing(evfd)
	l.doneFn = l.sent
	return l, nil
}

// run is the body of a loop's goroutine.
func (l *loop) run() {
	for {
		err := l.rc.Read(l.pollFn)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return // the file was closed (newEngine failed half-way)
		}
		// The nearest timer is due. The file's deadline is in the
		// past now and must be moved before the next Read.
		l.now = mono()
		l.expire()
		l.armed = -1
		l.arm()
	}
}

// poll is the RawConn.Read callback: it handles every event ready now, then
// returns false to wait for the next (true never: run's Read only returns
// on the deadline or close).
func (l *loop) poll(uintptr) bool {
	for {
		n, err := rawsys.EpollWait(l.epfd, l.events[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			panic("splice: epoll_wait: " + err.Error()) // EBADF, EFAULT: a bug
		}
		l.now = mono()
		cmds := false
		for i := range l.events[:n] {
			ev := &l.events[i]
			if ev.Fd == evSlot {
				cmds = true
				continue
			}
			l.event(ev.Fd>>1, int(ev.Fd&1), uint32(ev.Pad), ev.Events)
		}
		if cmds {
			l.commands()
		}
		l.expire()
		l.submit()
		// Fewer events than asked for means epoll had no more ready.
		// Any later one makes the epoll fd readable again and wakes the
		// netpoller (the epoll fd is edge-triggered there too, and each
		// new event is a new edge), so there is no need to ask again.
		if n < len(l.events) {
			break
		}
	}
	l.arm()
	return false
}

// arm sets the file's read deadline to the nearest timer.
func (l *loop) arm() {
	var next int64
	if len(l.timers) > 0 {
		next = l.timers[0].eng.timerAt
	}
	if next == l.armed {
		return
	}
	l.armed = next
	if next == 0 {
		l.file.SetReadDeadline(time.Time{})
		return
	}
	l.file.SetReadDeadline(epoch.Add(time.Duration(next)))
}

// send queues c for the loop and wakes it if it may be waiting.
func (l *loop) send(c command) {
	l.mu.Lock()
	l.cmds = append(l.cmds, c)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		// Raw: a write to a non-blocking eventfd never blocks, and
		// unix.Write's entersyscall would wake the runtime's sysmon
		// thread whenever it sleeps (every new connection, at a few
		// thousand a second), which then polls every 20 µs for a while.
		for {
			_, err := rawsys.Write(l.evfd, one[:])
			if err != unix.EINTR {
				break
			}
		}
	}
}

func (l *loop) commands() {
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = l.spare[:0]
	l.woken = false
	l.mu.Unlock()
	for i := range cmds {
		c := cmds[i]
		cmds[i] = command{}
		if c.abort {
			switch {
			case c.s.eng.registered():
				l.end(c.s, EndAborted, nil, c.reason, nil)
			case c.s.goroutine():
				// add could not register it: the copier runs it.
				c.s.finish(EndAborted, nil, c.reason, nil)
			}
			continue
		}
		l.add(c.s)
	}
	l.spare = cmds
}

// add registers s's sockets and arms its idle timer. The sockets' first
// events (EPOLLOUT at least: they are connected) start the flows.
func (l *loop) add(s *Session) {
	e := &s.eng
	s.mu.Lock()
	pre, reason := s.preAbort, s.preReason
	s.mu.Unlock()
	if pre {
		l.end(s, EndAborted, nil, reason, nil)
		return
	}
	var slot int32
	if n := len(l.free); n > 0 {
		slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		slot = int32(len(l.sess))
		l.sess = append(l.sess, nil)
		l.gen = append(l.gen, 0)
	}
	l.sess[slot] = s
	e.slot = slot
	for i := range e.sides {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
			Fd:     slot<<1 | int32(i),
			Pad:    int32(l.gen[slot]),
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, e.sides[i].fd, &ev); err != nil {
			// ENOMEM, ENOSPC (max_user_watches): this session goes to
			// the goroutine copier instead.
			if i == 1 {
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, e.sides[0].fd, nil)
			}
			l.freeSlot(slot)
			e.slot = -1
			done := e.done
			e.done = nil
			s.mu.Lock()
			s.mode = modeGoroutine
			s.mu.Unlock()
			go runFallback(s, done)
			return
		}
	}
	if idle := int64(s.opt.IdleTimeout); idle > 0 {
		e.limit = idle
		e.last = l.now
		l.schedule(s, addSat(l.now, idle))
	}
}

func (l *loop) freeSlot(slot int32) {
	l.sess[slot] = nil
	l.gen[slot]++
	l.free = append(l.free, slot)
}

// event handles one epoll event for side i of the session in slot.
func (l *loop) event(slot int32, i int, gen uint32, ev uint32) {
	if int(slot) >= len(l.sess) || l.gen[slot] != gen {
		return // the session of this entry has ended (and its slot may be reused)
	}
	s := l.sess[slot]
	if s == nil {
		return
	}
	out := &s.eng.flows[i]  // reads side i
	in := &s.eng.flows[1-i] // writes side i
	if ev&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		out.readable = true
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			out.hup = true
		}
		if ev&unix.EPOLLPRI != 0 {
			out.urgent = true
		}
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		in.full = false
	}
	if ev&unix.EPOLLERR != 0 && out.eof {
		out.errAfterEOF = true
	}
	if !l.resetAfterEOF(s, i) {
		return
	}
	if l.pump(s, out) {
		l.pump(s, in)
	}
}

// resetAfterEOF passes on a reset of side i that came after side i's FIN,
// once nothing is left to write to side i: nothing would read or write it
// until the other side speaks. It returns false when the session ended.
func (l *loop) resetAfterEOF(s *Session, i int) bool {
	out := &s.eng.flows[i]
	if !out.errAfterEOF || s.eng.flows[1-i].pending() {
		return true
	}
	out.errAfterEOF = false
	if e, err := unix.GetsockoptInt(out.src.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && e != 0 {
		l.end(s, out.srcEnd, os.NewSyscallError("read", syscall.Errno(e)), "", out.dst)
		return false
	}
	return true
}

// submit hands the round's queued sends to the kernel and goes on with
// each flow as its send returned, until no send is queued or unreported.
func (l *loop) submit() {
	if l.ring == nil {
		return
	}
	for {
		l.ring.Submit()
		if !l.ring.Reap(l.doneFn) && l.ring.Queued() == 0 {
			return
		}
	}
}

// sentID names flow i of the session in slot for its send's completion.
func sentID(slot int32, gen uint32, i int) uint64 {
	return uint64(gen)<<32 | uint64(slot)<<1 | uint64(i)
}

// sent goes on with the flow whose send completed with res, as flush
// would after a write(2) that returned the same.
func (l *loop) sent(ud uint64, res int32) {
	if len(l.orphans) > 0 {
		if b, ok := l.orphans[ud]; ok {
			delete(l.orphans, ud) // its session ended first
			smallPool.Put(b)
			return
		}
	}
	slot, gen, i := int32(uint32(ud)>>1), uint32(ud>>32), int(ud&1)
	if int(slot) >= len(l.sess) || l.gen[slot] != gen || l.sess[slot] == nil {
		return // the session ended
	}
	s := l.sess[slot]
	f := &s.eng.flows[i]
	if !f.sending {
		return
	}
	f.sending = false
	l.ringSent.Add(1)
	switch {
	case res > 0:
		f.off += int(res)
		f.n.Add(uint64(res))
		if f.off == f.end {
			f.putBuf() // all written: an idle flow holds no buffer
		}
	case res == -int32(unix.EAGAIN):
		f.full = true
		l.ringFull.Add(1)
	case res == -int32(unix.EINTR):
	case res == 0:
		l.end(s, f.dstEnd, errors.New("send moved 0 bytes"), "", f.src)
		return
	default:
		l.end(s, f.dstEnd, os.NewSyscallError("write", syscall.Errno(-res)), "", f.src)
		return
	}
	if l.pump(s, f) {
		l.resetAfterEOF(s, 1-i)
	}
}

// expire ends the sessions whose timer is really due. Activity only stores
// last; an entry found early is moved to last+limit.
func (l *loop) expire() {
	for len(l.timers) > 0 {
		s := l.timers[0]
		e := &s.eng
		if e.timerAt > l.now {
			return
		}
		if dl := addSat(e.last, e.limit); dl > l.now {
			e.timerAt = dl
			l.timers.down(0)
			continue
		}
		end := EndIdle
		if e.halfDone {
			end = EndFinTimeout
		}
		l.end(s, end, nil, "", nil)
	}
}

// schedule sets s's timer to fire at at.
func (l *loop) schedule(s *Session, at int64) {
	s.eng.timerAt = at
	if s.eng.hidx < 0 {
		l.timers.push(s)
		return
	}
	l.timers.fix(s.eng.hidx)
}

// end finishes s: both sockets leave the epoll set, the side given as reset
// gets SO_LINGER 0 so its peer sees a reset, both are closed, pipes and
// buffers go back, and s's done is called.
func (l *loop) end(s *Session, how End, err error, reason string, reset *side) {
	// Queued sends go out before any socket closes: an fd number closed
	// here may be a new connection's by the time the loop submits.
	for l.ring != nil && l.ring.Queued() > 0 {
		l.ring.Submit()
	}
	e := &s.eng
	if e.registered() {
		// A send whose completion is not read yet keeps its buffer
		// until it is: the kernel may still be reading it.
		for i := range e.flows {
			if f := &e.flows[i]; f.sending {
				if l.orphans == nil {
					l.orphans = make(map[uint64]*[]byte)
				}
				l.orphans[sentID(e.slot, l.gen[e.slot], i)] = f.buf
				f.buf, f.off, f.end, f.sending = nil, 0, 0, false
			}
		}
		// No EPOLL_CTL_DEL: both sockets are closed below, and closing
		// the last fd of a file takes it out of every epoll set. (Were
		// an fd dup'ed elsewhere, its events would still name this
		// slot's old generation and be ignored.)
		l.freeSlot(e.slot)
		e.slot = -1
	}
	if e.hidx >= 0 {
		l.timers.remove(s)
	}
	for i := range e.flows {
		e.flows[i].release(s.opt.Pipes)
	}
	if reset != nil {
		if sl, ok := reset.c.(interface{ SetLinger(int) error }); ok {
			sl.SetLinger(0)
		}
	}
	s.a.Close()
	s.b.Close()
	s.over.Store(true)
	res := Result{End: how, Err: err, Reason: reason, Spliced: s.spliced.Load()}
	res.AToB, res.BToA = s.Bytes()
	done := e.done
	e.done = nil
	done(res)
}

// engState is the part of a Session the engine owns. Once the session is
// sent to its loop, only the loop's goroutine touches it.
type engState struct {
	done    func(Result)
	sides   [2]side
	flows   [2]flow // A to B, B to A
	slot    int32   // -1 while not in the epoll set
	eofs    int     // directions ended with EOF
	last    int64   // last activity (mono ns)
	limit   int64   // inactivity bound in force (ns, 0 = none)
	timerAt int64   // when its timer fires (mono ns), while in the heap
	hidx    int     // index in the loop's timer heap, -1 = none
	// halfDone: one direction has ended with a half-close.
	halfDone bool
}

func (e *engState) registered() bool { return e.slot >= 0 }

type side struct {
	c   net.Conn // closed, shut and lingered through its methods
	fd  int
	tcp bool // a TCP socket: a short read proves its queue empty (see flow.pump)
}

// sockFD returns c's socket fd when c is a connection type whose sockets
// splice(2) and the engine accept. Wrappers are not unwrapped here: callers
// pass the raw *net.TCPConn so that this path stays on. The fd stays owned
// by c; the session closes it with c.Close.
func sockFD(c net.Conn) (int, bool) {
	var rc syscall.RawConn
	var err error
	switch c := c.(type) {
	case *Socket:
		return c.fd, true
	case *net.TCPConn:
		rc, err = c.SyscallConn()
	case *net.UnixConn:
		rc, err = c.SyscallConn()
	default:
		return 0, false
	}
	if err != nil {
		return 0, false
	}
	fd := -1
	if rc.Control(func(f uintptr) { fd = int(f) }) != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// isTCP reports whether c is a TCP socket (see side.tcp).
func isTCP(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *Socket:
		return true
	}
	return false
}

// startEngine hands s to a loop. It returns false when s cannot run there:
// a side is not a TCP or unix socket, or there is no engine.
func (s *Session) startEngine(done func(Result)) bool {
	fa, ok := sockFD(s.a)
	if !ok {
		return false
	}
	fb, ok := sockFD(s.b)
	if !ok {
		return false
	}
	eng, err := defaultEngine()
	if err != nil {
		return false
	}
	l := eng.pick()
	e := &s.eng
	e.done = done
	e.slot = -1
	e.hidx = -1
	ta, tb := isTCP(s.a), isTCP(s.b)
	e.sides[0] = side{c: s.a, fd: fa, tcp: ta}
	e.sides[1] = side{c: s.b, fd: fb, tcp: tb}
	// Both flows start in small mode: most connections open with a short
	// message (a request, a greeting), which read(2) and write(2) move in
	// two calls where a pipe takes three (the third to find the socket
	// empty); a first read that fills the buffer switches to splice(2).
	e.flows[0] = flow{src: &e.sides[0], dst: &e.sides[1], n: &s.aToB, srcEnd: EndResetA, dstEnd: EndResetB, small: true}
	e.flows[1] = flow{src: &e.sides[1], dst: &e.sides[0], n: &s.bToA, srcEnd: EndResetB, dstEnd: EndResetA, small: true}
	// Sent under s.mu, so an Abort that sees modeEngine queues its
	// command after this one.
	s.mu.Lock()
	s.mode, s.lp = modeEngine, l
	l.send(command{s: s})
	s.mu.Unlock()
	return true
}

func (s *Session) goroutine() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode == modeGoroutine
}

// abortEngine asks loop l, which runs s, to abort it.
func (s *Session) abortEngine(l *loop, reason string) {
	if !s.over.Load() {
		l.send(command{s: s, abort: true, reason: reason})
	}
}

// timerHeap is a binary min-heap of sessions on eng.timerAt. Each session
// with a timer is in it once (eng.hidx is its index), and leaves it when it
// ends, so sessions that end long before their idle timeout leave nothing
// behind.
type timerHeap []*Session

func (h timerHeap) less(i, j int) bool { return h[i].eng.timerAt < h[j].eng.timerAt }

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].eng.hidx = i
	h[j].eng.hidx = j
}

func (h *timerHeap) push(s *Session) {
	s.eng.hidx = len(*h)
	*h = append(*h, s)
	h.up(s.eng.hidx)
}

// remove takes s out of the heap.
func (h *timerHeap) remove(s *Session) {
	i := s.eng.hidx
	n := len(*h) - 1
	if i != n {
		h.swap(i, n)
	}
	(*h)[n] = nil
	*h = (*h)[:n]
	s.eng.hidx = -1
	if i != n {
		h.fix(i)
	}
}

// fix restores the heap after the entry at i changed.
func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i0 int) bool {
	i, n := i0, len(h)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if c+1 < n && h.less(c+1, c) {
			c++
		}
		if !h.less(c, i) {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > i0
}

// addSat is a+b for non-negative b, saturated at the largest int64, so that
// a timeout of thousands of years (idle_timeout as "never") is a deadline
// far away, not one in the past.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
