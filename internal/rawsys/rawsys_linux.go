// Package rawsys holds the system calls of l4lb's event loops (the splice
// engine's and the UDP listeners'), made through RawSyscall.
//
// A loop's own syscalls never block: its sockets and pipes are
// non-blocking, its splices say SPLICE_F_NONBLOCK, its epoll_wait has a
// zero timeout, and no socket it closes lingers with a timeout (SO_LINGER 0
// resets at once). So they skip the runtime's entersyscall/exitsyscall:
// through Syscall, a loopback write or splice that runs the receiver's whole
// TCP or UDP path in softirq (tens of µs) looks to sysmon like a blocked
// syscall, which then takes the loop's P away, wakes another thread to run
// it, and makes the loop's goroutine queue for a P again when the call
// returns, all per call.
//
// The errors returned are unix.Errno values, so err == unix.EAGAIN holds.
// EINTR is returned, not retried: the callers know what to do next. A
// buffer is passed to the kernel as it is, empty too (an empty write on a
// UDP socket sends an empty datagram; an empty read on a stream socket
// returns 0, which looks like EOF, so stream callers never make one).
package rawsys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Errno is e as an error: nil for 0.
func Errno(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// Read is read(2).
func Read(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Write is write(2).
func Write(fd int, p []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Splice moves up to n bytes from rfd to wfd (one of them a pipe),
// non-blocking.
func Splice(rfd, wfd, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(rfd), 0, uintptr(wfd), 0, uintptr(n),
		unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// EpollWait takes the events ready now (a zero timeout) into events, which
// must not be empty.
func EpollWait(epfd int, events []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// Close is close(2).
func Close(fd int) error {
	_, _, e := unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
	return Errno(e)
}

// Shutdown is shutdown(2).
func Shutdown(fd, how int) error {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return Errno(e)
}
