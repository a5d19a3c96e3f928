package udp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMmsghdrLayout: mmsghdr must be struct mmsghdr as the kernel reads it
// in an array, or every header after the first is garbage.
func TestMmsghdrLayout(t *testing.T) {
	want := uintptr(64)
	if unsafe.Sizeof(uintptr(0)) == 4 {
		want = 32
	}
	if got := unsafe.Sizeof(mmsghdr{}); got != want {
		t.Fatalf("sizeof(mmsghdr) = %d; want %d", got, want)
	}
	if got := unsafe.Offsetof(mmsghdr{}.n); got != unsafe.Sizeof(unix.Msghdr{}) {
		t.Fatalf("offsetof(msg_len) = %d; want %d", got, unsafe.Sizeof(unix.Msghdr{}))
	}
}

// TestSockaddrPort: source addresses come out as net's ReadFromUDPAddrPort
// gives them.
func TestSockaddrPort(t *testing.T) {
	type raw = sockName
	port := func(p *uint16, v uint16) { binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(p))[:], v) }
	v4 := func(a [4]byte, p uint16) raw {
		var r raw
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&r.sa))
		s4.Family, s4.Addr = unix.AF_INET, a
		port(&s4.Port, p)
		r.n = unix.SizeofSockaddrInet4
		return r
	}
	v6 := func(a string, p uint16, scope uint32) raw {
		r := raw{sa: unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: netip.MustParseAddr(a).As16(), Scope_id: scope}, n: unix.SizeofSockaddrInet6}
		port(&r.sa.Port, p)
		return r
	}
	for _, tc := range []struct {
		name string
		raw  raw
		want string
	}{
		{"ipv4", v4([4]byte{192, 0, 2, 7}, 53), "192.0.2.7:53"},
		{"ipv6", v6("2001:db8::1", 65535, 0), "[2001:db8::1]:65535"},
		{"ipv4 client of a dual-stack socket", v6("::ffff:192.0.2.7", 1, 0), "[::ffff:192.0.2.7]:1"},
		{"link-local, zone = interface index", v6("fe80::1", 5353, 3), "[fe80::1%3]:5353"},
		{"truncated", raw{sa: unix.RawSockaddrInet6{Family: unix.AF_INET6}, n: 8}, "invalid AddrPort"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sockaddrPort(&tc.raw).String(); got != tc.want {
				t.Errorf("got %s; want %s", got, tc.want)
			}
		})
	}
}

// TestBurst: more datagrams than a batch holds, of sizes from 0 bytes to
// the largest UDP payload, sent by one client before it reads: every reply
// comes back whole and in order, through a specific and a wildcard
// listener (whose batches carry control messages too).
func TestBurst(t *testing.T) {
	sizes := []int{65507, 0, 1, 9000, 1472}
	for len(sizes) < 3*batchSize+1 {
		sizes = append(sizes, 1+len(sizes)*37)
	}
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	for _, listen := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		t.Run(listen, func(t *testing.T) {
			r := startAt(t, listen, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute})
			port := netip.MustParseAddrPort(r.addr).Port()
			c := client(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
			_ = c.SetReadBuffer(4 << 20)
			var sent [][]byte
			for i, n := range sizes {
				p := bytes.Repeat([]byte{byte(i)}, n)
				if n > 0 {
					p[0] = byte(i + 1) // tell a reply from the next one's
				}
				if _, err := c.Write(p); err != nil {
					t.Fatalf("write %d bytes: %v", n, err)
				}
				sent = append(sent, p)
			}
			buf := make([]byte, maxDatagram)
			for i, p := range sent {
				c.SetReadDeadline(time.Now().Add(scaled(2 * time.Second)))
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("reply %d of %d (%d bytes): %v; stats %+v", i, len(sent), len(p), err, r.l.Stats())
				}
				if !bytes.Equal(buf[:n], p) {
					t.Fatalf("reply %d: %d bytes, want %d (the datagram sent %d-th)", i, n, len(p), i)
				}
			}
			if st := r.l.Stats(); st.SessionsCreated != 1 || st.DatagramsUp != uint64(len(sent)) {
				t.Errorf("stats %+v; want 1 session, %d datagrams up", st, len(sent))
			}
		})
	}
}

// BenchmarkReadQueued: the cost per datagram of taking k queued datagrams
// off a socket, one recvfrom(2) each and one more to see EAGAIN (what a
// read per datagram does), against the owner's recvmmsg of up to
// batchSize. The writes are not timed.
//
//	go test -run - -bench ReadQueued ./internal/udp/
func BenchmarkReadQueued(b *testing.B) {
	for _, k := range []int{1, 2, 4, 16} {
		for _, mode := range []string{"net", "recvfrom", "recvmmsg"} {
			b.Run(fmt.Sprintf("queued=%d/%s", k, mode), func(b *testing.B) {
				c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				_ = c.SetReadBuffer(4 << 20)
				w := client(b, c.LocalAddr().String())
				got := 0
				r, err := newReader(false, func([]byte, *sockName, []byte) { got++ })
				if err != nil {
					b.Fatal(err)
				}
				defer r.close()
				buf := make([]byte, maxDatagram)
				msg := make([]byte, 64)
				rc, _ := c.SyscallConn()
				err = rc.Control(func(fd uintptr) {
					for b.Loop() {
						b.StopTimer()
						for range k {
							if _, err := w.Write(msg); err != nil {
								b.Fatal(err)
							}
						}
						got = 0
						b.StartTimer()
						switch mode {
						case "recvmmsg":
							for got < k {
								if full, err := r.recvmmsg(int(fd)); err != nil || !full {
									break
								}
							}
						case "net":
							// What serve did before batching: net's read per
							// datagram, then one that finds the queue empty
							// (made raw here: net's would wait).
							for range k {
								if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
									b.Fatal(err)
								}
								got++
							}
							_, _, _ = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
						default:
							// The system call net's ReadFromUDPAddrPort makes,
							// without its allocation-free address decoding.
							var from unix.RawSockaddrInet6
							for {
								n := uint32(unix.SizeofSockaddrInet6)
								_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
									unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&from)), uintptr(unsafe.Pointer(&n)))
								if errno != 0 {
									break
								}
								got++
							}
						}
						if got != k {
							b.Fatalf("read %d of %d", got, k)
						}
					}
				})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k), "ns/datagram")
			})
		}
	}
}

// TestRecvConnected: the contract replies relies on. A short batch means the
// queue was empty (the next call finds EAGAIN); a full one may leave more.
// A datagram socket pair queues a datagram before send returns, so the
// counts are exact whatever the machine is doing.
func TestRecvConnected(t *testing.T) {
	rd, err := newReader(false, func([]byte, *sockName, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	w := &recvChecker{t: t, rd: rd, fd: fds[0]}
	send := func(n int) {
		t.Helper()
		for range n {
			p := []byte(fmt.Sprintf("reply %d", len(w.queue)+w.seen))
			if _, err := unix.Write(fds[1], p); err != nil {
				t.Fatal(err)
			}
			w.queue = append(w.queue, string(p))
		}
	}

	w.want(batchSize, 0, unix.EAGAIN) // nothing queued
	send(3)
	w.want(batchSize, 3, nil) // short: drained
	w.want(batchSize, 0, unix.EAGAIN)
	send(5)
	w.want(4, 4, nil) // full: more may be queued, and is
	w.want(4, 1, nil)
	send(batchSize + 1)
	w.want(batchSize, batchSize, nil)
	w.want(batchSize, 1, nil)
	if _, err := unix.Write(fds[1], nil); err != nil { // an empty datagram counts too
		t.Fatal(err)
	}
	w.queue = append(w.queue, "")
	send(1)
	w.want(batchSize, 2, nil)
}

// TestRecvConnectedICMP: on a connected UDP socket an ICMP error is
// reported before the replies queued ahead of it, which stay for the next
// call, as read(2) reports it.
func TestRecvConnectedICMP(t *testing.T) {
	rd, err := newReader(false, func([]byte, *sockName, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.close()
	host, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := dialSocket(host.LocalAddr().(*net.UDPAddr).AddrPort())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	local, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	sa4 := local.(*unix.SockaddrInet4)
	if _, err := host.WriteToUDP([]byte("reply"), &net.UDPAddr{IP: net.IP(sa4.Addr[:]), Port: sa4.Port}); err != nil {
		t.Fatal(err)
	}
	// The host goes away: the next datagram to it draws an ICMP port
	// unreachable.
	host.Close()
	if _, err := unix.Write(fd, []byte("to nobody")); err != nil {
		t.Fatal(err)
	}
	// Both are delivered in softirq, which may run after the calls above
	// return: wait until the socket has both.
	deadline := time.Now().Add(scaled(5 * time.Second))
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 100); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		if pfd[0].Revents&(unix.POLLIN|unix.POLLERR) == unix.POLLIN|unix.POLLERR {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reply and ICMP error not both queued after 5s (revents %#x)", pfd[0].Revents)
		}
	}
	w := &recvChecker{t: t, rd: rd, fd: fd, queue: []string{"reply"}}
	w.want(batchSize, 0, unix.ECONNREFUSED)
	w.want(batchSize, 1, nil)
	w.want(batchSize, 0, unix.EAGAIN)
}

// recvChecker checks recvConnected's results against the datagrams queued
// on fd, in order.
type recvChecker struct {
	t     *testing.T
	rd    *reader
	fd    int
	queue []string // sent, not yet seen
	seen  int
}

func (w *recvChecker) want(k, n int, wantErr error) {
	w.t.Helper()
	got, err := w.rd.recvConnected(w.fd, 0, k)
	if got != n || err != wantErr {
		w.t.Fatalf("recvConnected(k=%d) = %d, %v; want %d, %v", k, got, err, n, wantErr)
	}
	for i := range got {
		if p := string(w.rd.payload(i)); p != w.queue[0] {
			w.t.Fatalf("payload(%d) = %q; want %q", i, p, w.queue[0])
		}
		w.queue = w.queue[1:]
		w.seen++
	}
}
