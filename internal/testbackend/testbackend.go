// Package testbackend provides real loopback backends for l4lb's tests and
// demo: servers that echo, greet first, tag themselves, hash what they read,
// answer after a half-close, reset, or stay silent; addresses that refuse or
// blackhole connections; a flapping HTTP health endpoint; and a chaos relay
// (delay, bandwidth cap, cut with FIN or RST) since this kernel has no netem. Every server
// listens on 127.0.0.1 on a port the kernel picks, and Close waits for all
// of its goroutines.
package testbackend

import (
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Handler serves one accepted connection. The server closes c afterwards.
type Handler func(c *net.TCPConn)

// Server is a running backend.
type Server struct {
	ln       net.Listener
	h        Handler
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	Accepted atomic.Int64
}

// Start listens on 127.0.0.1:0 and serves each connection with h.
func Start(h Handler) (*Server, error) { return StartAt("127.0.0.1:0", h) }

// StartAt listens on addr (to bring a stopped backend back on its port) and
// serves each connection with h.
func StartAt(addr string, h Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{ln: ln, h: h, conns: make(map[net.Conn]struct{})}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// New starts a server and closes it when the test ends.
func New(t testing.TB, h Handler) *Server {
	t.Helper()
	s, err := Start(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.Accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c.(*net.TCPConn))
	}
}

func (s *Server) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	s.h(c)
}

// Stop closes the listener, so new connections are refused, but leaves
// connections in progress alone.
func (s *Server) Stop() { s.ln.Close() }

// Close stops the server, closes every connection and waits for its
// goroutines.
func (s *Server) Close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Echo writes back everything it reads; on EOF it half-closes, so a client
// that shuts its write half still receives every byte.
func Echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}

// Greeter writes greeting before reading anything (as MySQL does), then
// echoes.
func Greeter(greeting []byte) Handler {
	return func(c *net.TCPConn) {
		if _, err := c.Write(greeting); err != nil {
			return
		}
		Echo(c)
	}
}

// Tagger writes tag and a newline on accept, then echoes: a client can tell
// which backend it reached.
func Tagger(tag string) Handler { return Greeter([]byte(tag + "\n")) }

// Resetter reads n bytes, then resets the connection (SO_LINGER 0).
func Resetter(n int64) Handler {
	return func(c *net.TCPConn) {
		io.CopyN(io.Discard, c, n)
		c.SetLinger(0)
	}
}

// Source writes data, then closes (FIN).
func Source(data []byte) Handler {
	return func(c *net.TCPConn) { c.Write(data) }
}

// Silent accepts and never reads nor writes, until the client or Close ends
// the connection.
func Silent(c *net.TCPConn) { io.Copy(io.Discard, c) }

// Refuser returns an address on which nothing listens: connects get an
// immediate RST ("connection refused"). The port is held, bound but not
// listening, until the test ends, so no other Refuser (or backend) of the
// run is given it; closing a listener and handing out its address instead
// let two Refusers share a port (a "duplicate host id" flake). The socket
// is bound without SO_REUSEADDR, so the kernel's port choice treats the
// port as taken, then marked SO_REUSEADDR, so that a test may still bring
// the host up by listening on the address (StartAt): Linux lets a listener
// bind beside sockets that all set SO_REUSEADDR and none listens.
func Refuser(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
}

// Blackhole returns the address of a listener whose accept queue is full and
// is never accepted from: a connect to it times out, as to a host that drops
// SYNs. It is closed when the test ends.
func Blackhole(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0 holds one pending connection; the kernel then drops SYNs.
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
	// Fill the queue so the next connect hangs.
	for i := 0; i < 2; i++ {
		d := net.Dialer{Timeout: 200e6}
		if c, err := d.Dial("tcp", addr); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	return addr
}

// Hash is what a Hasher read on one connection.
type Hash struct {
	N   int64
	Sum [32]byte
}

// Hasher reads each connection to EOF, then reports how many bytes it read
// and their sha256 on out (which must not block the test for long).
func Hasher(out chan<- Hash) Handler {
	return func(c *net.TCPConn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		var r Hash
		r.N = n
		copy(r.Sum[:], h.Sum(nil))
		out <- r
	}
}

// HalfCloser reads the request to EOF (the client's FIN), then writes
// response and closes: the `echo x | nc` and HTTP/1.0 pattern.
func HalfCloser(response []byte) Handler {
	return func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Write(response)
	}
}

// Flapper is an HTTP health endpoint whose status is set by the test.
type Flapper struct{ status atomic.Int32 }

// NewFlapper returns a flapper answering 200 until Set says otherwise.
func NewFlapper() *Flapper {
	f := &Flapper{}
	f.status.Store(200)
	return f
}

// Set makes the endpoint answer code from now on.
func (f *Flapper) Set(code int) { f.status.Store(int32(code)) }

// ServeHTTP answers with the status in force.
func (f *Flapper) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(int(f.status.Load()))
}
