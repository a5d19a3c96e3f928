package health

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/testbackend"
)

// need returns the path of binary name, or skips the test (fails it under
// CI: see testbackend.Tool).
func need(t *testing.T, name string) string { return testbackend.Tool(t, name) }

// freePort returns a 127.0.0.1 port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// server is a child process started by startServer.
type server struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the output reader has finished
	log  *strings.Builder
	mu   *sync.Mutex
}

// Stop kills the server and waits for it. Safe to call twice.
func (s *server) Stop() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		<-s.done
	}
}

// startServer runs argv and waits until its output (stdout and stderr) shows
// ready, or fails after 60s with the output so far. It is stopped at cleanup.
func startServer(t *testing.T, ready string, argv ...string) *server {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		t.Fatalf("start %s: %v", argv[0], err)
	}
	w.Close()
	s := &server{cmd: cmd, done: make(chan struct{}), log: new(strings.Builder), mu: new(sync.Mutex)}
	readyc := make(chan struct{})
	go func() {
		defer close(s.done)
		defer r.Close()
		sc := bufio.NewScanner(r)
		seen := false
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			if !seen && strings.Contains(sc.Text(), ready) {
				seen = true
				close(readyc)
			}
		}
	}()
	t.Cleanup(s.Stop)
	select {
	case <-readyc:
	case <-s.done:
		s.Stop()
		t.Fatalf("%s exited before %q:\n%s", argv[0], ready, s.log.String())
	case <-time.After(60 * time.Second):
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Fatalf("%s not ready after 60s:\n%s", argv[0], s.log.String())
	}
	return s
}

// startRedis starts a private redis-server on a free port with extra args.
func startRedis(t *testing.T, args ...string) (addr string, s *server) {
	bin := need(t, "redis-server")
	port := freePort(t)
	argv := append([]string{bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--logfile", ""}, args...)
	s = startServer(t, "Ready to accept connections", argv...)
	return fmt.Sprintf("127.0.0.1:%d", port), s
}

// startMariaDB starts a private mariadbd with its own datadir on a free port.
func startMariaDB(t *testing.T) (addr string, s *server) {
	install := need(t, "mariadb-install-db")
	bin := need(t, "mariadbd")
	dir := t.TempDir()
	out, err := exec.Command(install, "--no-defaults", "--datadir="+dir, "--user=root",
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	port := freePort(t)
	s = startServer(t, "ready for connections", bin, "--no-defaults", "--datadir="+dir,
		"--socket="+filepath.Join(dir, "sock"), fmt.Sprintf("--port=%d", port),
		"--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
		"--skip-log-bin", "--innodb-buffer-pool-size=8M", "--pid-file="+filepath.Join(dir, "pid"))
	return fmt.Sprintf("127.0.0.1:%d", port), s
}

// closedPort returns an address where nothing listens.
func closedPort(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// silentServer accepts connections and never writes or reads.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// blackhole returns an address whose accept queue is full: the kernel drops
// new SYNs (tcp_abort_on_overflow = 0), so a connect hangs until its timeout,
// as with a firewalled or overloaded host.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0: the accept queue holds one connection, and nobody accepts.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return addr // the queue is full
		}
		if err != nil {
			t.Fatalf("filling the backlog: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if i > 10 {
			t.Fatal("backlog never filled")
		}
	}
}
