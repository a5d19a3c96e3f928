package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
)

// TestKeepalive: TCP keepalive is off on both of the proxy's sockets unless
// Settings.Keepalive asks for it, including on a listener made from a file
// (an upgrade's inherited socket, where Go's accept turns it on), and set
// to the asked idle time when it does. The kernel shows an idle established
// socket's keepalive timer in /proc/net/tcp (timer 2), and no timer at all
// when keepalive is off.
func TestKeepalive(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepalive time.Duration
		inherited bool
	}{
		{"off", 0, false},
		{"off, inherited listener", 0, true},
		{"on", 20 * time.Second, false},
		{"on, inherited listener", 20 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testbackend.New(t, testbackend.Echo)
			s := defaults(upstream(t, []string{b.Addr()}))
			s.Keepalive = tc.keepalive
			r := startKA(t, s, tc.inherited)
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			// The proxy's side of the client connection: local = the
			// listener, remote = our client. Its backend connection:
			// remote = the backend, local = not the test's client.
			front := findTCP(t, r.addr, c.LocalAddr().String())
			back := findTCPRemote(t, b.Addr(), c.LocalAddr().String())
			for _, sk := range []struct {
				what string
				e    tcpEntry
			}{{"client side", front}, {"backend side", back}} {
				switch {
				case tc.keepalive == 0 && sk.e.timer != 0:
					t.Errorf("%s: timer %d (%s left), want none: keepalive is off", sk.what, sk.e.timer, sk.e.when)
				case tc.keepalive > 0 && (sk.e.timer != 2 || sk.e.when > tc.keepalive || sk.e.when < tc.keepalive-5*time.Second):
					t.Errorf("%s: timer %d with %s left, want keepalive (2) within %s", sk.what, sk.e.timer, sk.e.when, tc.keepalive)
				}
			}
		})
	}
}

// startKA is start, on a listener made from a file when inherited.
func startKA(t *testing.T, s *Settings, inherited bool) *running {
	t.Helper()
	if !inherited {
		return start(t, s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	fl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	l := ListenFrom("test", fl, s, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{l: l, addr: l.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- l.Run(ctx) }()
	t.Cleanup(func() { r.shutdown(t) })
	return r
}

type tcpEntry struct {
	local, remote string
	timer         int
	when          time.Duration
}

// tcpEntries reads /proc/net/tcp: established IPv4 sockets.
func tcpEntries(t *testing.T) []tcpEntry {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp:", err)
	}
	defer f.Close()
	var out []tcpEntry
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[3] != "01" { // ESTABLISHED
			continue
		}
		tw := strings.SplitN(fs[5], ":", 2) // timer:ticks left (USER_HZ)
		timer, _ := strconv.ParseInt(tw[0], 16, 32)
		ticks, _ := strconv.ParseInt(tw[1], 16, 64)
		out = append(out, tcpEntry{local: hexAddr(fs[1]), remote: hexAddr(fs[2]), timer: int(timer), when: time.Duration(ticks) * time.Second / 100})
	}
	return out
}

// hexAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080".
func hexAddr(s string) string {
	ip, port, _ := strings.Cut(s, ":")
	v, _ := strconv.ParseUint(ip, 16, 32)
	p, _ := strconv.ParseUint(port, 16, 16)
	return fmt.Sprintf("%d.%d.%d.%d:%d", byte(v), byte(v>>8), byte(v>>16), byte(v>>24), p)
}

func findTCP(t *testing.T, local, remote string) tcpEntry {
	t.Helper()
	for _, e := range tcpEntries(t) {
		if e.local == local && e.remote == remote {
			return e
		}
	}
	t.Fatalf("no socket %s -> %s in /proc/net/tcp", local, remote)
	return tcpEntry{}
}

func findTCPRemote(t *testing.T, remote, notLocal string) tcpEntry {
	t.Helper()
	for _, e := range tcpEntries(t) {
		if e.remote == remote && e.local != notLocal {
			return e
		}
	}
	t.Fatalf("no socket to %s in /proc/net/tcp", remote)
	return tcpEntry{}
}
