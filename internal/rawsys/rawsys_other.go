//go:build unix && !linux

package rawsys

import "golang.org/x/sys/unix"

// Elsewhere the event loops do not run (l4lb needs Linux); these let the
// packages that call rawsys build.

func Errno(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func Read(fd int, p []byte) (int, error)  { return unix.Read(fd, p) }
func Write(fd int, p []byte) (int, error) { return unix.Write(fd, p) }
func Close(fd int) error                  { return unix.Close(fd) }
func Shutdown(fd, how int) error          { return unix.Shutdown(fd, how) }
