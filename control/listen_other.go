//go:build !linux

package control

import (
	"errors"
	"io/fs"
	"net"
)

var errNotLinux = errors.New("control: the control socket needs Linux (SO_PEERCRED)")

func listen(path string, mode fs.FileMode, gid int) (*net.UnixListener, error) {
	return nil, errNotLinux
}

func peerOf(c *net.UnixConn) (Peer, error) { return Peer{}, errNotLinux }
