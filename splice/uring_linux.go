package splice

import (
	"github.com/l4lb/l4lb/internal/uring"
)

// Batched writes. A loop that has an io_uring queues each small-mode write
// as an IORING_OP_SEND instead of calling write(2), and submits all that one
// round of events queued with a single io_uring_enter before it waits again.
// The sends say MSG_DONTWAIT, so io_uring runs each one inline during the
// submit, as the write(2) would have run, and reports EAGAIN instead of
// waiting for room (io_uring does not arm a poll for a send that says
// MSG_DONTWAIT). Their completions are on the ring when io_uring_enter
// returns; the loop reads them there and goes on with each flow as it would
// after a write(2) that returned the same.
//
// Why: on 2 shared CPUs this took 0.6–2.8 µs (median 1.9) off l4lb's CPU
// per small request, and about 2 of its 5.2 system calls (PERFORMANCE.md,
// "What each optimization bought"): the wake-ups of the endpoints that a
// round's writes cause happen inside one system call, and the loop's
// thread is not switched out between its writes.
//
// Safety rests on three rules:
//   - A flow with a send queued or in flight (flow.sending) neither reads
//     into its buffer nor writes again until the completion comes back.
//   - A loop submits what it queued before it closes any socket (loop.end),
//     so a queued send can never reach a socket that a later accept got the
//     same fd number for; once submitted, a send holds the file itself.
//   - Should a send ever complete later (io_uring punted it), the loop's
//     eventfd is registered for such asynchronous completions
//     (IORING_REGISTER_EVENTFD_ASYNC), so the loop wakes to read it; a
//     session ended meanwhile does not give that flow's buffer back to the
//     pool.
//
// Where io_uring is missing or refused (an old kernel, a seccomp filter,
// kernel.io_uring_disabled) or L4LB_IO_URING=0 is set, loops write with
// write(2) as before (internal/uring).

// ringEntries is the submission queue's size: at most two sends (one per
// flow) for each event of a round, and the completions of a submit queue
// at most one more each.
const ringEntries = 2 * maxEvents

// RingWrites reports how the engine's loops write small messages:
// "io_uring", or "write(2)" and why.
func RingWrites() string {
	if err := uring.Available(); err != nil {
		return "write(2): " + err.Error()
	}
	return "io_uring"
}

// newLoopRing returns a ring for a loop whose eventfd is evfd, or nil when
// loops write with write(2): io_uring is not available, or this ring could
// not be set up although the probe's could (a memlock or fd limit).
func newLoopRing(evfd int) *uring.Ring {
	r, err := uring.New(ringEntries, evfd)
	if err != nil {
		return nil
	}
	return r
}
