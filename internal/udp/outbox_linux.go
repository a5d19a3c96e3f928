package udp

import (
	"unsafe"

	"github.com/l4lb/l4lb/internal/uring"
	"golang.org/x/sys/unix"
)

// outbox batches the owner's sends on an io_uring: each client datagram
// relayed to a host (a send on the session's socket) and each reply relayed
// to a client (a sendmsg on the listener's socket) is queued, and the owner
// submits them together with one io_uring_enter (Listener.flush), instead
// of making a write(2) or sendmsg(2) each. The sends say MSG_DONTWAIT, so
// the kernel runs them inline as the system calls would have run, and
// their completions are on the ring when the submit returns: flush then
// goes on with each datagram as the system call's result would have.
//
// Why: in the suite's UDP scenario this took the round trips/s of 8
// lockstep clients from 0.38–0.59 of direct to 0.53–0.62, and the proxy's
// CPU per round trip from a median of 13.1 µs to 12.5 (docs/PERFORMANCE.md):
// the clients' and the backend's wake-ups that a round's sends cause happen
// inside one system call, and the owner's thread is not switched out
// between its sends.
//
// What keeps the buffers safe:
//   - A queued datagram sits in the reader's batch buffers. The owner
//     flushes after each listener batch and before each listener read, so
//     recvmmsg never overwrites a datagram that is queued; replies are read
//     into the slots after those queued already (owner.used), and flush
//     frees them all.
//   - A session's socket is closed only after what was queued is submitted
//     (Listener.remove flushes first): a queued send can never reach a
//     socket that a new session got the same fd number for.
//   - At most one datagram per session is queued toward its host per
//     submit (handle flushes first). A refused send moves the datagram to
//     another host, as with write(2); the datagrams behind it in the same
//     batch then follow it there instead of going to the refused socket.
//   - flush returns only when every request it submitted has completed
//     (uring.Ring.Wait for one io_uring punted to a worker, which a
//     MSG_DONTWAIT send is not expected to be).
//
// Where io_uring is missing or refused, or L4LB_IO_URING=0 is set, the
// owner has no outbox and makes the system calls itself.
type outbox struct {
	ring   *uring.Ring
	ops    [outboxSize]sendOp
	n      int // ops queued since the last flush
	done   int // of them, completed
	msgs   [batchSize]unix.Msghdr
	iovs   [batchSize]unix.Iovec
	doneFn func(ud uint64, res int32)
}

// outboxSize bounds what one flush holds: one listener batch's datagrams
// (handle flushes when full), or the replies read into the batchSize slots
// (replies flushes when they are all taken), never both (readListener
// flushes before and after each batch). The ring has twice as many
// entries, so queueing on it cannot fail.
const outboxSize = batchSize

// newOutbox returns the owner's outbox, or nil when it sends with system
// calls; err says why when io_uring is available but this ring is not.
func newOutbox() (*outbox, error) {
	if uring.Available() != nil {
		return nil, nil
	}
	r, err := uring.New(2*outboxSize, -1)
	if err != nil {
		return nil, err
	}
	return &outbox{ring: r}, nil
}

func (b *outbox) close() { b.ring.Close() }

// full reports whether another send would not fit this flush.
func (b *outbox) full() bool { return b.n == len(b.ops) }

// unsubmitted reports whether sends are queued that the kernel has not taken.
func (b *outbox) unsubmitted() bool { return b.ring.Queued() > 0 }

// up queues datagram p of client name (pktinfo dst) to s's host.
func (b *outbox) up(s *session, p []byte, name *sockName, dst []byte) {
	b.ops[b.n] = sendOp{s: s, b: p, up: true, name: name, dst: dst}
	b.ring.Send(s.fd, p, uint64(b.n))
	b.n++
}

// down queues reply p, read into batch slot, from the listener socket fd
// to s's client.
func (b *outbox) down(fd int, s *session, p []byte, slot int) {
	h, iov := &b.msgs[slot], &b.iovs[slot]
	*iov = unix.Iovec{}
	if len(p) > 0 {
		iov.Base = &p[0]
	}
	iov.SetLen(len(p))
	*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&s.name.sa)), Namelen: s.name.n, Iov: iov}
	h.SetIovlen(1)
	if len(s.oob) > 0 {
		h.Control = &s.oob[0]
		h.SetControllen(len(s.oob))
	}
	b.ops[b.n] = sendOp{s: s, b: p}
	b.ring.SendMsg(fd, h, uint64(b.n))
	b.n++
}

// submit hands every queued send to the kernel and calls f with each
// completion, returning when all have come back.
func (b *outbox) submit() {
	r := b.ring
	for r.Queued() > 0 {
		r.Submit()
		if r.Queued() > 0 {
			// No memory for requests now: what completed frees some.
			r.Reap(b.doneFn)
		}
	}
	r.Reap(b.doneFn)
	for b.done < b.n {
		r.Wait(uint32(b.n - b.done))
		r.Reap(b.doneFn)
	}
	b.n, b.done = 0, 0
}

// completed takes the op a completion names, and its result as an error.
func (b *outbox) completed(ud uint64, res int32) (op sendOp, err error) {
	op = b.ops[ud]
	b.ops[ud] = sendOp{}
	b.done++
	if res < 0 {
		err = unix.Errno(-res)
	}
	return op, err
}
