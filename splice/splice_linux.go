package splice

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/l4lb/l4lb/internal/rawsys"
	"golang.org/x/sys/unix"
)

// chunk is the most one splice(2) call asks for: the largest pipe size
// (the kernel moves no more than the pipe holds).
const chunk = pipeBig

// smallBuf is the buffer of the small-message path: a read that fills it
// switches the direction to splice(2) for the rest of the burst.
const smallBuf = 16 << 10

var smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

// flow is one direction of an engine session, src to dst, as a state
// machine driven by epoll events. It has two modes.
//
// Bulk mode splices src to a pipe and the pipe to dst, until splice(2) from
// src says EAGAIN (a short splice is not a sign that the socket is drained:
// the pipe may have run out of slots). When a whole burst turned out smaller
// than smallBuf, the flow switches to small-message mode: read(2) into a
// pooled buffer and write(2) it out, which costs less CPU than moving a few
// bytes through a pipe (no pipe from the pool, no page references). A read
// that fills the buffer switches back to bulk mode.
//
// Invariants: a pipe is held only while bytes are in flight (from the first
// splice of a burst to the EAGAIN that ends it, or while dst is full); it
// is given back to the pool empty, and one that may still hold bytes (dst
// failed, or the session ended) is closed instead. The small buffer is held
// only while it holds bytes not yet written. So an idle session holds no
// pipe and no buffer.
type flow struct {
	src, dst       *side
	n              *atomic.Uint64 // bytes delivered to dst
	srcEnd, dstEnd End            // how the session ends when src or dst fails

	// readable: src may have bytes (or EOF, or an error) not yet read.
	// Set by every EPOLLIN-ish event, cleared by EAGAIN or by a short
	// read in small mode. Reading also stops while dst is full, and this
	// stays set so reading resumes once the pending bytes are written.
	readable bool
	// hup: an event for src carried EPOLLRDHUP, EPOLLHUP or EPOLLERR, so
	// src must be read until EOF or an error, short reads or not.
	hup bool
	// urgent: an event for src carried EPOLLPRI, TCP urgent data (MSG_OOB,
	// telnet's interrupt). A read stops short at the urgent mark with more
	// bytes queued behind it, so until EAGAIN a short read proves nothing;
	// and splice(2) stops at the mark for good (tcp_read_sock never steps
	// over the urgent byte), so bulk mode hands over to read(2), which
	// skips it. The urgent byte itself is dropped, as HAProxy and nginx do:
	// the ordinary stream goes on.
	urgent bool
	full   bool // dst said EAGAIN (or took part of a write): wait for EPOLLOUT
	eof    bool // src reached EOF and dst's write half was shut
	// sending: buf[off:end] is queued on the loop's io_uring as a send
	// (uring_linux.go): nothing reads into buf or writes until it returns.
	sending bool
	// errAfterEOF: src reported an error after its EOF, to pass on once
	// nothing is left to write to it (loop.resetAfterEOF).
	errAfterEOF bool

	small    bool // small-message mode
	noSplice bool // splice refused (EINVAL) or no pipe fd: small mode for good
	moved    bool // splice(2) moved bytes at least once
	burst    int  // bytes spliced since src last said EAGAIN

	p        *pipe   // bulk mode: the pipe, holding pn bytes for dst
	pn       int     //
	buf      *[]byte // small mode: bytes buf[off:end] are for dst
	off, end int
}

// pending reports whether bytes read from src wait to be written to dst.
func (f *flow) pending() bool { return f.pn > 0 || f.off < f.end }

// release gives back the pipe and the buffer when the session ends.
func (f *flow) release(pp *PipePool) {
	if f.p != nil {
		if f.pn > 0 {
			pp.discard(f.p)
		} else {
			pp.put(f.p)
		}
		f.p, f.pn = nil, 0
	}
	f.putBuf()
}

// putBuf gives the small buffer back to the pool, if f holds one.
func (f *flow) putBuf() {
	if f.buf != nil {
		smallPool.Put(f.buf)
		f.buf, f.off, f.end = nil, 0, 0
	}
}

// pump moves what f can move now: it writes pending bytes to dst, then
// reads src while it may be readable and dst takes everything. It returns
// false when the session ended (s is then finished; touch nothing).
//
// The syscall this saves: in small mode a read shorter than the buffer
// from TCP means the receive queue was empty at that moment (tcp_recvmsg
// copies until the queue, backlog included, is exhausted; it stops early
// only at an urgent mark, which EPOLLPRI flags: see flow.urgent), so f
// waits for the next edge instead of reading again to EAGAIN. Unix sockets
// read on to EAGAIN: unix_stream_read_generic also stops after a message
// that carried SCM_RIGHTS, with more queued and no flag to say so. That is
// safe here, not on Go's netpoller, because of what the loop sees: epoll
// reports the socket's current mask when events are harvested, so a FIN or
// RST that had arrived by then shows as EPOLLRDHUP/EPOLLHUP/EPOLLERR on this
// very event (hup: read on until EOF or the error), and one that arrives
// after the harvest queues a new event, as any new data does (edge-triggered
// means every wake-up of the socket makes an edge). Go's netpoller consumes
// those edges and drops the flags, so a goroutine that waited after a short
// read could wait forever on a connection that had ended (PERFORMANCE.md,
// "Tried and not kept").
func (l *loop) pump(s *Session, f *flow) bool {
	for {
		if f.pending() {
			if f.full || f.sending {
				return true
			}
			if !l.flush(s, f) {
				return false
			}
			if f.full || f.sending {
				return true
			}
		}
		if f.eof || !f.readable {
			return true
		}
		if f.small || f.noSplice {
			if !l.readSmall(s, f) {
				return false
			}
			continue
		}
		if !l.readSplice(s, f) {
			return false
		}
	}
}

// readSmall does one read(2) from src into the buffer.
func (l *loop) readSmall(s *Session, f *flow) bool {
	if f.buf == nil {
		f.buf = smallPool.Get().(*[]byte)
	}
	n, err := rawsys.Read(f.src.fd, *f.buf)
	switch {
	case err == unix.EINTR:
		return true
	case err == unix.EAGAIN:
		f.readable, f.urgent = false, false
		f.putBuf()
		return true
	case err != nil:
		l.end(s, f.srcEnd, os.NewSyscallError("read", err), "", f.dst)
		return false
	case n == 0:
		f.putBuf()
		return l.srcEOF(s, f)
	}
	s.eng.last = l.now
	f.off, f.end = 0, n
	switch {
	case n == len(*f.buf):
		if !f.noSplice {
			f.small = false // a full buffer: bulk, splice the rest
			f.burst = 0
		}
	case !f.hup && !f.urgent && f.src.tcp:
		f.readable = false // a short read: the queue is empty (see pump)
	}
	return true
}

// readSplice does one splice(2) from src into the pipe.
func (l *loop) readSplice(s *Session, f *flow) bool {
	pp := s.opt.Pipes
	if f.p == nil {
		if f.p = pp.get(); f.p == nil {
			// Out of fds for a pipe (EMFILE): read/write from now on.
			f.noSplice = true
			return true
		}
	}
	n, err := rawsys.Splice(f.src.fd, f.p.w, chunk)
	switch {
	case err == unix.EINTR:
		return true
	case err == unix.EAGAIN && f.urgent:
		// Stopped at an urgent mark, or really empty: read(2) tells
		// (and steps over the urgent byte).
		pp.put(f.p)
		f.p = nil
		f.small = true
		f.burst = 0
		return true
	case err == unix.EAGAIN:
		// src has nothing more now: give the (empty) pipe back before
		// waiting, so idle connections hold no pipe.
		f.readable = false
		pp.put(f.p)
		f.p = nil
		if f.moved && f.burst < smallBuf {
			f.small = true // small messages: read/write from now on
		}
		f.burst = 0
		return true
	case err == unix.EINVAL && !f.moved:
		// This socket pair cannot splice: read/write, for good.
		pp.put(f.p)
		f.p = nil
		f.noSplice = true
		return true
	case err != nil:
		// The pipe was empty before this splice: it goes back so.
		pp.put(f.p)
		f.p = nil
		l.end(s, f.srcEnd, os.NewSyscallError("splice", err), "", f.dst)
		return false
	case n == 0:
		pp.put(f.p)
		f.p = nil
		// tcp_splice_read checks SOCK_DONE before sk_err, so a socket
		// closed by a peer's RST reads as EOF here where read(2) would
		// say ECONNRESET. SO_ERROR tells them apart (and a FIN leaves
		// it 0).
		if e, gerr := unix.GetsockoptInt(f.src.fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && e != 0 {
			l.end(s, f.srcEnd, os.NewSyscallError("splice", syscall.Errno(e)), "", f.dst)
			return false
		}
		return l.srcEOF(s, f)
	}
	if !f.moved {
		f.moved = true
		s.spliced.Store(true)
	}
	f.burst += int(n)
	f.pn = int(n)
	s.eng.last = l.now
	return true
}

// flush writes pending bytes to dst until they are all written (the buffer
// is then given back) or dst says EAGAIN (f.full set: EPOLLOUT will come).
// A write that takes only part of the bytes is followed by another, as the
// goroutine copier did, rather than taken to mean "full": only EAGAIN
// promises an edge (the kernel sets SOCK_NOSPACE on that path), while a
// short write can have other causes (splice_to_socket stops at an error
// after moving some pages, for one), and waiting for an EPOLLOUT that never
// comes would wedge the direction.
func (l *loop) flush(s *Session, f *flow) bool {
	for f.pn > 0 {
		m, err := rawsys.Splice(f.p.r, f.dst.fd, f.pn)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			f.full = true
			return true
		case err != nil:
			// The pipe still holds bytes: end discards it.
			l.end(s, f.dstEnd, os.NewSyscallError("splice", err), "", f.src)
			return false
		case m == 0:
			l.end(s, f.dstEnd, errors.New("splice to socket moved 0 bytes"), "", f.src)
			return false
		}
		f.pn -= int(m)
		f.n.Add(uint64(m))
	}
	for f.off < f.end {
		if l.ring != nil {
			i := 0
			if f == &s.eng.flows[1] {
				i = 1
			}
			if l.ring.Send(f.dst.fd, (*f.buf)[f.off:f.end], sentID(s.eng.slot, l.gen[s.eng.slot], i)) {
				f.sending = true // loop.sent goes on
				return true
			}
		}
		m, err := rawsys.Write(f.dst.fd, (*f.buf)[f.off:f.end])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			f.full = true
			return true
		case err != nil:
			l.end(s, f.dstEnd, os.NewSyscallError("write", err), "", f.src)
			return false
		}
		f.off += m
		f.n.Add(uint64(m))
	}
	f.putBuf()
	return true
}

// srcEOF passes on EOF from src: dst's write half is shut and the other
// direction keeps flowing. When both directions are done the session ends.
func (l *loop) srcEOF(s *Session, f *flow) bool {
	f.eof = true
	f.readable = false
	e := &s.eng
	if e.eofs == 1 {
		// The other direction is done too: the session ends, and closing
		// dst sends its FIN (dst sent its own and holds no unread bytes),
		// so a shutdown(2) first would only cost a syscall and a packet
		// processed on its own.
		e.eofs = 2
		l.end(s, EndClosed, nil, "", nil)
		return false
	}
	if cw, ok := f.dst.c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil {
			// ENOTCONN and the like: dst is gone; reset src as well.
			l.end(s, f.dstEnd, err, "", f.src)
			return false
		}
	}
	e.halfDone = true
	e.eofs = 1
	// From now on FinTimeout bounds inactivity, counted from now.
	if fin := int64(s.opt.FinTimeout); fin > 0 {
		if e.limit <= 0 || fin < e.limit {
			e.limit = fin
		}
		e.last = l.now
		l.schedule(s, addSat(l.now, e.limit))
	}
	return true
}
