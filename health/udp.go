package health

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

// udpProber sends one datagram and wants a reply that starts with expect
// (any reply when expect is empty). Over UDP silence proves nothing, so no
// reply within the timeout is a failure, never a pass. An ICMP port
// unreachable, which the kernel reports on the connected socket as
// ECONNREFUSED, fails the probe at once.
type udpProber struct {
	timeout      time.Duration
	send, expect []byte
}

var _ Prober = udpProber{}

func (p udpProber) Probe(ctx context.Context, a Addr) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", a.Address)
	if err != nil {
		return p.reason(ctx, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(p.send); err != nil {
		return p.reason(ctx, err)
	}
	// Enough for the prefix and a readable "got"; the rest does not matter
	// (Linux truncates a longer datagram silently).
	buf := make([]byte, max(len(p.expect), 64))
	n, err := c.Read(buf)
	if err != nil && !errors.Is(err, syscall.EMSGSIZE) {
		return p.reason(ctx, err)
	}
	if got := buf[:n]; !bytes.HasPrefix(got, p.expect) {
		return fmt.Errorf("expected %q, got %q", p.expect, got[:min(len(got), max(len(p.expect), 32))])
	}
	return nil
}

func (p udpProber) reason(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused (ICMP port unreachable)")
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("timeout after %v: no reply", p.timeout)
	case ctx.Err() != nil:
		return ctx.Err()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}
