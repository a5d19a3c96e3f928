package udp

import (
	"encoding/binary"
	"net/netip"
	"os"
	"strconv"
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
// a net.UDPAddr per datagram, hence the raw call.
//
// Invariant: when a recvmmsg returns fewer datagrams than it could take,
// the socket's queue was empty at that moment, so the owner waits for the
// next event without trying again (and getting EAGAIN). That is safe for
// UDP in an edge-triggered epoll set: a datagram queued after that moment
// raises a new event. A socket error met after some datagrams is kept by
// the kernel for the next call; such an error (an ICMP one, the only kind a
// UDP receive reports) raised its own event when it arrived. (An
// unconnected socket without IP_RECVERR gets none anyway.)
type reader struct {
	deliver func(b []byte, from *sockName, oob []byte)
	hdrs    [batchSize]mmsghdr
	iovs    [batchSize]unix.Iovec
	// names and oob are filled by the kernel; the address space of the
	// larger family holds either.
	names [batchSize]sockName
	oob   []byte // batchSize × oobSize, or nil without pktinfo
	mem   []byte // batchSize × maxDatagram payload buffers; mapped
}

// newReader sets up a reader; with pktinfo it also takes each datagram's
// control messages (IP_PKTINFO / IPV6_PKTINFO). deliver is called for every
// datagram; its slices and name are valid until it returns.
//
// The payload buffers (1 MiB, which the owner also reads sessions' replies
// into: see recvConnected) are an anonymous mapping, not Go memory: a page
// becomes resident only when a datagram is written to it, so a listener of
// small datagrams holds one page per slot whatever the heap did before (Go
// zeroes reused heap memory, which would make all of it resident).
func newReader(pktinfo bool, deliver func(b []byte, from *sockName, oob []byte)) (*reader, error) {
	mem, err := unix.Mmap(-1, 0, batchSize*maxDatagram, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	r := &reader{deliver: deliver, mem: mem}
	if pktinfo {
		r.oob = make([]byte, batchSize*oobSize)
	}
	for i := range r.hdrs {
		r.iovs[i].Base = &mem[i*maxDatagram]
		r.iovs[i].SetLen(maxDatagram)
	}
	return r, nil
}

// close unmaps the buffers; the reader is not used again.
func (r *reader) close() { _ = unix.Munmap(r.mem) }

// recvConnected takes up to k datagrams off fd, a session's connected
// socket, into the batch buffers from slot off on (off+k ≤ batchSize), and
// returns how many; payload(off+i) gives each. The listener's last batch
// has been delivered and flushed by then (the owner reads sessions between
// listener batches), so its buffers are free; slots below off hold replies
// queued in the outbox.
//
// As with the listener's batches, fewer than k means the queue was empty at
// that moment: the owner waits for the socket's next edge instead of making
// a read that finds EAGAIN (one syscall per reply saved). The error is the
// call's when it took no datagram: EAGAIN for a stale event, or an ICMP
// error, which UDP reports before any datagram queued ahead of it (those
// stay for the next call, as with read(2)). An error that arrives during a
// call that has taken some datagrams is kept by the kernel for the next
// call, and its arrival, after the epoll_wait that led to this call, raised
// a new event: the owner reads again and gets it.
func (r *reader) recvConnected(fd, off, k int) (int, error) {
	for i := off; i < off+k; i++ {
		r.hdrs[i].hdr = unix.Msghdr{Iov: &r.iovs[i]}
		r.hdrs[i].hdr.SetIovlen(1)
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hdrs[off])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, errno
	}
}

// payload is the i'th datagram of the last recvConnected.
func (r *reader) payload(i int) []byte {
	return r.mem[i*maxDatagram : i*maxDatagram+int(r.hdrs[i].n)]
}

// recvmmsg takes one batch off the socket fd and delivers it. It reports
// whether the batch came back full (more may be queued); a short batch or
// EAGAIN means the queue is empty.
func (r *reader) recvmmsg(fd int) (full bool, err error) {
	for {
		r.reset()
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.hdrs[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false, nil
		default:
			return false, os.NewSyscallError("recvmmsg", errno)
		}
		for i := range int(n) {
			b, oob := r.datagram(i)
			r.deliver(b, &r.names[i], oob)
		}
		// Short: the queue was empty (see the type's invariant).
		return n == batchSize, nil
	}
}

// reset gives every header back its full buffers: the kernel shortens
// the address and control lengths to what it wrote.
func (r *reader) reset() {
	for i := range r.hdrs {
		h := &r.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i].sa))
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

// datagram returns the i'th datagram of the last batch: its payload and
// its control messages (nil without pktinfo). It also records the length of
// its source address in names[i].
func (r *reader) datagram(i int) (b []byte, oob []byte) {
	h := &r.hdrs[i]
	b = r.mem[i*maxDatagram : i*maxDatagram+int(h.n)]
	if r.oob != nil {
		oob = r.oob[i*oobSize : i*oobSize+int(h.hdr.Controllen)]
	}
	r.names[i].n = h.hdr.Namelen
	return b, oob
}

// sockaddrPort reads a source address the way net's ReadFromUDPAddrPort
// does: an IPv4 client of a dual-stack socket comes out as an IPv4-mapped
// IPv6 address. A link-local client's zone is its interface index in
// decimal (net would name the interface; both mean the same to a write).
func sockaddrPort(name *sockName) netip.AddrPort {
	sa, n := &name.sa, name.n
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
