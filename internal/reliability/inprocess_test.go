package reliability

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/server"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

func fdCount() int {
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	splice.DefaultPipes().Flush()
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// settle waits (bounded) for goroutines and fds to come back to at most
// the baseline plus slack, and reports what it found.
func settle(t *testing.T, g0, fd0 int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), fdCount()
		if g <= g0+2 && fd <= fd0+2 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: goroutines %d -> %d, fds %d -> %d", g0, g, fd0, fd)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type inproc struct {
	s    *server.Server
	path string
	addr string
	stop func()
}

func startInproc(t *testing.T, toml string) *inproc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	toml = fmt.Sprintf("[control]\nstate_dir = %q\n", filepath.Join(dir, "state")) + toml
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(path, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	ip := &inproc{s: s, path: path, addr: s.Listeners()[0].Addr().String()}
	ip.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(ip.stop)
	return ip
}

// echoCheck writes b on c and reads it back: an error unless the echo is
// exactly b within 10 s.
func echoCheck(c net.Conn, b []byte) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, err := c.Write(b); errc <- err }()
	got := make([]byte, len(b))
	_, rerr := io.ReadFull(c, got)
	werr := <-errc // bounded by the deadline
	if rerr != nil {
		return rerr
	}
	if werr != nil {
		return werr
	}
	if !bytes.Equal(got, b) {
		return errors.New("bytes altered")
	}
	return nil
}
