//go:build !linux

package udp

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// The UDP engine's event loop is epoll (loop_linux.go). Elsewhere these
// stand-ins let the package build, and a listener refuses to run.

var errNotLinux = errors.New("UDP listeners need Linux (epoll, recvmmsg)")

type event struct{}

type poller struct {
	file *os.File
	rc   syscall.RawConn
}

func newPoller() (*poller, error)            { return nil, errNotLinux }
func (p *poller) add(int, int32) error       { return errNotLinux }
func (p *poller) wait() []event              { return nil }
func slotOf(*event) int32                    { return listenerSlot }
func rawFD(*net.UDPConn) (int, error)        { return -1, errNotLinux }
func dialSocket(netip.AddrPort) (int, error) { return -1, errNotLinux }

const (
	maxEvents    = 1
	batchSize    = 1
	listenerSlot = -1
)

type sender struct{ fd int }

func (w *sender) send([]byte, *sockName, []byte) error { return errNotLinux }

type sockName struct{}

func sockaddrPort(*sockName) netip.AddrPort { return netip.AddrPort{} }

type reader struct{}

func newReader(bool, func([]byte, *sockName, []byte)) (*reader, error) { return nil, errNotLinux }
func (r *reader) close()                                               {}
func (r *reader) recvConnected(int, int, int) (int, error)             { return 0, errNotLinux }
func (r *reader) payload(int) []byte                                   { return nil }
func (r *reader) recvmmsg(int) (bool, error)                           { return false, errNotLinux }

type outbox struct {
	n      int
	doneFn func(uint64, int32)
}

func newOutbox() (*outbox, error)                         { return nil, nil }
func (b *outbox) close()                                  {}
func (b *outbox) full() bool                              { return false }
func (b *outbox) unsubmitted() bool                       { return false }
func (b *outbox) up(*session, []byte, *sockName, []byte)  {}
func (b *outbox) down(int, *session, []byte, int)         {}
func (b *outbox) submit()                                 {}
func (b *outbox) completed(uint64, int32) (sendOp, error) { return sendOp{}, nil }
