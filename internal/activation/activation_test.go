package activation

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fdOf returns a duplicate of c's socket as a bare fd, as systemd would
// pass it, and closes c.
func fdOf(t *testing.T, c interface{ File() (*os.File, error) }) int {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cl, ok := c.(interface{ Close() error }); ok {
		cl.Close()
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func tcpFD(t *testing.T, addr string) (int, string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	return fdOf(t, ln.(*net.TCPListener)), a
}

// serves checks that f is a listening TCP socket at addr that accepts.
func serves(t *testing.T, f *os.File, addr string) {
	t.Helper()
	if f == nil {
		t.Fatalf("no socket for %s", addr)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != addr {
		t.Fatalf("socket at %s, want %s", ln.Addr(), addr)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}

func TestMatch(t *testing.T) {
	byName, byNameAddr := tcpFD(t, "127.0.0.1:0")
	byAddr, byAddrAddr := tcpFD(t, "127.0.0.1:0")
	anyAddr, anyAddrAddr := tcpFD(t, "0.0.0.0:0")
	_, anyPort, _ := net.SplitHostPort(anyAddrAddr)
	spare, spareAddr := tcpFD(t, "127.0.0.1:0")
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpAddr := uc.LocalAddr().String()
	udpFD := fdOf(t, uc.(*net.UDPConn))
	path := filepath.Join(t.TempDir(), "l.sock")
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ul.(*net.UnixListener).SetUnlinkOnClose(false)
	unixFD := fdOf(t, ul.(*net.UnixListener))

	ls := []Listener{
		{"front", "tcp", "127.0.0.1:0"}, // by name, whatever its listen says
		{"plain", "tcp", "127.0.0.1:0"}, // same key, no socket: binds afresh
		{"b", "tcp", byAddrAddr},        // by address
		{"all", "tcp", ":" + anyPort},   // ":port" is the unspecified address
		{"dns", "udp", udpAddr},         // udp by address
		{"sock", "unix", path},          // unix by path
		{"fresh", "tcp", "127.0.0.1:1"}, // nothing from systemd
	}
	s, err := fromFDs([]int{byName, byAddr, anyAddr, spare, udpFD, unixFD},
		[]string{"front", "l4lb.socket", "l4lb.socket", "spare", "l4lb.socket", "l4lb.socket"}, ls)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	serves(t, s.Take("tcp", "127.0.0.1:0"), byNameAddr)
	if f := s.Take("tcp", "127.0.0.1:0"); f != nil {
		f.Close()
		t.Fatal("the second listener on 127.0.0.1:0 got a socket")
	}
	serves(t, s.Take("tcp", byAddrAddr), byAddrAddr)
	serves(t, s.Take("tcp", ":"+anyPort), anyAddrAddr)
	if f := s.Take("udp", udpAddr); f == nil {
		t.Error("no udp socket")
	} else {
		pc, err := net.FilePacketConn(f)
		f.Close()
		if err != nil || pc.LocalAddr().String() != udpAddr {
			t.Errorf("udp socket: %v, %v", pc, err)
		}
		if pc != nil {
			pc.Close()
		}
	}
	if f := s.Take("unix", path); f == nil {
		t.Error("no unix socket")
	} else {
		f.Close()
	}
	if f := s.Take("tcp", "127.0.0.1:1"); f != nil {
		f.Close()
		t.Error("a socket for a listener systemd passed none for")
	}
	if u := s.Unused(); len(u) != 1 || u[0].Name != "spare" || u[0].Address != spareAddr || u[0].Network != "tcp" {
		t.Errorf("unused: %+v", u)
	}
	// A reload adds a listener at the spare's address, removes it, adds
	// it back: each time it gets the socket systemd keeps bound.
	for i := 0; i < 2; i++ {
		serves(t, s.Take("tcp", spareAddr), spareAddr)
	}
	if u := s.Unused(); len(u) != 0 {
		t.Errorf("unused after the reload took it: %+v", u)
	}
	s.Close()
	if f := s.Take("tcp", spareAddr); f != nil {
		f.Close()
		t.Error("Take after Close")
	}
}

func TestNamedWrongKind(t *testing.T) {
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fd := fdOf(t, uc.(*net.UDPConn))
	_, err = fromFDs([]int{fd}, []string{"front"}, []Listener{{"front", "tcp", "127.0.0.1:6380"}})
	if err == nil || !strings.Contains(err.Error(), `systemd socket "front"`) || !strings.Contains(err.Error(), "listener front is tcp") {
		t.Fatalf("a udp socket named as a tcp listener: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		t.Error("the socket was left open after the error")
	}
}

// Without LISTEN_FDNAMES every socket is "unknown" and only addresses match.
func TestUnnamed(t *testing.T) {
	fd, addr := tcpFD(t, "127.0.0.1:0")
	s, err := fromFDs([]int{fd}, nil, []Listener{{"unknown", "tcp", "127.0.0.1:0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if f := s.Take("tcp", "127.0.0.1:0"); f != nil {
		f.Close()
		t.Error("matched by systemd's default name")
	}
	if u := s.Unused(); len(u) != 1 || u[0].Name != "unknown" || u[0].Address != addr {
		t.Errorf("unused: %+v", u)
	}
}

func TestUnusable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	connected := fdOf(t, c.(*net.TCPConn))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	pipe, _ := unix.Dup(int(r.Fd()))
	r.Close()
	s, err := fromFDs([]int{connected, pipe}, []string{"a", "b"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u := s.Unused()
	if len(u) != 2 || u[0].Network != "" || !strings.Contains(u[0].Why, "not listening") ||
		u[1].Network != "" || u[1].Why != "not a socket" {
		t.Fatalf("unused: %+v", u)
	}
}

func TestFromEnv(t *testing.T) {
	for _, c := range []struct {
		name          string
		pid, fds, fdn string
		wantErr       error
	}{
		{"none", "", "", "", nil},
		{"another process's", "1", "2", "a:b", nil},
		{"zero", "self", "0", "", nil},
		{"bad count", "self", "x", "", ErrEnv},
		{"names do not match", "self", "2", "a", ErrEnv},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.pid == "self" {
				c.pid = strconv.Itoa(os.Getpid())
			}
			t.Setenv(EnvPID, c.pid)
			t.Setenv(EnvFDs, c.fds)
			t.Setenv(EnvNames, c.fdn)
			s, err := FromEnv(nil)
			if s != nil || !errors.Is(err, c.wantErr) {
				t.Fatalf("FromEnv: %v, %v; want nil, %v", s, err, c.wantErr)
			}
			for _, k := range []string{EnvPID, EnvFDs, EnvNames} {
				if _, ok := os.LookupEnv(k); ok {
					t.Errorf("%s still set", k)
				}
			}
		})
	}
}
