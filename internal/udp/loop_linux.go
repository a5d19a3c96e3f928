package udp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/l4lb/l4lb/internal/rawsys"
	"golang.org/x/sys/unix"
)

// The owner's event loop. One epoll set per listener holds the listener
// socket and every session socket, edge-triggered. The epoll fd is itself
// pollable (readable when it has events), so the owner hands it to Go's
// netpoller (os.NewFile) and waits on it with RawConn.Read: it parks like a
// goroutine waiting for a socket and holds no thread while idle, and its
// sweep timer is that file's read deadline. One wake-up serves every socket
// ready at that moment: a client's datagram and a host's reply are handled
// by the goroutine that is awake already, not by a goroutine of their own
// (the session reply goroutines this replaced cost a scheduler wake-up per
// reply; see docs/PERFORMANCE.md, "UDP").
//
// The loop's own calls go through RawSyscall (package rawsys says why):
// they never block, the sockets being non-blocking and the epoll_wait's
// timeout zero. The errors are unix.Errno values.

// maxEvents is how many events one epoll_wait takes.
const maxEvents = 128

// listenerSlot is the epoll data of the listener socket's entry; sessions
// have their slot number (≥ 0).
const listenerSlot = -1

// event is one epoll event.
type event = unix.EpollEvent

// poller is a listener's epoll set, waited on through Go's netpoller.
type poller struct {
	epfd   int
	file   *os.File // epfd, registered with Go's netpoller
	rc     syscall.RawConn
	events [maxEvents]event
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// os.NewFile registers a non-blocking fd with the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	p := &poller{epfd: epfd, file: os.NewFile(uintptr(epfd), "udp-epoll")}
	if p.rc, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return nil, err
	}
	return p, nil
}

// add registers fd for readability (and errors, which epoll always
// reports), edge-triggered, with slot as its data.
func (p *poller) add(fd int, slot int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: slot}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// wait returns the events ready now, without waiting.
func (p *poller) wait() []event {
	for {
		n, err := rawsys.EpollWait(p.epfd, p.events[:])
		switch err {
		case nil:
			return p.events[:n]
		case unix.EINTR:
			continue
		}
		panic("udp: epoll_wait: " + err.Error()) // EBADF, EFAULT: a bug
	}
}

// slotOf is the session slot of an event, or listenerSlot.
func slotOf(ev *event) int32 { return ev.Fd }

// rawFD returns the fd of c. It stays valid until c is closed, which the
// Listener does only after its loop has stopped.
func rawFD(c *net.UDPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// dialSocket opens a non-blocking UDP socket connected to ap. It is not
// registered with Go's netpoller: the owner's epoll set is its only waiter.
func dialSocket(ap netip.AddrPort) (int, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET6
	if a := ap.Addr(); a.Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		sa6 := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if n, err := strconv.ParseUint(z, 10, 32); err == nil {
				sa6.ZoneId = uint32(n)
			} else if ifi, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			} else {
				return -1, fmt.Errorf("zone %q: %w", z, err)
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// sender writes replies from the listener socket with sendmsg(2): to the
// client's address as the kernel gave it at the first datagram (so no
// conversion, and an IPv4 client of a dual-stack socket stays v4-mapped),
// with the session's IP(V6)_PKTINFO when it has one. Owner only.
type sender struct {
	fd  int
	hdr unix.Msghdr
	iov unix.Iovec
}

func (w *sender) send(b []byte, to *sockName, oob []byte) error {
	w.hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&to.sa)), Namelen: to.n, Iov: &w.iov}
	w.hdr.SetIovlen(1)
	w.iov = unix.Iovec{}
	if len(b) > 0 {
		w.iov.Base = &b[0]
	}
	w.iov.SetLen(len(b))
	if len(oob) > 0 {
		w.hdr.Control = &oob[0]
		w.hdr.SetControllen(len(oob))
	}
	for {
		_, _, e := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(w.fd), uintptr(unsafe.Pointer(&w.hdr)), unix.MSG_DONTWAIT)
		if e == unix.EINTR {
			continue
		}
		return rawsys.Errno(e)
	}
}

// sockName is a socket address as the kernel wrote it.
type sockName struct {
	sa unix.RawSockaddrInet6 // the larger family's; holds either
	n  uint32
}
