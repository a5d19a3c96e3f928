package udp

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// replyBatch is how many replies one recvmmsg(2) takes off a session's
// socket at most. Two is enough for the short batch to tell that the queue
// is empty (replies seldom queue behind each other: a session has one
// client), without the read that would return EAGAIN.
const replyBatch = 2

// replyBufs are the buffers of one read of a session socket, pooled: an
// idle session holds none.
type replyBufs struct {
	hdrs [replyBatch]mmsghdr
	iovs [replyBatch]unix.Iovec
	buf  [replyBatch][maxDatagram]byte
}

var replyPool = sync.Pool{New: func() any { return new(replyBufs) }}

// readReplies is the session socket's RawConn read callback: it relays
// every reply ready and returns false to wait for more, true once the
// session has ended.
//
// A batch that comes back short means the queue was empty, and the
// callback waits without reading again; the reasoning is the listener
// reader's (see reader), within one RawConn.Read. A connected socket does
// get errors (ICMP unreachable). One already pending when a batch starts is
// returned at once, before any queued reply, as read(2) did. One that
// arrives while a batch is being read is kept by the kernel for the next
// call; its arrival woke the poller after this batch began, so the wait
// ends at once and the next recvmmsg returns it.
func (rr *replies) readReplies(fd uintptr) bool {
	b := replyPool.Get().(*replyBufs)
	defer replyPool.Put(b)
	for {
		for i := range b.hdrs {
			b.iovs[i].Base = &b.buf[i][0]
			b.iovs[i].SetLen(maxDatagram)
			b.hdrs[i].hdr = unix.Msghdr{Iov: &b.iovs[i]}
			b.hdrs[i].hdr.SetIovlen(1)
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), replyBatch, unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			rr.failed(errno)
			return true
		}
		for i := range int(n) {
			if !rr.got(b.buf[i][:b.hdrs[i].n]) {
				return true
			}
		}
		if n < replyBatch {
			return false
		}
	}
}
