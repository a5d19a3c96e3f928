package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSize is how many datagrams one recvmmsg(2) takes off the listener
// socket at most.
const batchSize = 16

// mmsghdr is struct mmsghdr: a msghdr and the length the kernel received
// into it. Go pads it as C does (64 bytes on 64-bit, 32 on 32-bit).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// reader reads the listener socket batchSize datagrams per system call with
// recvmmsg(2), into buffers set up once and reused for every batch (no
// allocation per datagram), and hands each datagram to deliver. It belongs
// to the owner goroutine.
//
// x/sys has no recvmmsg wrapper, and x/net's ipv4/ipv6 ReadBatch allocates
// a net.UDPAddr per datagram, hence the raw call through the socket's
// RawConn, which keeps Go's poller and the read deadline.
//
// Invariant: when a recvmmsg returns fewer datagrams than it could take,
// the socket's queue was empty at that moment, so the callback waits for
// readability without trying again (and getting EAGAIN). That is safe for
// UDP on an edge-triggered poller: a datagram queued after that moment
// raises a new readiness event, and one left over from datagrams this batch
// already took costs one empty recvmmsg. It holds only within one
// RawConn.Read: each call starts by clearing the readiness Go has recorded
// (internal/poll's prepareRead), so the first callback of a call always
// reads. A socket error met after some datagrams is kept by the kernel for
// the next call, with no wake-up of its own; but such an error (an ICMP
// one, the only kind a UDP receive reports) woke the poller when it
// arrived, after this batch began, so the wait ends at once. (An
// unconnected socket without IP_RECVERR gets none anyway.)
type reader struct {
	rc      syscall.RawConn
	deliver func(b []byte, from netip.AddrPort, oob []byte)
	hdrs    [batchSize]mmsghdr
	iovs    [batchSize]unix.Iovec
	// names and oob are filled by the kernel; the address space of the
	// larger family holds either.
	names [batchSize]unix.RawSockaddrInet6
	oob   []byte // batchSize × oobSize, or nil without pktinfo
	mem   []byte // batchSize × maxDatagram payload buffers, mapped

	err    error // of the last recvmmsg
	readFn func(fd uintptr) bool
}

// newReader sets up a reader for c; with pktinfo it also takes each
// datagram's control messages (IP_PKTINFO / IPV6_PKTINFO). deliver is
// called for every datagram; its slices are valid until it returns.
//
// The payload buffers (1 MiB) are an anonymous mapping, not Go memory: a
// page becomes resident only when a datagram is written to it, so a
// listener of small datagrams holds one page per slot whatever the heap
// did before (Go zeroes reused heap memory, which would make all of it
// resident).
func newReader(c *net.UDPConn, pktinfo bool, deliver func(b []byte, from netip.AddrPort, oob []byte)) (*reader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(-1, 0, batchSize*maxDatagram, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	r := &reader{rc: rc, deliver: deliver, mem: mem}
	if pktinfo {
		r.oob = make([]byte, batchSize*oobSize)
	}
	for i := range r.hdrs {
		r.iovs[i].Base = &mem[i*maxDatagram]
		r.iovs[i].SetLen(maxDatagram)
	}
	r.readFn = r.recvmmsg
	return r, nil
}

// close unmaps the buffers; the reader is not used again.
func (r *reader) close() { _ = unix.Munmap(r.mem) }

// read delivers datagrams until the socket fails or a batch comes back
// full; a full batch returns nil so that the caller comes back through
// RawConn.Read, which checks the read deadline (a busy socket would
// otherwise never wait, and never see it). Errors are those of a read on
// the socket: os.ErrDeadlineExceeded when the deadline passes, net.ErrClosed
// once the socket is closed.
func (r *reader) read() error {
	r.err = nil
	if err := r.rc.Read(r.readFn); err != nil {
		return err
	}
	return r.err
}

// recvmmsg is the RawConn read callback: it returns false to wait for
// readability, true to return from RawConn.Read.
func (r *reader) recvmmsg(fd uintptr) bool {
	for {
		r.reset()
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			r.err = os.NewSyscallError("recvmmsg", errno)
			return true
		}
		for i := range int(n) {
			r.deliver(r.datagram(i))
		}
		// Short: the queue was empty (see the type's invariant).
		return n == batchSize
	}
}

// reset gives every header back its full buffers: the kernel shortens
// the address and control lengths to what it wrote.
func (r *reader) reset() {
	for i := range r.hdrs {
		h := &r.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if r.oob != nil {
			h.Control = &r.oob[i*oobSize]
			h.SetControllen(oobSize)
		}
		h.Flags = 0
	}
}

// datagram returns the i'th datagram of the last batch: its payload, its
// source, and its control messages (nil without pktinfo).
func (r *reader) datagram(i int) (b []byte, from netip.AddrPort, oob []byte) {
	h := &r.hdrs[i]
	b = r.mem[i*maxDatagram : i*maxDatagram+int(h.n)]
	if r.oob != nil {
		oob = r.oob[i*oobSize : i*oobSize+int(h.hdr.Controllen)]
	}
	return b, sockaddrPort(&r.names[i], h.hdr.Namelen), oob
}

// sockaddrPort reads a source address the way net's ReadFromUDPAddrPort
// does: an IPv4 client of a dual-stack socket comes out as an IPv4-mapped
// IPv6 address. A link-local client's zone is its interface index in
// decimal (net would name the interface; both mean the same to a write).
func sockaddrPort(sa *unix.RawSockaddrInet6, n uint32) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch {
	case sa.Family == unix.AF_INET && n >= unix.SizeofSockaddrInet4:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case sa.Family == unix.AF_INET6 && n >= unix.SizeofSockaddrInet6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}
