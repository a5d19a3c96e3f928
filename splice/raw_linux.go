package splice

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's own syscalls never block (close and shutdown included: no
// session socket lingers with a timeout; SO_LINGER 0 resets at once): its sockets and pipes are
// non-blocking, its splices say SPLICE_F_NONBLOCK, its epoll_wait has a
// zero timeout. They go through RawSyscall, without the runtime's
// entersyscall/exitsyscall: through Syscall, a loopback write or splice that
// runs the receiver's whole TCP path in softirq (tens of µs) looks to
// sysmon like a blocked syscall, which then takes the loop's P away, wakes
// another thread to run it, and makes the loop's goroutine queue for a P
// again when the call returns, all per call. The errors returned are
// unix.Errno values, so err == unix.EAGAIN still holds.

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawSplice(rfd, wfd, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n),
		unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawEpollWait(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawClose(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return errnoErr(e)
}

func rawShutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return errnoErr(e)
}
