package proxy

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/l4lb/l4lb/splice"
	"golang.org/x/sys/unix"
)

// TCP connections are accepted and connected on raw fds (splice.Socket):
// what package net does per connection beyond the syscalls themselves (the
// netpoller's epoll_ctl add and delete, getsockname and getpeername, the
// netFD, pollDesc and address allocations, the dialer's resolver and
// context machinery) was about a fifth of l4lb's CPU per new connection,
// and the engine needs none of it. Unix sockets still go through net.

// rawAccepter accepts from a TCP listener's socket with accept4. A net
// listener's RawConn cannot wait for readability (its Read is EINVAL), so
// the accepter holds a duplicate of the listening fd as an *os.File, whose
// RawConn waits on the netpoller. close must be called once the listener is
// closed: the duplicate keeps the socket listening, and closing it is what
// wakes a waiting accept.
type rawAccepter struct {
	f  *os.File
	rc syscall.RawConn

	// The last accept4's results, and the callback that sets them, made
	// once: a closure per accept, with the variables it captures, cost
	// four allocations per connection. Only the accept loop uses them.
	nfd    int
	peer   netip.AddrPort
	aerr   error
	readFn func(fd uintptr) bool

	// inherit: the listening socket has TCP_NODELAY, so every accepted
	// socket starts with it (Linux copies the listener's Nagle setting
	// into the child) and accept makes no setsockopt of its own.
	inherit bool

	closed atomic.Bool // set by close, before the file is closed
}

// newRawAccepter returns nil when ln is not a TCP listener (or its fd
// cannot be duplicated: then net accepts).
func newRawAccepter(ln net.Listener) *rawAccepter {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	src, err := tl.SyscallConn()
	if err != nil {
		return nil
	}
	dup := -1
	var derr error
	if err := src.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return nil
	}
	// The duplicate shares the listener's file description, O_NONBLOCK
	// included, so NewFile makes it pollable.
	f := os.NewFile(uintptr(dup), "listener")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil
	}
	a := &rawAccepter{f: f, rc: rc, inherit: listenNoDelay(dup)}
	a.readFn = a.try
	return a
}

// listenNoDelay sets TCP_NODELAY on a listening socket and reports whether
// it reads back as set. Inherited listeners (socket activation, upgrade)
// get it too: it changes nothing for the listener itself.
func listenNoDelay(fd int) bool {
	setNoDelay(fd)
	v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	return err == nil && v != 0
}

// close closes the duplicate; a waiting accept returns net.ErrClosed.
func (a *rawAccepter) close() {
	if a != nil {
		a.closed.Store(true)
		a.f.Close()
	}
}

// accept waits for the next connection (through the netpoller, as
// net.Listener.Accept does) and returns it as a *splice.Socket with
// TCP_NODELAY set (inherited from the listener, or set here). Errors:
// net.ErrClosed once the listener is closed (wrapped), else accept4's
// (EMFILE and the like).
func (a *rawAccepter) accept() (net.Conn, error) {
	if err := a.rc.Read(a.readFn); err != nil {
		// Read on a closed file fails with poll's "use of closed file",
		// not os.ErrClosed: the flag says why.
		if a.closed.Load() {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	if a.aerr != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", a.aerr)}
	}
	if !a.inherit {
		setNoDelay(a.nfd)
	}
	return splice.NewSocket(a.nfd, netip.AddrPort{}, a.peer), nil
}

// try is accept's RawConn.Read callback: one accept4, false to wait.
func (a *rawAccepter) try(fd uintptr) bool {
	for {
		a.nfd, a.peer, a.aerr = accept4(int(fd))
		switch a.aerr {
		case unix.EINTR, unix.ECONNABORTED:
			continue // a client that gave up in the backlog: the next one
		case unix.EAGAIN:
			return false
		}
		return true
	}
}

// The syscalls of accepting and connecting go through RawSyscall: none
// blocks (the sockets are non-blocking), but a loopback connect runs the
// whole handshake in softirq, long enough for sysmon to take the P away
// as from a blocked syscall (a thread hand-off per connection) and to keep
// sysmon itself polling every 20µs.

func rawSocket(family int) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func setNoDelay(fd int) {
	one := int32(1)
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0)
}

// sockaddrCall is connect(2) or bind(2) of fd to r.
func sockaddrCall(trap uintptr, fd int, r *splice.RawSockaddr) error {
	_, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(r.Ptr()), uintptr(r.Len))
	if e != 0 {
		return e
	}
	return nil
}

// accept4 is unix.Accept4 without its unix.Sockaddr (see
// splice.RawSockaddr: an allocation, and a getsockopt per IPv4 peer).
func accept4(fd int) (int, netip.AddrPort, error) {
	var r splice.RawSockaddr
	r.Len = unix.SizeofSockaddrAny
	n, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(r.Ptr()), uintptr(unsafe.Pointer(&r.Len)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(n), r.AddrPort(), nil
}

// rawTarget returns h's address when h can be dialled raw: a TCP host
// whose address is an IP literal (net.Dialer resolves any other name).
func rawTarget(network, address string) (netip.AddrPort, bool) {
	if network != "tcp" {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// dialSocket connects to ap on a raw non-blocking socket, bound to src when
// valid, with keepalive as Settings.Keepalive says, giving up at deadline or
// when ctx is done. Errors are *net.OpError around the syscall's, as
// net.Dialer's are, so sockerr and failKind read them alike.
//
// On loopback the handshake completes inside connect(2) (the SYN-ACK is
// processed from the socket's backlog before the call returns), so the
// non-blocking connect's EINPROGRESS is followed by one getpeername that
// finds the socket connected, and nothing waits. Elsewhere the socket waits
// for writability on Go's netpoller.
func dialSocket(ctx context.Context, ap netip.AddrPort, src netip.Addr, keepalive time.Duration, deadline time.Time) (net.Conn, error) {
	opErr := func(op string, err error) error {
		if errno, ok := err.(unix.Errno); ok {
			err = os.NewSyscallError(op, errno)
		}
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	sa := splice.MakeRawSockaddr(ap)
	fd, err := rawSocket(sa.Family())
	if err != nil {
		return nil, opErr("socket", err)
	}
	setNoDelay(fd)
	if keepalive > 0 {
		setKeepaliveFD(fd, keepalive)
	}
	if src.IsValid() {
		lsa := splice.MakeRawSockaddr(netip.AddrPortFrom(src, 0))
		if err := sockaddrCall(unix.SYS_BIND, fd, &lsa); err != nil {
			unix.Close(fd)
			return nil, opErr("bind", err)
		}
	}
	err = sockaddrCall(unix.SYS_CONNECT, fd, &sa)
	switch {
	case err == nil:
	case err == unix.EINPROGRESS || err == unix.EINTR:
		sock := splice.NewSocket(fd, netip.AddrPort{}, ap)
		if sock.Connected() {
			return sock, nil // already (loopback)
		}
		if err := waitConnected(ctx, sock, deadline); err != nil {
			sock.Close()
			return nil, opErr("connect", err)
		}
		return sock, nil
	default:
		unix.Close(fd)
		return nil, opErr("connect", err)
	}
	return splice.NewSocket(fd, netip.AddrPort{}, ap), nil
}

// waitConnected waits for sock's connect to finish, until deadline or ctx is
// done, and returns its outcome.
func waitConnected(ctx context.Context, sock *splice.Socket, deadline time.Time) error {
	if err := sock.SetWriteDeadline(deadline); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { sock.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := sock.WaitConnect(); err != nil {
		return err
	}
	return sock.SetWriteDeadline(time.Time{})
}

// setKeepaliveFD turns keepalive on a raw socket on as keepaliveConfig(d)
// says, for d > 0 (raw sockets start with it off).
func setKeepaliveFD(fd int, d time.Duration) {
	kc := keepaliveConfig(d)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(kc.Idle/time.Second))
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(kc.Interval/time.Second))
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, kc.Count)
}

// peerOf returns the client's address without allocating for a Socket.
func peerOf(c net.Conn) netip.AddrPort {
	if s, ok := c.(*splice.Socket); ok {
		return s.Peer()
	}
	return addrPortOf(c.RemoteAddr())
}

// localOf returns the address the client connected to.
func localOf(c net.Conn) netip.AddrPort {
	if s, ok := c.(*splice.Socket); ok {
		return s.Local()
	}
	return addrPortOf(c.LocalAddr())
}

// setClientKeepalive applies Settings.Keepalive to an accepted connection.
// force: the connection may have keepalive on already (Go turns it on for
// listeners made from files), so off must be said too.
func setClientKeepalive(c net.Conn, d time.Duration, force bool) {
	switch c := c.(type) {
	case *splice.Socket:
		if d > 0 {
			setKeepaliveFD(c.Fd(), d)
		}
	case *net.TCPConn:
		if d > 0 || force {
			setKeepalive(c, d)
		}
	}
}
