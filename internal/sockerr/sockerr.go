// Package sockerr turns socket errors into the short reasons operators read
// in logs, events and status ("connection refused", "timeout after 2s"), the
// same words wherever l4lb meets them: connecting to hosts (TCP), relaying
// datagrams (UDP) and probing (health).
package sockerr

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Reason returns the short reason for err. timeout is the deadline that was
// in force, for "timeout after 2s" (0: just "timeout").
func Reason(err error, timeout time.Duration) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		if timeout > 0 {
			return "timeout after " + timeout.String()
		}
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by peer"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket file"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "out of file descriptors"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by peer"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// Local reports whether err is l4lb's own shortage (out of fds) rather than
// the peer's fault.
func Local(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
