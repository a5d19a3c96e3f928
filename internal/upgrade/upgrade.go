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
	cmd  *exec.Cmd
	conn net.Conn
	rd   *bufio.Reader
}

// Start runs exe with args as the successor of this process, handing it
// socks (which the caller still owns and closes). Its stdout and stderr are
// this process's. It starts nothing else: the caller goes on with
// WaitReady.
func Start(exe string, args []string, socks []Socket) (*Child, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("upgrade: socketpair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "upgrade-parent")
	theirs := os.NewFile(uintptr(fds[1]), "upgrade-child")
	defer theirs.Close() // the child has its own copy; ours would hide its exit
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
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	for _, s := range socks {
		cmd.ExtraFiles = append(cmd.ExtraFiles, s.File)
	}
	cmd.Env = append(childEnv(os.Environ()), EnvFD+"=3", EnvSockets+"="+string(names))
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("upgrade: start %s: %w", exe, err)
	}
	return &Child{cmd: cmd, conn: conn, rd: bufio.NewReader(conn)}, nil
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
func (c *Child) Pid() int { return c.cmd.Process.Pid }

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
	_ = c.cmd.Process.Kill()
	err := c.cmd.Wait()
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

// Release lets the child go on alone: this process will exit before it.
func (c *Child) Release() {
	c.conn.Close()
	_ = c.cmd.Process.Release()
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
