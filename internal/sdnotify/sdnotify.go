package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends state to the service manager. The nil Notifier sends
// nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when it is unset.
// An abstract socket is spelt with a leading '@', which package net
// understands as such.
func FromEnv() *Notifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	return &Notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
}

// Send sends the assignments ("READY=1", "STATUS=...") in one datagram.
func (n *Notifier) Send(state ...string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Ready tells the manager that start-up or a reload is complete.
func (n *Notifier) Ready() error { return n.Send("READY=1") }

// Reloading tells the manager that a reload starts. MONOTONIC_USEC is
// required by Type=notify-reload (systemd 253) and harmless before it.
func (n *Notifier) Reloading() error {
	return n.Send("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(Monotonic().Microseconds(), 10))
}

// Stopping tells the manager that shutdown has begun.
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Watchdog is the keep-alive ping for WatchdogSec=.
func (n *Notifier) Watchdog() error { return n.Send("WATCHDOG=1") }

// MainPID makes pid the service's main process and says it is ready: what
// a new binary sends after an upgrade (the unit needs NotifyAccess=all, as
// the message does not come from the main process).
func (n *Notifier) MainPID(pid int) error {
	return n.Send("MAINPID="+strconv.Itoa(pid), "READY=1")
}

// Monotonic is CLOCK_MONOTONIC, the clock systemd stamps reloads with.
func Monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// ErrNoWatchdog is returned by WatchdogInterval when no watchdog is asked for.
var ErrNoWatchdog = errors.New("sdnotify: no watchdog")

// WatchdogInterval is how often to send WATCHDOG=1: half of $WATCHDOG_USEC,
// as sd_watchdog_enabled(3) advises. $WATCHDOG_PID, when set, must be this
// process: a child that inherited the variable is not the one watched.
func WatchdogInterval() (time.Duration, error) {
	s := os.Getenv("WATCHDOG_USEC")
	if s == "" {
		return 0, ErrNoWatchdog
	}
	usec, err := strconv.ParseUint(s, 10, 63)
	if err != nil || usec == 0 {
		return 0, fmt.Errorf("sdnotify: WATCHDOG_USEC=%q: not a positive number", s)
	}
	if p := os.Getenv("WATCHDOG_PID"); p != "" {
		if pid, err := strconv.Atoi(p); err != nil || pid != os.Getpid() {
			return 0, ErrNoWatchdog
		}
	}
	return time.Duration(usec) * time.Microsecond / 2, nil
}
