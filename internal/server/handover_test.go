package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/testbackend"
)

// files is an Inheritor over a map, as package upgrade builds one.
type files map[string]*os.File

func (f files) Take(network, address string) *os.File {
	k := network + " " + address
	fl := f[k]
	delete(f, k)
	return fl
}

// TestSocketsInherit hands A's sockets to B the way an upgrade does: B
// serves on the very same addresses, and A stopping leaves B serving (and
// a unix socket's file in place).
func TestSocketsInherit(t *testing.T) {
	echo := testbackend.New(t, testbackend.Echo)
	sock := filepath.Join(t.TempDir(), "front.sock")
	toml := fmt.Sprintf(`
[[listener]]
name = "tcp"
listen = "127.0.0.1:0"
upstream = "u"
[[listener]]
name = "unix"
listen = "unix:%s"
upstream = "u"
[[listener]]
name = "dns"
protocol = "udp"
listen = "127.0.0.1:0"
upstream = "d"
[upstream.u]
[[upstream.u.pool]]
name = "p"
hosts = [{ address = %q }]
[upstream.d]
[[upstream.d.pool]]
name = "p"
hosts = [{ address = "127.0.0.1:9" }]
`, sock, echo.Addr())
	a := startServer(t, toml)
	socks, err := a.s.Sockets()
	if err != nil {
		t.Fatal(err)
	}
	in := files{}
	for _, so := range socks {
		in[so.Network+" "+so.Address] = so.File
	}
	if len(in) != 3 {
		t.Fatalf("Sockets: %d distinct, want 3: %v", len(in), socks)
	}

	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("", cfg, logger())
	if err != nil {
		t.Fatal(err)
	}
	b.Inherit(in)
	if err := b.Bind(); err != nil {
		t.Fatal(err)
	}
	if len(in) != 0 {
		t.Fatalf("Bind left sockets untaken: %v", in)
	}
	if got, want := b.Listeners()[0].Addr().String(), a.addr; got != want {
		t.Fatalf("B listens on %s, A on %s", got, want)
	}
	if got, want := b.UDPListeners()[0].Addr().String(), a.s.UDPListeners()[0].Addr().String(); got != want {
		t.Fatalf("B's udp listener on %s, A's on %s", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("B: %v", err)
		}
	}()

	a.stop() // A stops accepting and closes its copies
	if err := <-a.done; err != nil {
		t.Fatal(err)
	}
	a.done <- nil // for startServer's cleanup

	for _, dst := range []struct{ network, addr string }{{"tcp", a.addr}, {"unix", sock}} {
		c, err := net.Dial(dst.network, dst.addr)
		if err != nil {
			t.Fatalf("%s after A stopped: %v", dst.network, err)
		}
		msg := []byte("through B")
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			t.Fatalf("%s: echo %q, %v", dst.network, got, err)
		}
		c.Close()
	}
}
