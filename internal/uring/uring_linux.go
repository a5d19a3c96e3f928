package uring

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	sysIOUringSetup    = 425
	sysIOUringEnter    = 426
	sysIOUringRegister = 427

	iouringOpSendmsg = 9
	iouringOpSend    = 26

	iouringSetupCQSize    = 1 << 3
	iouringSetupSubmitAll = 1 << 7

	iouringRegisterEventfdAsync = 7

	iouringEnterGetEvents = 1 << 0

	iouringOffSQRing = 0
	iouringOffSQEs   = 0x10000000

	iouringFeatSingleMmap = 1 << 0
	iouringFeatNoDrop     = 1 << 1
)

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

// Ring is one io_uring. Only one goroutine may use it.
type Ring struct {
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
	probeOnce sync.Once
	probeErr  error
)

// Available reports why this process does not use io_uring, or nil when
// it does. The answer is found once: L4LB_IO_URING=0 in the environment,
// or a ring that cannot be set up (an old kernel, a seccomp filter,
// kernel.io_uring_disabled), says no.
func Available() error {
	probeOnce.Do(func() { probeErr = probe() })
	return probeErr
}

func probe() error {
	if os.Getenv("L4LB_IO_URING") == "0" {
		return errors.New("L4LB_IO_URING=0")
	}
	r, err := newRing(1, -1)
	if err != nil {
		return err
	}
	r.Close()
	return nil
}

// New sets up a ring of entries submission slots (a power of two) and
// twice as many completion slots. With evfd ≥ 0, that eventfd is signalled
// when a request completes after the io_uring_enter that submitted it
// (IORING_REGISTER_EVENTFD_ASYNC). It fails when Available does, and when
// this ring cannot be set up (a memlock or fd limit).
func New(entries uint32, evfd int) (*Ring, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	return newRing(entries, evfd)
}

func newRing(entries uint32, evfd int) (*Ring, error) {
	p := iouringParams{flags: iouringSetupCQSize | iouringSetupSubmitAll, cqEntries: 2 * entries}
	fd, _, e := unix.Syscall(sysIOUringSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, os.NewSyscallError("io_uring_setup", e)
	}
	r := &Ring{fd: int(fd)}
	if p.features&iouringFeatSingleMmap == 0 || p.features&iouringFeatNoDrop == 0 {
		r.Close()
		return nil, errors.New("io_uring: kernel too old (no IORING_FEAT_SINGLE_MMAP or NODROP)")
	}
	size := max(p.sq.array+p.sqEntries*4, p.cq.cqes+p.cqEntries*uint32(unsafe.Sizeof(iouringCQE{})))
	rings, err := unix.Mmap(r.fd, iouringOffSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, os.NewSyscallError("mmap", err)
	}
	r.mem = append(r.mem, rings)
	sqes, err := unix.Mmap(r.fd, iouringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(iouringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.Close()
		return nil, os.NewSyscallError("mmap", err)
	}
	r.mem = append(r.mem, sqes)
	if evfd >= 0 {
		ev := int32(evfd)
		if _, _, e := unix.Syscall6(sysIOUringRegister, fd, iouringRegisterEventfdAsync, uintptr(unsafe.Pointer(&ev)), 1, 0, 0); e != 0 {
			r.Close()
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

// Close unmaps the ring and closes its fd.
func (r *Ring) Close() {
	for _, m := range r.mem {
		unix.Munmap(m)
	}
	unix.Close(r.fd)
}

// Queued is the number of requests queued since the last Submit that the
// kernel has not taken yet.
func (r *Ring) Queued() uint32 { return r.queued }

// push queues sqe; it reports false when the submission queue is full.
func (r *Ring) push(sqe iouringSQE) bool {
	tail := *r.sqTail
	if tail-atomic.LoadUint32(r.sqHead) >= uint32(len(r.sqes)) {
		return false
	}
	i := tail & r.sqMask
	r.sqArray[i] = i
	r.sqes[i] = sqe
	atomic.StoreUint32(r.sqTail, tail+1)
	r.queued++
	return true
}

// Send queues a send(2) of b to fd with MSG_NOSIGNAL|MSG_DONTWAIT, its
// completion reported with ud. It returns false when the submission queue
// is full (the caller writes itself, or submits first). b must stay as it
// is until the completion is reaped.
func (r *Ring) Send(fd int, b []byte, ud uint64) bool {
	return r.push(iouringSQE{
		opcode:   iouringOpSend,
		fd:       int32(fd),
		addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))),
		len:      uint32(len(b)),
		opFlags:  unix.MSG_NOSIGNAL | unix.MSG_DONTWAIT,
		userData: ud,
	})
}

// SendMsg queues a sendmsg(2) of h to fd with MSG_DONTWAIT, like Send. h
// and all it points to must stay as they are until the completion is
// reaped, and must not be on a goroutine's stack (stacks move).
func (r *Ring) SendMsg(fd int, h *unix.Msghdr, ud uint64) bool {
	return r.push(iouringSQE{
		opcode:   iouringOpSendmsg,
		fd:       int32(fd),
		addr:     uint64(uintptr(unsafe.Pointer(h))),
		len:      1,
		opFlags:  unix.MSG_DONTWAIT,
		userData: ud,
	})
}

// Submit hands the queued requests to the kernel. A send that says
// MSG_DONTWAIT runs inline, before io_uring_enter returns, and reports
// EAGAIN rather than waiting for room (io_uring arms no poll for it), so
// its completion is on the ring when Submit returns. Raw, like the loops'
// other calls: none of this blocks. When the kernel has no memory for
// requests now, or completions overflowed, some stay queued: the caller
// reaps and submits again.
func (r *Ring) Submit() {
	for r.queued > 0 {
		n, _, e := unix.RawSyscall6(sysIOUringEnter, uintptr(r.fd), uintptr(r.queued), 0, 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN || e == unix.EBUSY:
			return
		case e != 0:
			panic("uring: io_uring_enter: " + e.Error()) // EBADF, EFAULT, EINVAL: a bug
		}
		r.queued -= uint32(n)
	}
}

// Wait blocks until at least n completions are on the ring (unreaped ones
// count). It is for a request that io_uring punted to a worker, which
// Submit's callers do not expect; it goes through Syscall, as it may block.
func (r *Ring) Wait(n uint32) {
	for {
		_, _, e := unix.Syscall6(sysIOUringEnter, uintptr(r.fd), 0, uintptr(n), iouringEnterGetEvents, 0, 0)
		if e != unix.EINTR {
			return
		}
	}
}

// Reap hands each completion on the ring to f, in order, and reports
// whether there was any. f may queue, submit and reap itself: each entry is
// freed before f sees it, and a nested Reap goes on from there.
func (r *Ring) Reap(f func(ud uint64, res int32)) bool {
	got := false
	for {
		head := *r.cqHead
		if head == atomic.LoadUint32(r.cqTail) {
			return got
		}
		c := &r.cqes[head&r.cqMask]
		ud, res := c.userData, c.res
		atomic.StoreUint32(r.cqHead, head+1)
		got = true
		f(ud, res)
	}
}
