package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a child (TestMain).
const helperEnv = "UPGRADE_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "exit":
		os.Exit(3) // a binary that fails before it is ready
	case "serve":
		os.Exit(child())
	}
}

// child takes its socket, says ready, waits for go, says done, and answers
// one connection with its pid.
func child() int {
	h, err := FromEnv()
	if err != nil || h == nil {
		fmt.Fprintln(os.Stderr, "FromEnv:", h, err)
		return 1
	}
	if os.Getenv(EnvFD) != "" {
		fmt.Fprintln(os.Stderr, "FromEnv left the environment")
		return 1
	}
	f := h.Take("tcp", "front")
	if f == nil || h.Take("tcp", "front") != nil {
		fmt.Fprintln(os.Stderr, "Take: want exactly one socket")
		return 1
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return 1
	}
	if err := h.Ready(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := h.Done(); err != nil {
		return 1
	}
	c, err := ln.Accept()
	if err != nil {
		return 1
	}
	fmt.Fprintln(c, os.Getpid())
	c.Close()
	return 0
}

func TestHandover(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(helperEnv, "serve")
	c, err := Start(os.Args[0], []string{"-test.run=^$"}, []Socket{{Network: "tcp", Address: "front", File: f}})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Proceed(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDone(ctx); err != nil {
		t.Fatal(err)
	}
	pid := c.Pid()
	ln.Close() // the parent stops accepting; the socket lives on in the child

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial after the parent closed its copy: %v", err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || line != strconv.Itoa(pid)+"\n" {
		t.Fatalf("answered %q (%v), want the child's pid %d", line, err, pid)
	}
	if st, err := c.proc.Wait(); err != nil || !st.Success() {
		t.Fatalf("child: %v %v", st, err)
	}
}

// expectFailed waits for c, a child in the "exit" helper mode, to fail
// before it is ready, and checks Abort reports its exit status.
func expectFailed(t *testing.T, c *Child) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); !errors.Is(err, ErrChildExited) {
		t.Fatalf("WaitReady: %v, want ErrChildExited", err)
	}
	if err := c.Abort(); err == nil || err.Error() != "exit status 3" {
		t.Fatalf("Abort: %v, want exit status 3", err)
	}
}

func TestChildFailsBeforeReady(t *testing.T) {
	t.Setenv(helperEnv, "exit")
	c, err := Start(os.Args[0], []string{"-test.run=^$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	expectFailed(t, c)
}

func TestChildSilent(t *testing.T) {
	t.Setenv(helperEnv, "")
	// The test binary run with -test.run=^$ and no helper mode would exit
	// at once; sleep(1) never speaks the protocol at all.
	c, err := Start("/bin/sleep", []string{"30"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReady: %v, want the deadline", err)
	}
	if err := c.Abort(); err == nil {
		t.Fatal("Abort: sleep was not killed")
	}
}

func TestChildEnv(t *testing.T) {
	got := childEnv([]string{"A=1", "WATCHDOG_PID=7", "WATCHDOG_USEC=100", "NOTIFY_SOCKET=/x", EnvFD + "=3", "LISTEN_FDS=2"})
	want := []string{"A=1", "WATCHDOG_USEC=100", "NOTIFY_SOCKET=/x"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("childEnv: %v, want %v", got, want)
	}
}

func TestNotAChild(t *testing.T) {
	t.Setenv(EnvFD, "")
	os.Unsetenv(EnvFD)
	h, err := FromEnv()
	if h != nil || err != nil {
		t.Fatalf("FromEnv: %v, %v; want nil, nil", h, err)
	}
	h.Close() // nil-safe
}

// TestSocketsStayNonBlocking: handing sockets to a child leaves them
// non-blocking in this process, even when the child fails before it takes
// them. The mode is the socket's, shared with the child: os/exec would
// make it blocking (Fd), and the old process, serving on after a failed
// upgrade, would then block a thread in every accept4 or recvmmsg that
// finds nothing.
func TestSocketsStayNonBlocking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	pf, err := pc.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	t.Setenv(helperEnv, "exit")
	c, err := Start(os.Args[0], []string{"-test.run=^$"}, []Socket{
		{Network: "tcp", Address: "front", File: lf},
		{Network: "udp", Address: "dns", File: pf},
	})
	if err != nil {
		t.Fatal(err)
	}
	expectFailed(t, c)
	for name, sc := range map[string]syscall.Conn{"tcp listener": ln.(*net.TCPListener), "udp socket": pc.(*net.UDPConn)} {
		rc, err := sc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var flags int
		var ferr error
		rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		if ferr != nil || flags&unix.O_NONBLOCK == 0 {
			t.Errorf("%s after the handover: flags %#x (%v), want O_NONBLOCK", name, flags, ferr)
		}
	}
}
