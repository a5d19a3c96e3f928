package splice

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/l4lb/l4lb/internal/rawsys"
	"golang.org/x/sys/unix"
)

// Socket is a connected TCP socket that its owner accepted (accept4) or
// connected itself on a raw fd, rather than through package net. A Session
// given Sockets moves their bytes on the engine as it does for
// *net.TCPConn, and each one costs less to set up and tear down: no
// registration with Go's netpoller and its removal (two epoll_ctl), no
// getsockname or getpeername, no netFD, pollDesc or address allocations.
//
// It is a net.Conn all the same. Its blocking methods (Read, Write and the
// deadlines: a PROXY header read before the session starts, the goroutine
// copier) register the fd with Go's netpoller on first use, through an
// *os.File, and from then on go through it.
type Socket struct {
	fd    int
	local netip.AddrPort // zero: getsockname on first LocalAddr
	peer  netip.AddrPort

	mu     sync.Mutex
	file   *os.File // set on first blocking use
	closed bool
}

// NewSocket returns a Socket owning fd, a connected, non-blocking,
// close-on-exec TCP socket whose peer is peer. local may be the zero
// AddrPort: LocalAddr then asks the kernel.
func NewSocket(fd int, local, peer netip.AddrPort) *Socket {
	return &Socket{fd: fd, local: local, peer: peer}
}

// Fd returns the socket's fd, for setsockopt and the like. It stays owned by
// s: close it with Close.
func (s *Socket) Fd() int { return s.fd }

// Peer returns the peer's address.
func (s *Socket) Peer() netip.AddrPort { return s.peer }

// Local returns the socket's own address (getsockname, on the first call
// when NewSocket was not told it).
func (s *Socket) Local() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.local.IsValid() && !s.closed {
		var r RawSockaddr
		if sockname(s.fd, false, &r) == nil {
			s.local = r.AddrPort()
		}
	}
	return s.local
}

// pollable returns s's *os.File, registering the fd with the netpoller on
// the first call.
func (s *Socket) pollable() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, net.ErrClosed
	}
	if s.file == nil {
		// The fd is non-blocking, so NewFile makes it pollable.
		s.file = os.NewFile(uintptr(s.fd), "socket")
	}
	return s.file, nil
}

func (s *Socket) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}

// Read reads through the netpoller (see Socket).
func (s *Socket) Read(b []byte) (int, error) {
	f, err := s.pollable()
	if err != nil {
		return 0, s.opError("read", err)
	}
	return f.Read(b)
}

// Write writes through the netpoller (see Socket).
func (s *Socket) Write(b []byte) (int, error) {
	f, err := s.pollable()
	if err != nil {
		return 0, s.opError("write", err)
	}
	return f.Write(b)
}

// WaitConnect waits for a non-blocking connect(2) on the socket to end, or
// for the write deadline, and returns the connect's error (nil: connected).
//
// The condition is checked inside the netpoller's wait loop, after the
// poller's write state is reset for this wait, never before: an
// edge-triggered EPOLLOUT that came with the fd's registration (a connect
// that completed just now) is then either seen by the check or recorded
// for the wait, not lost with the reset.
func (s *Socket) WaitConnect() error {
	f, err := s.pollable()
	if err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	err = rc.Write(func(uintptr) bool {
		e, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = err
			return true
		case e != 0:
			cerr = unix.Errno(e)
			return true
		}
		// SO_ERROR is 0 while the handshake is under way, too: only a
		// peer name says it is done.
		return connected(s.fd)
	})
	if err != nil {
		return err
	}
	return cerr
}

// connected reports whether fd's connect has completed (getpeername
// succeeds).
func connected(fd int) bool {
	var r RawSockaddr
	return sockname(fd, true, &r) == nil
}

// Connected reports whether the socket's connect has completed. On
// loopback it has by the time a non-blocking connect(2) returns EINPROGRESS:
// the SYN-ACK is processed from the socket's backlog before the call
// returns.
func (s *Socket) Connected() bool { return connected(s.fd) }

// Close closes the socket. Later calls return net.ErrClosed.
func (s *Socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.closed = true
	f := s.file
	s.mu.Unlock()
	if f != nil {
		return f.Close()
	}
	return rawsys.Close(s.fd) // see internal/rawsys
}

// CloseWrite shuts the write half: the peer reads EOF.
func (s *Socket) CloseWrite() error {
	s.mu.Lock()
	var err error
	if s.closed {
		err = net.ErrClosed
	} else if e := rawsys.Shutdown(s.fd, unix.SHUT_WR); e != nil {
		err = os.NewSyscallError("shutdown", e)
	}
	s.mu.Unlock()
	if err != nil {
		return s.opError("shutdown", err) // after Unlock: LocalAddr locks
	}
	return nil
}

// SetLinger is net.TCPConn's SetLinger: 0 makes Close send a reset.
func (s *Socket) SetLinger(sec int) error {
	l := unix.Linger{}
	if sec >= 0 {
		l.Onoff, l.Linger = 1, int32(sec)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return net.ErrClosed
	}
	return unix.SetsockoptLinger(s.fd, unix.SOL_SOCKET, unix.SO_LINGER, &l)
}

// LocalAddr returns the local address as a *net.TCPAddr.
func (s *Socket) LocalAddr() net.Addr { return net.TCPAddrFromAddrPort(s.Local()) }

// RemoteAddr returns the peer's address as a *net.TCPAddr.
func (s *Socket) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(s.peer) }

// SetDeadline sets both deadlines (through the netpoller).
func (s *Socket) SetDeadline(t time.Time) error {
	f, err := s.pollable()
	if err != nil {
		return err
	}
	return f.SetDeadline(t)
}

// SetReadDeadline sets the read deadline (through the netpoller).
func (s *Socket) SetReadDeadline(t time.Time) error {
	f, err := s.pollable()
	if err != nil {
		return err
	}
	return f.SetReadDeadline(t)
}

// SetWriteDeadline sets the write deadline (through the netpoller).
func (s *Socket) SetWriteDeadline(t time.Time) error {
	f, err := s.pollable()
	if err != nil {
		return err
	}
	return f.SetWriteDeadline(t)
}

// RawSockaddr holds an IPv4 or IPv6 socket address as the kernel takes it
// (accept4, getpeername, connect, bind), so that callers on raw fds need not
// go through unix.Sockaddr: an allocation per call, and x/sys probes every
// IPv4 address it decodes with getsockopt(SO_PROTOCOL) to tell L2TP sockets
// apart.
type RawSockaddr struct {
	unix.RawSockaddrAny
	Len uint32 // bytes in use
}

// MakeRawSockaddr encodes ap (IPv4-mapped addresses as IPv4).
func MakeRawSockaddr(ap netip.AddrPort) RawSockaddr {
	var r RawSockaddr
	a := ap.Addr().Unmap()
	if a.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.RawSockaddrAny))
		sa.Family = unix.AF_INET
		sa.Addr = a.As4()
		putPort(&sa.Port, ap.Port())
		r.Len = unix.SizeofSockaddrInet4
		return r
	}
	sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&r.RawSockaddrAny))
	sa.Family = unix.AF_INET6
	sa.Addr = a.As16()
	if z := a.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		}
	}
	putPort(&sa.Port, ap.Port())
	r.Len = unix.SizeofSockaddrInet6
	return r
}

// Family returns the address family (AF_INET, AF_INET6, or 0).
func (r *RawSockaddr) Family() int { return int(r.Addr.Family) }

// Ptr returns the address for a syscall argument.
func (r *RawSockaddr) Ptr() unsafe.Pointer { return unsafe.Pointer(&r.RawSockaddrAny) }

// AddrPort decodes an IPv4 or IPv6 address; other families give the zero
// AddrPort. IPv4-mapped IPv6 addresses are unmapped.
func (r *RawSockaddr) AddrPort() netip.AddrPort {
	switch r.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.RawSockaddrAny))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), getPort(&sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&r.RawSockaddrAny))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), getPort(&sa.Port))
	}
	return netip.AddrPort{}
}

// Ports are in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// sockname is getsockname (peer false) or getpeername (peer true) into r.
func sockname(fd int, peer bool, r *RawSockaddr) error {
	trap := uintptr(unix.SYS_GETSOCKNAME)
	if peer {
		trap = unix.SYS_GETPEERNAME
	}
	r.Len = unix.SizeofSockaddrAny
	_, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(r.Ptr()), uintptr(unsafe.Pointer(&r.Len)))
	return rawsys.Errno(e)
}
