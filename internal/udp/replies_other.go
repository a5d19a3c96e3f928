//go:build !linux

package udp

import (
	"sync"
	"syscall"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// readReplies is the session socket's RawConn read callback: it relays
// every reply ready (reading until EAGAIN) and returns false to wait for
// more, true once the session has ended.
func (rr *replies) readReplies(fd uintptr) bool {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := syscall.Read(int(fd), *bp)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			rr.failed(err)
			return true
		}
		if !rr.got((*bp)[:n]) {
			return true
		}
	}
}
