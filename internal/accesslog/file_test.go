package accesslog_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/accesslog"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(testbackend.EngineGoroutine))
}

// readLines returns the JSON lines of the file at path, decoded.
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// startListener runs a proxy listener to one echo host, with its access
// lines to acc and its other lines to main.
func startListener(t *testing.T, acc *zerolog.Logger, main io.Writer) *proxy.Listener {
	t.Helper()
	echo := testbackend.New(t, testbackend.Echo)
	return startListenerTo(t, acc, main, echo.Addr())
}

func startListenerTo(t *testing.T, acc *zerolog.Logger, main io.Writer, addr string) *proxy.Listener {
	t.Helper()
	p, err := pool.NewPool("main", 0, pool.MethodRoundRobin, []*pool.Host{pool.NewHost("echo", "tcp", addr, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &proxy.Settings{Upstream: pool.NewUpstream("app", []*pool.Pool{p}, pool.AllDownReject), Access: acc}
	l, err := proxy.Listen("front", "tcp", "127.0.0.1:0", s, zerolog.New(main))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l
}

// roundTrip sends n bytes through l, half-closes, reads the echo, and
// waits until the listener has logged the connection.
func roundTrip(t *testing.T, l *proxy.Listener, n int) {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(bytes.Repeat([]byte("a"), n)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c); err != nil || len(b) != n {
		t.Fatalf("echo: %d bytes, %v", len(b), err)
	}
	for deadline := time.Now().Add(5 * time.Second); l.Stats().Active != 0; {
		if time.Now().After(deadline) {
			t.Fatal("connection never ended")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// syncBuffer is a main log the test can read while the listener writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// The documented schema of a TCP access line (docs/METRICS.md).
var tcpFields = []string{"level", "time", "message", "listener", "client", "upstream", "pool", "host",
	"bytes_up", "bytes_down", "duration", "end", "spliced"}

func TestOneLinePerConnectionAndReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	f, err := accesslog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&^accesslog.Mode != 0 {
		t.Errorf("mode: %v, %v; want at most %v", fi.Mode(), err, os.FileMode(accesslog.Mode))
	}
	acc := accesslog.Logger(f)
	var main syncBuffer
	l := startListener(t, &acc, &main)

	roundTrip(t, l, 1234)
	lines := readLines(t, path)
	if len(lines) != 1 {
		t.Fatalf("%d lines, want 1: %v", len(lines), lines)
	}
	m := lines[0]
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := slices.Clone(tcpFields)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("fields %v, want %v", keys, want)
	}
	for k, v := range map[string]any{
		"message": "connection closed", "level": "info", "listener": "front", "upstream": "app",
		"pool": "main", "host": "echo", "bytes_up": 1234.0, "bytes_down": 1234.0, "end": "closed",
	} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(m["time"])); err != nil {
		t.Errorf("time: %v", err)
	}
	if s := main.String(); bytes.Contains([]byte(s), []byte("connection closed")) {
		t.Errorf("the access line is in the main log too:\n%s", s)
	}

	// logrotate: rename, then SIGHUP (Reopen). The next line goes to a
	// new file of the old name; the rotated one keeps its one line.
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, l, 10)
	if n := len(readLines(t, rotated)); n != 1 {
		t.Errorf("rotated file has %d lines, want 1", n)
	}
	lines = readLines(t, path)
	if len(lines) != 1 || lines[0]["bytes_up"] != 10.0 {
		t.Errorf("new file: %v, want one line of 10 bytes", lines)
	}
}

// Writers racing with Reopen lose no line and never see a closed file.
func TestReopenUnderWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	f, err := accesslog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 500
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			for j := range each {
				if _, err := fmt.Fprintf(f, "{\"w\":%d,\"n\":%d}\n", i, j); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	rotations := 0
	for i := 0; i < 20; i++ {
		if err := os.Rename(path, fmt.Sprintf("%s.%d", path, i)); err != nil {
			t.Fatal(err)
		}
		if err := f.Reopen(); err != nil {
			t.Fatal(err)
		}
		rotations++
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	total := len(readLines(t, path))
	for i := range rotations {
		total += len(readLines(t, fmt.Sprintf("%s.%d", path, i)))
	}
	if total != writers*each {
		t.Errorf("%d lines over all files, want %d", total, writers*each)
	}
	if err := f.Reopen(); err == nil {
		t.Error("Reopen after Close succeeded")
	}
}

// A client no host could take also gets its one line in the access log;
// the connect failures stay in the main log.
func TestNoBackendLine(t *testing.T) {
	var buf syncBuffer
	acc := accesslog.Logger(&buf)
	var main syncBuffer
	l := startListenerTo(t, &acc, &main, testbackend.Refuser(t))
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c) // closed by the proxy
	c.Close()
	for deadline := time.Now().Add(5 * time.Second); l.Stats().Active != 0; {
		if time.Now().After(deadline) {
			t.Fatal("connection never ended")
		}
		time.Sleep(2 * time.Millisecond)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &m); err != nil {
		t.Fatalf("access log %q: %v", buf.String(), err)
	}
	if m["message"] != "client closed: no backend" || m["end"] != "no backend" || m["listener"] != "front" || m["reason"] == nil {
		t.Errorf("access line %v", m)
	}
	if s := main.String(); !bytes.Contains([]byte(s), []byte("connect failed")) || bytes.Contains([]byte(s), []byte("no backend")) {
		t.Errorf("main log:\n%s", s)
	}
}

func TestNilFile(t *testing.T) {
	var f *accesslog.File
	if f.Reopen() != nil || f.Close() != nil {
		t.Error("a nil File must do nothing")
	}
}

func TestOpenError(t *testing.T) {
	if _, err := accesslog.Open(filepath.Join(t.TempDir(), "no", "such", "dir", "a.log")); err == nil {
		t.Error("Open in a missing directory succeeded")
	}
}
