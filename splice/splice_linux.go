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

// splice copies src to dst through a pipe until EOF (nil) or an error.
// handled == false means no work was done and the caller should fall back to
// copyBuffer (the conns are not spliceable, or the kernel refused with EINVAL
// before any byte moved).
//
// Invariants: the pipe is empty whenever this direction waits for src to
// become readable, and it is then given back to the pool, so an idle
// connection holds no pipe. A pipe is only ever returned to the pool empty;
// one that may still hold bytes (after an error) is closed instead.
func (d *direction) splice() (handled bool, err error) {
	src, ok1 := rawConn(d.src)
	dst, ok2 := rawConn(d.dst)
	if !ok1 || !ok2 {
		return false, nil
	}
	pipes := d.s.opt.Pipes
	var (
		p      *pipe
		opErr  error // error from a syscall inside the callbacks
		eof    bool
		moved  bool
		noPipe bool
	)
	// write moves n bytes from the pipe to dst, waiting for dst to be
	// writable (and handling its write deadline) as needed.
	write := func(n int) error {
		for n > 0 {
			var werr error
			err := dst.Write(func(fd uintptr) bool {
				for n > 0 {
					m, err := unix.Splice(p.r, nil, int(fd), nil, n, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
					switch {
					case err == unix.EINTR:
						continue
					case err == unix.EAGAIN:
						return false
					case err != nil:
						werr = err
						return true
					case m == 0:
						werr = errors.New("splice to socket moved 0 bytes")
						return true
					}
					n -= int(m)
					d.n.Add(uint64(m))
				}
				return true
			})
			if werr != nil {
				return d.classify(dstError{os.NewSyscallError("splice", werr)})
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

	for {
		err := src.Read(func(fd uintptr) bool {
			for {
				if p == nil {
					if p = pipes.get(); p == nil {
						noPipe = true
						return true
					}
				}
				n, err := unix.Splice(int(fd), nil, p.w, nil, chunk, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					// src has nothing more now: give the (empty) pipe back
					// before waiting, so idle connections hold no pipe.
					pipes.put(p)
					p = nil
					return false
				case err == unix.EINVAL && !moved:
					opErr = err
					return true
				case err != nil:
					opErr = os.NewSyscallError("splice", err)
					return true
				case n == 0:
					// tcp_splice_read checks SOCK_DONE before sk_err, so a
					// socket closed by a peer's RST reads as EOF here where
					// read(2) would say ECONNRESET. SO_ERROR tells them
					// apart (and a FIN leaves it 0).
					if e, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && e != 0 {
						opErr = os.NewSyscallError("splice", syscall.Errno(e))
						return true
					}
					eof = true
					return true
				}
				if !moved {
					moved = true
					d.s.spliced.Store(true)
				}
				d.s.touch()
				if werr := write(int(n)); werr != nil {
					opErr = werr
					// The pipe may still hold bytes: never reuse it.
					pipes.discard(p)
					p = nil
					return true
				}
			}
		})
		switch {
		case noPipe:
			// Out of fds for a pipe (EMFILE): the pipe is nil and nothing is
			// in flight, so the buffered copy can carry on from here.
			return false, nil
		case opErr == unix.EINVAL:
			return false, nil
		case opErr != nil:
			if p != nil {
				// Reading src failed: the pipe was drained before that
				// read, so it goes back empty.
				pipes.put(p)
			}
			return true, d.srcOrDst(opErr)
		case eof:
			if p != nil {
				pipes.put(p)
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
			if p != nil {
				pipes.discard(p)
				p = nil
			}
			return true, d.classify(srcError{err})
		}
	}
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
