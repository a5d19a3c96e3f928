package splice

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// chunk is the most one splice(2) call asks for: the pipe's size.
const chunk = pipeSize

// rawConn returns the syscall.RawConn of c when c is a connection type whose
// sockets splice(2) accepts. Wrappers are not unwrapped here: callers pass
// the raw *net.TCPConn so that this path stays on.
func rawConn(c net.Conn) (syscall.RawConn, bool) {
	switch c := c.(type) {
	case *net.TCPConn:
		rc, err := c.SyscallConn()
		return rc, err == nil
	case *net.UnixConn:
		rc, err := c.SyscallConn()
		return rc, err == nil
	}
	return nil, false
}

// smallBuf is the buffer of the small-message path: a read that fills it
// switches the direction to splice(2) for the rest of the burst.
const smallBuf = 16 << 10

var smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

// splicer is the state of one direction's splice loop. Its two callbacks are
// method values made once per direction, so the byte path allocates nothing.
type splicer struct {
	d        *direction
	src, dst syscall.RawConn
	pipes    *PipePool
	p        *pipe
	opErr    error // error from a syscall inside the callbacks
	eof      bool
	moved    bool // splice(2) moved bytes at least once
	noPipe   bool
	small    bool // small-message mode: read(2)/write(2) through a buffer
	burst    int  // bytes spliced since this direction last waited
	wn       int  // bytes left to move from the pipe to dst
	werr     error
	readFn   func(uintptr) bool
	writeFn  func(uintptr) bool
}

// splice copies src to dst until EOF (nil) or an error.
// handled == false means no work was done and the caller should fall back to
// copyBuffer (the conns are not spliceable, or the kernel refused with EINVAL
// before any byte moved).
//
// It has two modes. Bulk mode splices through a pipe until splice(2) says
// EAGAIN (a short splice is not a sign that the socket is drained: the pipe
// may have run out of slots). When a whole burst turned out smaller than
// smallBuf, the direction switches to small-message mode: read(2) into a
// pooled buffer and write(2) it out, which costs less CPU than moving a few
// bytes through a pipe (no pipe from the pool, no page references). A read
// that fills the buffer switches back to bulk mode.
//
// Small-message mode still reads until EAGAIN before it waits, although a
// short TCP read means the receive queue was empty: the read that returns
// the last bytes may also have consumed a FIN (TCP_INQ would flag that),
// and bytes followed closely by a RST read as a short read too, with the
// reset only reported by the next read (TCP_INQ says 0 then: checked on
// Linux 6.18). Netpoll is edge-triggered and hides the event's flags
// (EPOLLRDHUP, EPOLLHUP), and both edges can be consumed by the wake-up that
// led to the short read, so waiting after it could wait forever on a
// connection that has ended. Saving that read needs an engine that owns its
// epoll set and sees the flags, as nginx does.
//
// Invariants: the pipe is empty whenever this direction waits for src to
// become readable, and it is then given back to the pool, so an idle
// connection holds no pipe (and no buffer). A pipe is only ever returned to
// the pool empty; one that may still hold bytes (after an error) is closed
// instead.
func (d *direction) splice() (handled bool, err error) {
	src, ok1 := rawConn(d.src)
	dst, ok2 := rawConn(d.dst)
	if !ok1 || !ok2 {
		return false, nil
	}
	sp := &splicer{d: d, src: src, dst: dst, pipes: d.s.opt.Pipes}
	sp.readFn = sp.read
	sp.writeFn = sp.writePipe
	return sp.run()
}

func (sp *splicer) run() (handled bool, err error) {
	d := sp.d
	for {
		err := sp.src.Read(sp.readFn)
		switch {
		case sp.noPipe:
			// Out of fds for a pipe (EMFILE): the pipe is nil and nothing is
			// in flight, so the buffered copy can carry on from here.
			return false, nil
		case sp.opErr == unix.EINVAL:
			return false, nil
		case sp.opErr != nil:
			if sp.p != nil {
				// Reading src failed: the pipe was drained before that
				// read, so it goes back empty.
				sp.pipes.put(sp.p)
			}
			return true, d.srcOrDst(sp.opErr)
		case sp.eof:
			if sp.p != nil {
				sp.pipes.put(sp.p)
			}
			return true, nil
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			if d.s.deadlineHit(d) {
				return true, errEnded
			}
			continue
		default:
			if sp.p != nil {
				sp.pipes.discard(sp.p)
				sp.p = nil
			}
			return true, d.classify(srcError{err})
		}
	}
}

// read is the src.Read callback: it moves what src has, then returns false
// to wait (after EAGAIN) or true when the direction is over (eof, opErr or
// noPipe set).
func (sp *splicer) read(fd uintptr) bool {
	d := sp.d
	for {
		if sp.small {
			bp := smallPool.Get().(*[]byte)
			n, err := unix.Read(int(fd), *bp)
			switch {
			case err == unix.EINTR:
				smallPool.Put(bp)
				continue
			case err == unix.EAGAIN:
				smallPool.Put(bp)
				return false
			case err != nil:
				smallPool.Put(bp)
				sp.opErr = os.NewSyscallError("read", err)
				return true
			case n == 0:
				smallPool.Put(bp)
				sp.eof = true
				return true
			}
			d.s.touch()
			werr := d.writeAll((*bp)[:n])
			smallPool.Put(bp)
			if werr != nil {
				sp.opErr = werr
				return true
			}
			if n == smallBuf {
				sp.small = false // a full buffer: bulk, splice the rest
				sp.burst = 0
			}
			// A short read is not taken as "drained": read again, to
			// EAGAIN (see splice for why).
			continue
		}
		if sp.p == nil {
			if sp.p = sp.pipes.get(); sp.p == nil {
				sp.noPipe = true
				return true
			}
		}
		n, err := unix.Splice(int(fd), nil, sp.p.w, nil, chunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			// src has nothing more now: give the (empty) pipe back
			// before waiting, so idle connections hold no pipe.
			sp.pipes.put(sp.p)
			sp.p = nil
			if sp.moved && sp.burst < smallBuf {
				sp.small = true // small messages: read/write from now on
			}
			sp.burst = 0
			return false
		case err == unix.EINVAL && !sp.moved:
			sp.opErr = err
			return true
		case err != nil:
			sp.opErr = os.NewSyscallError("splice", err)
			return true
		case n == 0:
			// tcp_splice_read checks SOCK_DONE before sk_err, so a
			// socket closed by a peer's RST reads as EOF here where
			// read(2) would say ECONNRESET. SO_ERROR tells them
			// apart (and a FIN leaves it 0).
			if e, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && e != 0 {
				sp.opErr = os.NewSyscallError("splice", syscall.Errno(e))
				return true
			}
			sp.eof = true
			return true
		}
		if !sp.moved {
			sp.moved = true
			d.s.spliced.Store(true)
		}
		sp.burst += int(n)
		d.s.touch()
		if werr := sp.write(int(n)); werr != nil {
			sp.opErr = werr
			// The pipe may still hold bytes: never reuse it.
			sp.pipes.discard(sp.p)
			sp.p = nil
			return true
		}
	}
}

// write moves n bytes from the pipe to dst, waiting for dst to be writable
// (and handling its write deadline) as needed.
func (sp *splicer) write(n int) error {
	d := sp.d
	sp.wn = n
	for sp.wn > 0 {
		sp.werr = nil
		err := sp.dst.Write(sp.writeFn)
		if sp.werr != nil {
			return d.classify(dstError{os.NewSyscallError("splice", sp.werr)})
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if d.s.deadlineHit(d) {
				return errEnded
			}
			continue
		}
		return d.classify(dstError{err})
	}
	return nil
}

// writePipe is the dst.Write callback of write.
func (sp *splicer) writePipe(fd uintptr) bool {
	for sp.wn > 0 {
		m, err := unix.Splice(sp.p.r, nil, int(fd), nil, sp.wn, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			sp.werr = err
			return true
		case m == 0:
			sp.werr = errors.New("splice to socket moved 0 bytes")
			return true
		}
		sp.wn -= int(m)
		sp.d.n.Add(uint64(m))
	}
	return true
}

// srcOrDst keeps dst errors (already wrapped by write) and wraps the rest as
// src errors.
func (d *direction) srcOrDst(err error) error {
	var de dstError
	if err == errEnded || errors.As(err, &de) {
		return err
	}
	return d.classify(srcError{err})
}
