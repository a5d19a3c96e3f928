package uring

import (
	"bytes"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestProbeHonoursSwitch: L4LB_IO_URING=0 turns io_uring off, and says so.
func TestProbeHonoursSwitch(t *testing.T) {
	t.Setenv("L4LB_IO_URING", "0")
	if err := probe(); err == nil || !strings.Contains(err.Error(), "L4LB_IO_URING=0") {
		t.Fatalf("probe() = %v, want the switch named", err)
	}
}

func needRing(t *testing.T, entries uint32) *Ring {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	r, err := New(entries, -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// dgramPair is a connected pair of non-blocking datagram sockets.
func dgramPair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

type completion struct {
	ud  uint64
	res int32
}

func reapAll(r *Ring) []completion {
	var got []completion
	r.Reap(func(ud uint64, res int32) { got = append(got, completion{ud, res}) })
	return got
}

// TestSendsCompleteInSubmit: a send and a sendmsg (to an address of its
// own) are done when Submit returns, with every byte where it was sent. The
// UDP listener and the splice engine reuse a buffer as soon as its
// completion is reaped after Submit; this is the contract they rely on.
func TestSendsCompleteInSubmit(t *testing.T) {
	r := needRing(t, 4)
	a, b := dgramPair(t)

	// An unconnected UDP socket sends to a listener's address.
	to, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(to)
	if err := unix.Bind(to, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(to)
	if err != nil {
		t.Fatal(err)
	}
	from, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(from)
	port := sa.(*unix.SockaddrInet4).Port
	name := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: [4]byte{127, 0, 0, 1}}
	pb := (*[2]byte)(unsafe.Pointer(&name.Port)) // network order
	pb[0], pb[1] = byte(port>>8), byte(port)
	one, two := []byte("first datagram"), []byte("second, by sendmsg")
	iov := &unix.Iovec{Base: &two[0]}
	iov.SetLen(len(two))
	h := &unix.Msghdr{Name: (*byte)(unsafe.Pointer(name)), Namelen: unix.SizeofSockaddrInet4, Iov: iov}
	h.SetIovlen(1)

	if !r.Send(a, one, 1) || !r.SendMsg(from, h, 2) {
		t.Fatal("a ring of 4 refused 2 requests")
	}
	if r.Queued() != 2 {
		t.Fatalf("Queued() = %d, want 2", r.Queued())
	}
	r.Submit()
	if r.Queued() != 0 {
		t.Fatalf("Queued() = %d after Submit", r.Queued())
	}
	got := reapAll(r)
	want := []completion{{1, int32(len(one))}, {2, int32(len(two))}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("completions after Submit %v, want %v", got, want)
	}
	buf := make([]byte, 64)
	if n, err := unix.Read(b, buf); err != nil || !bytes.Equal(buf[:n], one) {
		t.Fatalf("peer read %q, %v; want %q", buf[:n], err, one)
	}
	if n, _, err := unix.Recvfrom(to, buf, 0); err != nil || !bytes.Equal(buf[:n], two) {
		t.Fatalf("addressee read %q, %v; want %q", buf[:n], err, two)
	}
}

// TestSendReportsEAGAIN: a send to a socket that has no room completes at
// once with -EAGAIN instead of waiting for room.
func TestSendReportsEAGAIN(t *testing.T) {
	r := needRing(t, 2)
	a, _ := dgramPair(t)
	msg := make([]byte, 1024)
	for i := 0; ; i++ {
		if _, err := unix.Write(a, msg); err == unix.EAGAIN {
			break
		} else if err != nil || i > 1<<20 {
			t.Fatalf("filling the pair: %v after %d datagrams", err, i)
		}
	}
	r.Send(a, msg, 7)
	r.Submit()
	if got := reapAll(r); len(got) != 1 || got[0] != (completion{7, -int32(unix.EAGAIN)}) {
		t.Fatalf("completions %v, want one -EAGAIN for 7", got)
	}
}

// TestQueueFull: Send says false when the submission queue is full, and
// the queue has room again once submitted.
func TestQueueFull(t *testing.T) {
	r := needRing(t, 2)
	a, _ := dgramPair(t)
	if !r.Send(a, []byte("1"), 1) || !r.Send(a, []byte("2"), 2) {
		t.Fatal("a ring of 2 refused 2 sends")
	}
	if r.Send(a, []byte("3"), 3) {
		t.Fatal("a full ring took a third send")
	}
	r.Submit()
	if !r.Send(a, []byte("3"), 3) {
		t.Fatal("no room after Submit")
	}
	r.Submit()
	if got := reapAll(r); len(got) != 3 || got[2] != (completion{3, 1}) {
		t.Fatalf("completions %v, want 3, the last for 3", got)
	}
}

// TestReapNested: a Reap inside f goes on from the next completion, and
// every completion is seen once, in order.
func TestReapNested(t *testing.T) {
	r := needRing(t, 4)
	a, _ := dgramPair(t)
	for i := uint64(1); i <= 3; i++ {
		r.Send(a, []byte("x"), i)
	}
	r.Submit()
	var seen []uint64
	var f func(ud uint64, res int32)
	f = func(ud uint64, res int32) {
		seen = append(seen, ud)
		if ud == 1 {
			r.Reap(f)
		}
	}
	r.Reap(f)
	if len(seen) != 3 || seen[0] != 1 || seen[1] != 2 || seen[2] != 3 {
		t.Fatalf("completions seen %v, want [1 2 3]", seen)
	}
	if r.Reap(f) {
		t.Fatal("Reap found a completion twice")
	}
}
