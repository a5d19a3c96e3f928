package upgrade

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// The environment of a child.
const (
	EnvFD      = "L4LB_UPGRADE_FD"
	EnvSockets = "L4LB_UPGRADE_SOCKETS"
)

// The lines of the protocol.
const (
	msgReady = "ready"
	msgGo    = "go"
	msgDone  = "done"
)

// ErrChildExited is returned when the child closed its end before the
// expected line: it exited, most likely with its reason in its log.
var ErrChildExited = errors.New("upgrade: the new process exited")

// Socket is a listening socket to hand over.
type Socket struct {
	Network string   `json:"network"`
	Address string   `json:"address"`
	File    *os.File `json:"-"`
}

// Child is a new process being started by Start.
type Child struct {
	proc *os.Process
	conn net.Conn
	rd   *bufio.Reader
}

// Start runs exe with args as the successor of this process, handing it
// socks (which the caller still owns and closes). Its stdout and stderr are
// this process's, its stdin /dev/null. It starts nothing else: the caller
// goes on with WaitReady.
//
// The sockets go to the child by their raw fds, not through os/exec:
// os.StartProcess takes each file's Fd(), and Fd() puts the socket into
// blocking mode. The mode belongs to the socket, shared by this process and
// every other that holds it, so this process's own listeners would block:
// an accept4 or recvmmsg made by a raw syscall (the engine's) would then
// hold its thread and its P until the next client came, and with one P
// stop the whole process. A child that fails before it takes the sockets
// would leave them so for good.
func Start(exe string, args []string, socks []Socket) (*Child, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("upgrade: socketpair: %w", err)
	}
	// The child has its own copy; ours would hide its exit.
	defer syscall.Close(fds[1])
	mine := os.NewFile(uintptr(fds[0]), "upgrade-parent")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	names, err := json.Marshal(socks)
	if err != nil {
		conn.Close()
		return nil, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	defer null.Close()
	// 0, 1, 2, then the line to us at 3, then the sockets from 4.
	files := []uintptr{null.Fd(), 1, 2, uintptr(fds[1])}
	for _, s := range socks {
		fd, err := rawFD(s.File)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("upgrade: %s %s: %w", s.Network, s.Address, err)
		}
		files = append(files, fd)
	}
	env := append(childEnv(os.Environ()), EnvFD+"=3", EnvSockets+"="+string(names))
	pid, err := syscall.ForkExec(exe, append([]string{exe}, args...), &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("upgrade: start %s: %w", exe, err)
	}
	proc, err := os.FindProcess(pid) // never fails on Unix
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	return &Child{proc: proc, conn: conn, rd: bufio.NewReader(conn)}, nil
}

// rawFD is f's descriptor, read without Fd() (which would make it blocking).
// It stays valid while f is open.
func rawFD(f *os.File) (uintptr, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd uintptr
	if err := sc.Control(func(n uintptr) { fd = n }); err != nil {
		return 0, err
	}
	return fd, nil
}

// childEnv is env without what names this process alone: a previous
// upgrade's variables, and systemd's watchdog and socket-activation pids.
func childEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case EnvFD, EnvSockets, "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.proc.Pid }

// WaitReady waits for the child to say it loaded its config and bound its
// listeners.
func (c *Child) WaitReady(ctx context.Context) error { return c.expect(ctx, msgReady) }

// Proceed tells the child that the control socket is free.
func (c *Child) Proceed() error {
	if _, err := c.conn.Write([]byte(msgGo + "\n")); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	return nil
}

// WaitDone waits for the child to say it serves.
func (c *Child) WaitDone(ctx context.Context) error { return c.expect(ctx, msgDone) }

func (c *Child) expect(ctx context.Context, want string) error {
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	line, err := c.rd.ReadString('\n')
	if ctx.Err() != nil {
		return fmt.Errorf("upgrade: waiting for %q: %w", want, context.Cause(ctx))
	}
	if err != nil {
		return ErrChildExited
	}
	if got := strings.TrimSuffix(line, "\n"); got != want {
		return fmt.Errorf("upgrade: the new process said %q, want %q", got, want)
	}
	return nil
}

// Abort kills the child (if it is still there), reaps it, and returns how
// it ended.
func (c *Child) Abort() error {
	c.conn.Close()
	_ = c.proc.Kill()
	st, err := c.proc.Wait()
	if err != nil {
		return err
	}
	if st.Success() {
		return errors.New("exit status 0")
	}
	return &exec.ExitError{ProcessState: st}
}

// Release lets the child go on alone: this process will exit before it.
func (c *Child) Release() {
	c.conn.Close()
	_ = c.proc.Release()
}

// Handover is the child's side: the sockets it inherited and the line to
// its parent.
type Handover struct {
	conn  net.Conn
	rd    *bufio.Reader
	files map[string][]*os.File // by "network address", in order
}

// FromEnv returns the handover this process was started with, or nil when
// it was not started by Start. It takes the variables out of the
// environment, and the inherited fds out of reach of later children.
func FromEnv() (*Handover, error) {
	fdStr, ok := os.LookupEnv(EnvFD)
	if !ok {
		return nil, nil
	}
	names := os.Getenv(EnvSockets)
	os.Unsetenv(EnvFD)
	os.Unsetenv(EnvSockets)
	fd, err := strconv.Atoi(fdStr)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("upgrade: %s=%q: not an fd", EnvFD, fdStr)
	}
	var socks []Socket
	if err := json.Unmarshal([]byte(names), &socks); err != nil {
		return nil, fmt.Errorf("upgrade: %s: %w", EnvSockets, err)
	}
	h := &Handover{files: map[string][]*os.File{}}
	for i, s := range socks {
		n := fd + 1 + i
		syscall.CloseOnExec(n)
		k := s.Network + " " + s.Address
		h.files[k] = append(h.files[k], os.NewFile(uintptr(n), k))
	}
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "upgrade-child")
	h.conn, err = net.FileConn(f)
	f.Close()
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("upgrade: fd %d: %w", fd, err)
	}
	h.rd = bufio.NewReader(h.conn)
	return h, nil
}

// Take returns the inherited socket for network and address, or nil; the
// caller owns it. It satisfies server.Inheritor.
func (h *Handover) Take(network, address string) *os.File {
	k := network + " " + address
	fs := h.files[k]
	if len(fs) == 0 {
		return nil
	}
	h.files[k] = fs[1:]
	return fs[0]
}

// Ready tells the parent that every listener is bound and waits until the
// parent has let the control socket go.
func (h *Handover) Ready(ctx context.Context) error {
	if _, err := h.conn.Write([]byte(msgReady + "\n")); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { h.conn.Close() })
	defer stop()
	line, err := h.rd.ReadString('\n')
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return errors.New("upgrade: the old process went away")
	}
	if got := strings.TrimSuffix(line, "\n"); got != msgGo {
		return fmt.Errorf("upgrade: the old process said %q, want %q", got, msgGo)
	}
	return nil
}

// Done tells the parent that this process serves: the parent stops
// accepting and drains. It closes the handover.
func (h *Handover) Done() error {
	_, err := h.conn.Write([]byte(msgDone + "\n"))
	h.Close()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	return nil
}

// Close closes the line to the parent and every socket not taken. Nil-safe.
func (h *Handover) Close() {
	if h == nil {
		return
	}
	if h.conn != nil {
		h.conn.Close()
	}
	for k, fs := range h.files {
		for _, f := range fs {
			f.Close()
		}
		delete(h.files, k)
	}
}
