package udp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Probe failures; match them with errors.Is. The error ProbeUDP returns
// reads as the reason a health checker records: "connection refused (ICMP
// port unreachable)", "timeout after 1s: no reply", "expected "+PONG", got
// "-ERR"".
var (
	ErrRefused         = errors.New(reasonRefused)
	ErrNoReply         = errors.New("no reply")
	ErrUnexpectedReply = errors.New("unexpected reply")
)

// ProbeUDP sends one datagram, send, to addr ("ip:port") from a connected
// socket and waits up to timeout (or until ctx is done) for a reply that
// starts with expect. An empty expect accepts any reply, but a reply there
// must be: over UDP silence proves nothing, so no reply is a failure.
//
// An ICMP port unreachable, which the kernel reports on the connected socket
// as ECONNREFUSED, fails the probe at once.
func ProbeUDP(ctx context.Context, addr string, send, expect []byte, timeout time.Duration) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("dial udp %s: %w", addr, err)
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := c.Write(send); err != nil {
		return probeErr(ctx, err, timeout)
	}
	// Enough for the prefix and for a readable "got": the rest of a
	// reply does not matter.
	buf := make([]byte, max(len(expect), 64))
	n, err := c.Read(buf)
	if err != nil && !isTruncation(err) {
		return probeErr(ctx, err, timeout)
	}
	if got := buf[:n]; !bytes.HasPrefix(got, expect) {
		return &replyError{want: expect, got: got[:min(len(got), max(len(expect), 32))]}
	}
	return nil
}

// isTruncation reports the error some platforms return for a datagram
// larger than the buffer; Linux truncates silently.
func isTruncation(err error) bool { return errors.Is(err, syscall.EMSGSIZE) }

func probeErr(ctx context.Context, err error, timeout time.Duration) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("probe canceled: %w", context.Cause(ctx))
	case isHostError(err) && errReason(err) == reasonRefused:
		return ErrRefused
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("timeout after %s: %w", timeout, ErrNoReply)
	}
	return errors.New(errReason(err))
}

type replyError struct{ want, got []byte }

func (e *replyError) Error() string { return fmt.Sprintf("expected %q, got %q", e.want, e.got) }

func (e *replyError) Is(target error) bool { return target == ErrUnexpectedReply }
