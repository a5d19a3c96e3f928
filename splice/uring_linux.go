package splice

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
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
// write(2) as before.

const (
	sysIOUringSetup    = 425
	sysIOUringEnter    = 426
	sysIOUringRegister = 427

	iouringOpSend = 26

	iouringSetupCQSize    = 1 << 3
	iouringSetupSubmitAll = 1 << 7

	iouringRegisterEventfdAsync = 7

	iouringOffSQRing = 0
	iouringOffSQEs   = 0x10000000

	iouringFeatSingleMmap = 1 << 0
	iouringFeatNoDrop     = 1 << 1
)

// ringEntries is the submission queue's size: at most two sends (one per
// flow) for each event of a round, and the completions of a submit queue
// at most one more each.
const ringEntries = 2 * maxEvents

type iouringSQOff struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type iouringCQOff struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type iouringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sq                                                                     iouringSQOff
	cq                                                                     iouringCQOff
}

type iouringSQE struct {
	opcode   uint8
	flags    uint8
	ioprio   uint16
	fd       int32
	off      uint64
	addr     uint64
	len      uint32
	opFlags  uint32
	userData uint64
	bufIndex uint16
	pers     uint16
	fileIdx  int32
	addr3    uint64
	pad      uint64
}

type iouringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// uring is a loop's ring. Only the loop's goroutine uses it.
type uring struct {
	fd      int
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []iouringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []iouringCQE
	queued  uint32 // SQEs written since the last submit
	mem     [][]byte
}

var (
	ringOnce sync.Once
	ringErr  error // why loops write with write(2), or nil
)

// RingWrites reports how the engine's loops write small messages:
// "io_uring", or "write(2)" and why.
func RingWrites() string {
	ringOnce.Do(probeRing)
	if ringErr != nil {
		return "write(2): " + ringErr.Error()
	}
	return "io_uring"
}

func probeRing() { ringErr = ringProbe() }

// ringProbe reports why loops cannot batch their writes, or nil.
func ringProbe() error {
	if os.Getenv("L4LB_IO_URING") == "0" {
		return errors.New("L4LB_IO_URING=0")
	}
	r, err := newURing(-1)
	if err != nil {
		return err
	}
	r.close()
	return nil
}

// newLoopRing returns a ring for a loop whose eventfd is evfd, or nil when
// loops write with write(2).
func newLoopRing(evfd int) *uring {
	ringOnce.Do(probeRing)
	if ringErr != nil {
		return nil
	}
	r, err := newURing(evfd)
	if err != nil {
		return nil // the probe worked: a limit (memlock, fds) here; write(2)
	}
	return r
}

func newURing(evfd int) (*uring, error) {
	p := iouringParams{flags: iouringSetupCQSize | iouringSetupSubmitAll, cqEntries: 2 * ringEntries}
	fd, _, e := unix.Syscall(sysIOUringSetup, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, os.NewSyscallError("io_uring_setup", e)
	}
	r := &uring{fd: int(fd)}
	if p.features&iouringFeatSingleMmap == 0 || p.features&iouringFeatNoDrop == 0 {
		r.close()
		return nil, errors.New("io_uring: kernel too old (no IORING_FEAT_SINGLE_MMAP or NODROP)")
	}
	size := max(p.sq.array+p.sqEntries*4, p.cq.cqes+p.cqEntries*uint32(unsafe.Sizeof(iouringCQE{})))
	rings, err := unix.Mmap(r.fd, iouringOffSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, os.NewSyscallError("mmap", err)
	}
	r.mem = append(r.mem, rings)
	sqes, err := unix.Mmap(r.fd, iouringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(iouringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, os.NewSyscallError("mmap", err)
	}
	r.mem = append(r.mem, sqes)
	if evfd >= 0 {
		ev := int32(evfd)
		if _, _, e := unix.Syscall6(sysIOUringRegister, fd, iouringRegisterEventfdAsync, uintptr(unsafe.Pointer(&ev)), 1, 0, 0); e != 0 {
			r.close()
			return nil, os.NewSyscallError("io_uring_register", e)
		}
	}
	base := unsafe.Pointer(&rings[0])
	at := func(off uint32) unsafe.Pointer { return unsafe.Add(base, off) }
	r.sqHead = (*uint32)(at(p.sq.head))
	r.sqTail = (*uint32)(at(p.sq.tail))
	r.sqMask = *(*uint32)(at(p.sq.ringMask))
	r.sqArray = unsafe.Slice((*uint32)(at(p.sq.array)), p.sqEntries)
	r.sqes = unsafe.Slice((*iouringSQE)(unsafe.Pointer(&sqes[0])), p.sqEntries)
	r.cqHead = (*uint32)(at(p.cq.head))
	r.cqTail = (*uint32)(at(p.cq.tail))
	r.cqMask = *(*uint32)(at(p.cq.ringMask))
	r.cqes = unsafe.Slice((*iouringCQE)(at(p.cq.cqes)), p.cqEntries)
	return r, nil
}

func (r *uring) close() {
	for _, m := range r.mem {
		unix.Munmap(m)
	}
	unix.Close(r.fd)
}

// send queues a send of b to fd, reported with ud. It returns false when
// the submission queue is full (the caller writes itself).
func (r *uring) send(fd int, b []byte, ud uint64) bool {
	tail := *r.sqTail
	if tail-atomic.LoadUint32(r.sqHead) >= uint32(len(r.sqes)) {
		return false
	}
	i := tail & r.sqMask
	r.sqArray[i] = i
	r.sqes[i] = iouringSQE{
		opcode:   iouringOpSend,
		fd:       int32(fd),
		addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))),
		len:      uint32(len(b)),
		opFlags:  unix.MSG_NOSIGNAL | unix.MSG_DONTWAIT,
		userData: ud,
	}
	atomic.StoreUint32(r.sqTail, tail+1)
	r.queued++
	return true
}

// submit hands the queued sends to the kernel, which runs them before it
// returns. Raw, like the loop's other calls: none of this blocks.
func (r *uring) submit() {
	for r.queued > 0 {
		n, _, e := unix.RawSyscall6(sysIOUringEnter, uintptr(r.fd), uintptr(r.queued), 0, 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN || e == unix.EBUSY:
			// No memory for requests now, or completions overflowed:
			// the caller reaps and submits again.
			return
		case e != 0:
			panic("splice: io_uring_enter: " + e.Error()) // EBADF, EFAULT, EINVAL: a bug
		}
		r.queued -= uint32(n)
	}
}

// reap hands each completion on the ring to f and reports whether there
// was any.
func (r *uring) reap(f func(ud uint64, res int32)) bool {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	if head == tail {
		return false
	}
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		ud, res := c.userData, c.res
		// Free the entry before f runs: f may queue and submit more.
		atomic.StoreUint32(r.cqHead, head+1)
		f(ud, res)
	}
	return true
}
