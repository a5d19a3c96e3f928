package activation

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The environment of sd_listen_fds(3).
const (
	EnvPID   = "LISTEN_PID"
	EnvFDs   = "LISTEN_FDS"
	EnvNames = "LISTEN_FDNAMES"
)

// firstFD is SD_LISTEN_FDS_START.
const firstFD = 3

// ErrEnv means the environment does not say what sd_listen_fds(3) says.
var ErrEnv = errors.New("activation: bad socket activation environment")

// Listener is a configured listener, as the config names it.
type Listener struct {
	Name    string
	Network string // "tcp", "udp" or "unix"
	Address string // ip:port, ":port", or the socket path
}

// Socket is one socket systemd passed.
type Socket struct {
	FD      int
	Name    string // its LISTEN_FDNAMES entry
	Network string // "tcp", "udp", "unix"; "" when l4lb cannot serve on it
	Address string // where it is bound: ip:port, or the path
	Why     string // when Network is "": what it is instead

	file  *os.File
	named bool // LISTEN_FDNAMES named it: matched to listeners by name
	used  bool
}

// Sockets are the sockets systemd passed, and which listener takes which.
type Sockets struct {
	mu    sync.Mutex
	socks []*Socket
	// plan holds, per "network address" of a listener at start, one entry
	// per listener with that key in config order: its socket, or nil.
	plan map[string][]*Socket
}

// FromEnv returns the sockets systemd passed to this process, matched to
// ls, or nil when there are none for it (no LISTEN_FDS, or a LISTEN_PID
// that is another process's). It unsets the variables in any case.
func FromEnv(ls []Listener) (*Sockets, error) {
	pid, fds, names := os.Getenv(EnvPID), os.Getenv(EnvFDs), os.Getenv(EnvNames)
	os.Unsetenv(EnvPID)
	os.Unsetenv(EnvFDs)
	os.Unsetenv(EnvNames)
	if fds == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil // for another process (sd_listen_fds ignores them too)
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 1<<16 {
		return nil, fmt.Errorf("%w: %s=%q", ErrEnv, EnvFDs, fds)
	}
	if n == 0 {
		return nil, nil
	}
	var nameList []string
	if names != "" {
		nameList = strings.Split(names, ":")
		if len(nameList) != n {
			return nil, fmt.Errorf("%w: %s has %d names for %d fds", ErrEnv, EnvNames, len(nameList), n)
		}
	}
	fdList := make([]int, n)
	for i := range fdList {
		fdList[i] = firstFD + i
		syscall.CloseOnExec(fdList[i]) // a process we start gets them by handover only
	}
	return fromFDs(fdList, nameList, ls)
}

// fromFDs takes ownership of fds (named by names, which may be nil) and
// matches them to ls.
func fromFDs(fds []int, names []string, ls []Listener) (*Sockets, error) {
	s := &Sockets{plan: map[string][]*Socket{}}
	for i, fd := range fds {
		so := &Socket{FD: fd, Name: "unknown"} // systemd's name when it has none
		if names != nil {
			so.Name, so.named = names[i], true
		}
		so.file = os.NewFile(uintptr(fd), "systemd socket "+so.Name)
		so.Network, so.Address, so.Why = inspect(fd)
		s.socks = append(s.socks, so)
	}
	// By name first: a socket named as a listener is that listener's.
	mine := make([]*Socket, len(ls))
	for i, l := range ls {
		for _, so := range s.socks {
			if !so.named || so.Name != l.Name || so.used {
				continue
			}
			if so.Network != l.Network {
				s.Close()
				kind := so.Network + " " + so.Address
				if so.Network == "" {
					kind = so.Why
				}
				return nil, fmt.Errorf("activation: systemd socket %q (fd %d) is %s, but listener %s is %s %s",
					so.Name, so.FD, kind, l.Name, l.Network, l.Address)
			}
			mine[i], so.used = so, true
			break
		}
	}
	// Then by address, among the sockets no name claimed.
	for i, l := range ls {
		if mine[i] == nil {
			if so := s.byAddress(l.Network, l.Address, true); so != nil {
				mine[i], so.used = so, true
			}
		}
	}
	for i, l := range ls {
		k := l.Network + " " + l.Address
		s.plan[k] = append(s.plan[k], mine[i])
	}
	for _, so := range s.socks {
		so.used = false // Take marks what it hands out
	}
	return s, nil
}

// byAddress returns the socket of this kind bound at address, or nil;
// with free, only one not used yet.
func (s *Sockets) byAddress(network, address string, free bool) *Socket {
	for _, so := range s.socks {
		if !(free && so.used) && so.Network == network && sameAddress(network, address, so.Address) {
			return so
		}
	}
	return nil
}

// sameAddress reports whether a listener's address (as the config spells
// it) names the bound address.
func sameAddress(network, want, bound string) bool {
	if network == "unix" {
		return want == bound
	}
	b, err := netip.ParseAddrPort(bound)
	if err != nil {
		return false
	}
	if port, ok := strings.CutPrefix(want, ":"); ok {
		return b.Addr().IsUnspecified() && port == strconv.Itoa(int(b.Port()))
	}
	w, err := netip.ParseAddrPort(want)
	return err == nil && w.Port() != 0 && w == b
}

// Take returns a duplicate of the socket for the listener at network and
// address, or nil when systemd passed none for it. At start (Bind) it is
// called once per listener in config order and follows the match made by
// FromEnv; later (a reload adding a listener) it matches by address. The
// caller owns the file; the original stays here.
func (s *Sockets) Take(network, address string) *os.File {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := network + " " + address
	var so *Socket
	if q, ok := s.plan[k]; ok && len(q) > 0 {
		so, s.plan[k] = q[0], q[1:]
	} else {
		// A reload: a listener added, or removed and added back. Two
		// live listeners cannot share an address, so a used socket is
		// one whose listener is gone.
		so = s.byAddress(network, address, false)
	}
	if so == nil {
		return nil
	}
	raw, err := so.file.SyscallConn()
	if err != nil {
		return nil
	}
	dup := -1
	raw.Control(func(fd uintptr) { dup, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil {
		return nil // the listener binds afresh, and that error explains
	}
	so.used = true
	return os.NewFile(uintptr(dup), so.file.Name())
}

// Unused returns the sockets no listener has taken.
func (s *Sockets) Unused() []Socket {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Socket
	for _, so := range s.socks {
		if !so.used {
			out = append(out, Socket{FD: so.FD, Name: so.Name, Network: so.Network, Address: so.Address, Why: so.Why})
		}
	}
	return out
}

// Close closes every socket systemd passed (the listeners' duplicates stay
// open). Take returns nil afterwards.
func (s *Sockets) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, so := range s.socks {
		so.file.Close()
	}
	s.socks, s.plan = nil, map[string][]*Socket{}
}

// inspect says what kind of socket fd is and where it is bound: network
// "tcp", "udp" or "unix" and the address, or "" and why l4lb cannot serve
// on it.
func inspect(fd int) (network, address, why string) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return "", "", "not a socket"
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", "", fmt.Sprintf("a socket without an address (%v)", err)
	}
	listening := true
	if typ == unix.SOCK_STREAM {
		acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		listening = err == nil && acc == 1
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		address = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		address = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrUnix:
		address = a.Name
	default:
		return "", "", fmt.Sprintf("a socket of family %T", sa)
	}
	_, isUnix := sa.(*unix.SockaddrUnix)
	switch {
	case typ == unix.SOCK_STREAM && !listening:
		return "", "", "a stream socket at " + address + " that is not listening (Accept=yes is not supported)"
	case typ == unix.SOCK_STREAM && isUnix:
		return "unix", address, ""
	case typ == unix.SOCK_STREAM:
		return "tcp", address, ""
	case typ == unix.SOCK_DGRAM && !isUnix:
		return "udp", address, ""
	}
	return "", "", fmt.Sprintf("a socket of type %d at %s", typ, address)
}
