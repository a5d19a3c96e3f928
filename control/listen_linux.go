package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// umaskMu serialises the umask dance in listen, so two servers never
// interleave their changes. The umask is process-wide, and no lock keeps
// other goroutines from creating files while it is changed: such a file
// gets its permission bits &^ (0777 &^ mode) instead of &^ the process's
// umask. That is never more than mode allows, but it is not "never looser":
// where mode grants bits the process umask withholds (mode 0660 under umask
// 0022) an os.Create made then gets 0660, not 0644; and it can be tighter
// (a directory made with 0750 under mode 0600 gets 0600, without x). The
// window is kept to the one bind(2) call, and l4lb binds the socket before
// it serves (again only when an upgrade fails and it takes the socket back),
// when little else creates files. (Binding under old|^mode, then widening
// to mode with a chmod by path, would close the gap at the price of that
// chmod.)
var umaskMu sync.Mutex

// listen binds a Unix socket at path whose file has the permission bits of
// mode from the moment it exists: bind(2) creates the file with 0777 &^ umask,
// so the umask is set before the bind, never fixed with chmod after (a
// connect could slip in between). A gid >= 0 is given to the file after the
// bind; that widens nothing, as the group bits were already in effect for
// the file's original group (the process's own).
func listen(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	umaskMu.Lock()
	old := unix.Umask(int(0o777 &^ mode.Perm()))
	ln, err := net.ListenUnix("unix", addr)
	unix.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control: socket group: %w", err)
		}
	}
	return ln, nil
}

// removeStale removes a socket file left by a crashed run, and refuses to
// touch anything else: a socket someone still accepts on, or a file that is
// not a socket. A connect refused (ECONNREFUSED) is the kernel's word that
// no one is bound to it any more.
//
// Two instances starting at the same instant on a stale file can still race
// between the check and the bind; the second bind then fails with EADDRINUSE,
// unless the first instance's fresh socket was removed in between. Service
// managers start one instance at a time; we accept that window.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control: %s: another process is serving on this socket", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: %s: cannot tell whether the socket is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control: remove stale socket: %w", err)
	}
	return nil
}

// peerOf returns the credentials of the process at the other end of c, as
// the kernel recorded them at connect(2) (SO_PEERCRED), and its supplementary
// groups (SO_PEERGROUPS, Linux 4.13+; left empty where unsupported).
func peerOf(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var p Peer
	var cerr error
	err = raw.Control(func(fd uintptr) {
		var uc *unix.Ucred
		uc, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if cerr != nil {
			return
		}
		p = Peer{PID: int(uc.Pid), UID: int(uc.Uid), GID: int(uc.Gid)}
		p.Groups = peerGroups(fd)
	})
	if err == nil {
		err = cerr
	}
	return p, err
}

// peerGroups reads SO_PEERGROUPS. unix.GetsockoptString cannot be used: it
// cuts the buffer at the first NUL byte, and group ids are full of them.
func peerGroups(fd uintptr) []int {
	buf := make([]uint32, 256)
	n := uint32(len(buf) * 4)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return nil // ERANGE (more than 256 groups) or an old kernel: primary gid only
	}
	gs := make([]int, 0, n/4)
	for _, g := range buf[:n/4] {
		gs = append(gs, int(g))
	}
	slices.Sort(gs)
	return gs
}
