package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	c := listen(t)
	n := FromEnv()
	if n == nil {
		t.Fatal("FromEnv: nil with NOTIFY_SOCKET set")
	}
	for _, tc := range []struct {
		name string
		send func() error
		want string
	}{
		{"ready", n.Ready, "READY=1"},
		{"stopping", n.Stopping, "STOPPING=1"},
		{"watchdog", n.Watchdog, "WATCHDOG=1"},
		{"mainpid", func() error { return n.MainPID(42) }, "MAINPID=42\nREADY=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.send(); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, c); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("reloading", func(t *testing.T) {
		before := Monotonic()
		if err := n.Reloading(); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(recv(t, c), "\n")
		if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
			t.Fatalf("got %q", lines)
		}
		usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
		if err != nil || usec < before.Microseconds() || usec > Monotonic().Microseconds() {
			t.Fatalf("MONOTONIC_USEC %d not within [%d, now]: %v", usec, before.Microseconds(), err)
		}
	})
}

func TestNilNotifier(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := FromEnv()
	if n != nil {
		t.Fatal("FromEnv: want nil without NOTIFY_SOCKET")
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
}

func TestWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		err       error
	}{
		{"", "", 0, ErrNoWatchdog},
		{"2000000", "", time.Second, nil},
		{"2000000", pid, time.Second, nil},
		{"2000000", "1", 0, ErrNoWatchdog}, // someone else's
		{"x", "", 0, nil},                  // an error, not ErrNoWatchdog
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		got, err := WatchdogInterval()
		switch {
		case tc.usec == "x":
			if err == nil || errors.Is(err, ErrNoWatchdog) {
				t.Errorf("%q: want a parse error, got %v", tc.usec, err)
			}
		case !errors.Is(err, tc.err) || got != tc.want:
			t.Errorf("%q/%q: got %v, %v; want %v, %v", tc.usec, tc.pid, got, err, tc.want, tc.err)
		}
	}
}
