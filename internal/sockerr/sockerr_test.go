package sockerr

import (
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestReason(t *testing.T) {
	op := func(e error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", e)}
	}
	for _, c := range []struct {
		err     error
		timeout time.Duration
		want    string
	}{
		{op(syscall.ECONNREFUSED), 0, "connection refused"},
		{op(os.ErrDeadlineExceeded), 2 * time.Second, "timeout after 2s"},
		{os.ErrDeadlineExceeded, 0, "timeout"},
		{op(syscall.ECONNRESET), 0, "connection reset by peer"},
		{op(syscall.EHOSTUNREACH), 0, "host unreachable"},
		{op(syscall.ENOENT), 0, "no such socket file"},
		{op(syscall.EMFILE), 0, "out of file descriptors"},
		{fmt.Errorf("read: %w", io.EOF), 0, "connection closed by peer"},
		{op(syscall.EACCES), 0, "connect: permission denied"},
	} {
		if got := Reason(c.err, c.timeout); got != c.want {
			t.Errorf("Reason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if !Local(op(syscall.EMFILE)) || Local(op(syscall.ECONNREFUSED)) {
		t.Error("Local")
	}
}
