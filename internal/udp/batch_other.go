//go:build !linux

package udp

import (
	"net"
	"net/netip"
)

// reader reads one datagram per call where recvmmsg(2) is not available.
type reader struct {
	c       *net.UDPConn
	buf     []byte
	deliver func(b []byte, from netip.AddrPort, oob []byte)
}

func newReader(c *net.UDPConn, _ bool, deliver func(b []byte, from netip.AddrPort, oob []byte)) (*reader, error) {
	return &reader{c: c, buf: make([]byte, maxDatagram), deliver: deliver}, nil
}

func (r *reader) close() {}

func (r *reader) read() error {
	n, from, err := r.c.ReadFromUDPAddrPort(r.buf)
	if err != nil {
		return err
	}
	r.deliver(r.buf[:n], from, nil)
	return nil
}
