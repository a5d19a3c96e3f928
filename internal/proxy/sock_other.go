//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// Raw sockets (sock_linux.go) are Linux-only: elsewhere package net accepts
// and dials everything.

type rawAccepter struct{}

func newRawAccepter(net.Listener) *rawAccepter { return nil }

func (a *rawAccepter) close() {}

func (a *rawAccepter) accept() (net.Conn, error) { return nil, errors.New("no raw accept") }

func rawTarget(network, address string) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

func dialSocket(context.Context, netip.AddrPort, netip.Addr, time.Duration, time.Time) (net.Conn, error) {
	return nil, errors.New("no raw dial")
}

func peerOf(c net.Conn) netip.AddrPort  { return addrPortOf(c.RemoteAddr()) }
func localOf(c net.Conn) netip.AddrPort { return addrPortOf(c.LocalAddr()) }

func setClientKeepalive(c net.Conn, d time.Duration, force bool) {
	if tc, ok := c.(*net.TCPConn); ok && (d > 0 || force) {
		setKeepalive(tc, d)
	}
}
