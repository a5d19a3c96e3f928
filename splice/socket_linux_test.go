package splice

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns a Socket (on a raw fd connected to a listener) and the
// listener's side as a *net.TCPConn.
func socketPair(t *testing.T) (*Socket, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil && err != unix.EINPROGRESS {
		t.Fatal(err)
	}
	s := NewSocket(fd, netip.AddrPort{}, ap)
	if err := s.WaitConnect(); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); c.Close() })
	return s, c.(*net.TCPConn)
}

// TestSocketConn: a Socket is a working net.Conn: blocking reads and writes
// with deadlines, half-close, addresses, and a Close that refuses later use.
func TestSocketConn(t *testing.T) {
	s, peer := socketPair(t)
	if s.Peer() != peer.LocalAddr().(*net.TCPAddr).AddrPort() {
		t.Fatalf("peer %v, want %v", s.Peer(), peer.LocalAddr())
	}
	if got, want := s.LocalAddr().String(), peer.RemoteAddr().String(); got != want {
		t.Fatalf("local %s, want %s", got, want)
	}
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := s.Read(buf); !isTimeout(err) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	s.SetReadDeadline(time.Time{})
	peer.Write([]byte("pong"))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := peer.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("peer after CloseWrite: %d, %v; want EOF", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSocketClosedCalls: CloseWrite, SetLinger and Read on a closed Socket
// return errors at once. (CloseWrite once built its error under the lock
// LocalAddr takes, and hung the engine loop that called it.)
func TestSocketClosedCalls(t *testing.T) {
	s, _ := socketPair(t)
	s.Close()
	done := make(chan error, 3)
	go func() {
		done <- s.CloseWrite()
		done <- s.SetLinger(0)
		_, err := s.Read(make([]byte, 1))
		done <- err
	}()
	for i := 0; i < 3; i++ {
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("call %d on a closed Socket: %v, want net.ErrClosed", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("call %d on a closed Socket hung", i)
		}
	}
}

// TestSocketSession: a session between two Sockets runs on the engine and
// passes bytes and EOF both ways.
func TestSocketSession(t *testing.T) {
	a, client := socketPair(t)
	b, server := socketPair(t)
	sess := New(a, b, Options{IdleTimeout: 10 * time.Second})
	res := make(chan Result, 1)
	sess.Start(func(r Result) { res <- r })
	msg := make([]byte, 100<<10)
	go func() { client.Write(msg); client.CloseWrite() }()
	got, err := io.ReadAll(server)
	if err != nil || len(got) != len(msg) {
		t.Fatalf("server read %d bytes, %v", len(got), err)
	}
	server.Write([]byte("bye"))
	server.CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "bye" {
		t.Fatalf("client read %q, %v", back, err)
	}
	select {
	case r := <-res:
		if r.End != EndClosed || r.AToB != uint64(len(msg)) || r.BToA != 3 || !r.Spliced {
			t.Fatalf("result %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
}

// TestRawSockaddr: addresses survive encoding and decoding, IPv4-mapped
// ones come back as IPv4, and connect(2) reaches a listener at each.
func TestRawSockaddr(t *testing.T) {
	for _, s := range []string{"127.0.0.1:6379", "[::1]:53", "[::ffff:10.1.2.3]:80", "[2001:db8::7]:65535"} {
		ap := netip.MustParseAddrPort(s)
		r := MakeRawSockaddr(ap)
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if got := r.AddrPort(); got != want {
			t.Errorf("%s: decoded %s, want %s", s, got, want)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("%s: %v", addr, err)
		}
		r := MakeRawSockaddr(ln.Addr().(*net.TCPAddr).AddrPort())
		fd, err := unix.Socket(r.Family(), unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(r.Ptr()), uintptr(r.Len))
		if e != 0 {
			t.Errorf("connect to %s: %v", ln.Addr(), e)
		} else if !connected(fd) {
			t.Errorf("connect to %s: not connected", ln.Addr())
		}
		unix.Close(fd)
		ln.Close()
	}
}
