package splice

import (
	"errors"
	"net"
	"os"
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
	wn       int // bytes left to move from the pipe to dst
	werr     error
	readFn   func(uintptr) bool
	writeFn  func(uintptr) bool
}

// splice copies src to dst until EOF (nil) or an error.
// handled == false means no work was done and the caller should fall back to
// copyBuffer (the conns are not spliceable, or the kernel refused with EINVAL
// before any byte moved).
//
// Invariants: the pipe is empty whenever this direction waits for src to
// become readable, and it is then given back to the pool, so an idle
// connection holds no pipe. A pipe is only ever returned to
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
// to wait or true when the direction is over (eof, opErr or noPipe set).
func (sp *splicer) read(fd uintptr) bool {
	d := sp.d
	for {
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
