// Package uring is the little of io_uring that l4lb's event loops use: a
// ring on which one goroutine queues non-blocking sends (send(2) and
// sendmsg(2) with MSG_DONTWAIT) and hands a whole round of them to the
// kernel with one io_uring_enter.
//
// The kernel runs such a send inline, during the submit, as the system call
// would have run, and reports EAGAIN instead of waiting for room; so its
// completion is on the ring when Submit returns, and the buffer is free
// again after it is reaped. What that buys, on 2 shared CPUs: the wake-ups
// of the receivers happen inside one system call, and the loop's thread is
// not switched out between its sends (docs/PERFORMANCE.md).
//
// Available says whether the process uses io_uring at all: not with
// L4LB_IO_URING=0 in the environment, nor where a ring cannot be set up (a
// kernel before 5.18 lacks what is used here, a seccomp filter or
// kernel.io_uring_disabled can refuse it). Callers then make the system
// calls themselves.
//
// The structures are the kernel's (include/uapi/linux/io_uring.h), written
// out here with only the fields and opcodes in use.
package uring
