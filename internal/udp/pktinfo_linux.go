package udp

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// oobSize holds the control messages asked for: one in6_pktinfo and one
// in_pktinfo (a dual-stack socket gets both for an IPv4 client).
const oobSize = 128

// enablePktinfo asks the kernel to tell, with each datagram, the local
// address it was sent to. A socket bound to a wildcard address would
// otherwise reply from whatever address the route to the client prefers,
// which on a multi-homed machine is not always the address the client
// sent to, and clients (glibc's resolver among them) drop such replies.
func enablePktinfo(c *net.UDPConn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		var domain int
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		if domain == unix.AF_INET6 {
			// Covers IPv4 clients of a dual-stack socket too, as
			// v4-mapped addresses (ip6_datagram_recv_common_ctl).
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	})
	if cerr != nil {
		return false, cerr
	}
	if serr != nil {
		return false, serr
	}
	return true, nil
}

// replyOOB turns the control messages of a client's first datagram into the
// one that makes replies leave from the address the client sent to. It
// returns nil (let the kernel choose) when there is none or the datagram
// went to a multicast or broadcast address, which cannot be a source.
//
// The interface index is kept only for IPv6 link-local addresses, which
// need it; otherwise it is left 0 so the routing table picks the way out.
func replyOOB(oob []byte) []byte {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return nil
		}
		oob = rest
		switch {
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			var info unix.Inet6Pktinfo
			copy(info.Addr[:], data[:16])
			a := netip.AddrFrom16(info.Addr)
			if a.IsMulticast() || a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
				return nil
			}
			if a.IsLinkLocalUnicast() {
				info.Ifindex = binary.NativeEndian.Uint32(data[16:20])
			}
			return unix.PktInfo6(&info)
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// ipi_spec_dst is the local address the datagram arrived
			// for (the interface's for a broadcast); ipi_addr is the
			// header's destination.
			var info unix.Inet4Pktinfo
			copy(info.Spec_dst[:], data[4:8])
			if a := netip.AddrFrom4(info.Spec_dst); a.IsMulticast() || a.IsUnspecified() {
				return nil
			}
			return unix.PktInfo4(&info)
		}
	}
	return nil
}
