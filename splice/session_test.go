package splice

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The engine's loops live as long as the process, like Go's netpoller.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/l4lb/l4lb/splice.(*loop).run"))
}

// plain hides the concrete type of a conn so the session must use the
// portable buffered copy.
type plain struct{ net.Conn }

func (p plain) CloseWrite() error { return p.Conn.(*net.TCPConn).CloseWrite() }
func (p plain) SetLinger(n int) error {
	return p.Conn.(*net.TCPConn).SetLinger(n)
}

// rig is a client and a backend joined by a Session over real loopback TCP:
//
//	client <-> a ==session== b <-> server
type rig struct {
	client, server *net.TCPConn
	sess           *Session
	res            chan Result
}

func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func newRig(t *testing.T, portable bool, opt Options) *rig {
	t.Helper()
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	var ca, cb net.Conn = a, b
	if portable {
		ca, cb = plain{a}, plain{b}
	}
	r := &rig{client: client, server: server, sess: New(ca, cb, opt), res: make(chan Result, 1)}
	go func() { r.res <- r.sess.Run() }()
	t.Cleanup(func() {
		client.Close()
		server.Close()
		r.sess.Abort("test cleanup")
	})
	return r
}

func (r *rig) wait(t *testing.T, within time.Duration) Result {
	t.Helper()
	select {
	case res := <-r.res:
		r.res <- res
		return res
	case <-time.After(within):
		t.Fatalf("session still running after %v", within)
		return Result{}
	}
}

func modes(t *testing.T, f func(t *testing.T, portable bool)) {
	t.Run("splice", func(t *testing.T) { f(t, false) })
	t.Run("portable", func(t *testing.T) { f(t, true) })
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestIntegrity: bytes arrive unaltered both ways at sizes that straddle
// pipe and buffer boundaries, and are counted.
func TestIntegrity(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		for _, size := range []int{0, 1, 64<<10 - 1, 64<<10 + 1, 1 << 20, 8 << 20} {
			r := newRig(t, portable, Options{IdleTimeout: 10 * time.Second})
			up, down := randBytes(t, size), randBytes(t, size)
			var wg sync.WaitGroup
			var gotUp, gotDown []byte
			var errUp, errDown error
			wg.Add(2)
			go func() { // server: read everything, reply, close
				defer wg.Done()
				go func() { r.server.Write(down); r.server.CloseWrite() }()
				gotUp, errUp = io.ReadAll(r.server)
			}()
			go func() {
				defer wg.Done()
				go func() { r.client.Write(up); r.client.CloseWrite() }()
				gotDown, errDown = io.ReadAll(r.client)
			}()
			wg.Wait()
			if errUp != nil || errDown != nil {
				t.Fatalf("size %d: read errors %v %v", size, errUp, errDown)
			}
			if sha256.Sum256(gotUp) != sha256.Sum256(up) || sha256.Sum256(gotDown) != sha256.Sum256(down) {
				t.Fatalf("size %d: bytes altered (got %d/%d)", size, len(gotUp), len(gotDown))
			}
			res := r.wait(t, 5*time.Second)
			if res.End != EndClosed || res.AToB != uint64(size) || res.BToA != uint64(size) {
				t.Fatalf("size %d: result %+v", size, res)
			}
			// The engine splices what its first read does not take
			// (a read that fills the small buffer switches to splice);
			// the goroutine copier never splices.
			if portable && res.Spliced || !portable && size > smallBuf && !res.Spliced {
				t.Fatalf("size %d: spliced=%v in portable=%v mode", size, res.Spliced, portable)
			}
		}
	})
}

// TestClientHalfClose: the client sends a request and shuts its write half;
// the server sees EOF after exactly the request and its long reply still
// reaches the client whole.
func TestClientHalfClose(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		r := newRig(t, portable, Options{IdleTimeout: 10 * time.Second, FinTimeout: 5 * time.Second})
		req := []byte("GET / HTTP/1.0\r\n\r\n")
		reply := randBytes(t, 4<<20)
		r.client.Write(req)
		r.client.CloseWrite()
		got, err := io.ReadAll(r.server)
		if err != nil || !bytes.Equal(got, req) {
			t.Fatalf("server read %q, %v", got, err)
		}
		go func() { r.server.Write(reply); r.server.Close() }()
		back, err := io.ReadAll(r.client)
		if err != nil || !bytes.Equal(back, reply) {
			t.Fatalf("client got %d bytes (want %d), %v", len(back), len(reply), err)
		}
		if res := r.wait(t, 5*time.Second); res.End != EndClosed {
			t.Fatalf("end %v", res.End)
		}
	})
}

// TestServerHalfClose: the server greets and shuts its write half; the client
// sees EOF yet can keep sending, and the server gets every byte.
func TestServerHalfClose(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		r := newRig(t, portable, Options{IdleTimeout: 10 * time.Second, FinTimeout: 5 * time.Second})
		r.server.Write([]byte("hello"))
		r.server.CloseWrite()
		greet, err := io.ReadAll(r.client)
		if err != nil || string(greet) != "hello" {
			t.Fatalf("client got %q, %v", greet, err)
		}
		body := randBytes(t, 4<<20)
		werr := make(chan error, 1)
		go func() {
			_, err := r.client.Write(body)
			r.client.CloseWrite()
			werr <- err
		}()
		got, err := io.ReadAll(r.server)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("server got %d bytes (want %d), %v", len(got), len(body), err)
		}
		if err := <-werr; err != nil {
			t.Fatalf("client write after backend half-close: %v", err)
		}
		if res := r.wait(t, 5*time.Second); res.End != EndClosed {
			t.Fatalf("end %v", res.End)
		}
	})
}

// TestResetPropagates: a backend reset mid-stream reaches the client as a
// reset, not as a clean EOF, and promptly.
func TestResetPropagates(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		r := newRig(t, portable, Options{IdleTimeout: 10 * time.Second})
		r.server.Write(randBytes(t, 1<<20))
		r.server.SetLinger(0)
		r.server.Close()
		start := time.Now()
		r.client.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, r.client)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client saw %v, want ECONNRESET", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("reset took %v to reach the client", d)
		}
		if res := r.wait(t, 5*time.Second); res.End != EndResetB {
			t.Fatalf("end %v, want %v", res.End, EndResetB)
		}
	})
}

// TestClientResetPropagates: the other way round.
func TestClientResetPropagates(t *testing.T) {
	r := newRig(t, false, Options{IdleTimeout: 10 * time.Second})
	r.client.Write([]byte("x"))
	buf := make([]byte, 1)
	io.ReadFull(r.server, buf)
	r.client.SetLinger(0)
	r.client.Close()
	r.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := r.server.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server saw %v, want ECONNRESET", err)
	}
	if res := r.wait(t, 5*time.Second); res.End != EndResetA {
		t.Fatalf("end %v", res.End)
	}
}

// TestIdleTimeout: no bytes either way closes both sides near the timeout,
// while traffic in only one direction keeps the session alive.
func TestIdleTimeout(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		// 1s, not less: a stall of idle between a write and its read (2
		// busy cores under -race have shown 300ms) looks like idleness.
		const idle = time.Second
		r := newRig(t, portable, Options{IdleTimeout: idle})
		// One-way traffic for 3 idle periods: the session must survive.
		buf := make([]byte, 1)
		for i := 0; i < 9; i++ {
			if _, err := r.client.Write([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(r.server, buf); err != nil {
				t.Fatalf("session died under one-way traffic: %v", err)
			}
			time.Sleep(idle / 3)
		}
		start := time.Now()
		res := r.wait(t, 5*idle)
		took := time.Since(start)
		if res.End != EndIdle {
			t.Fatalf("end %v", res.End)
		}
		if took < idle/2 || took > 2*idle {
			t.Fatalf("idle close after %v, want about %v", took, idle)
		}
		r.client.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := r.client.Read(buf); err != io.EOF {
			t.Fatalf("client read after idle close: %v, want EOF", err)
		}
	})
}

// TestFinTimeout: a half-closed connection whose other side goes silent is
// closed after FinTimeout, well before IdleTimeout.
func TestFinTimeout(t *testing.T) {
	modes(t, func(t *testing.T, portable bool) {
		r := newRig(t, portable, Options{IdleTimeout: time.Hour, FinTimeout: 200 * time.Millisecond})
		r.client.CloseWrite()
		start := time.Now()
		res := r.wait(t, 3*time.Second)
		if res.End != EndFinTimeout {
			t.Fatalf("end %v", res.End)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("fin timeout fired after %v", took)
		}
	})
}

func TestAbort(t *testing.T) {
	r := newRig(t, false, Options{})
	r.sess.Abort("shutdown")
	res := r.wait(t, 2*time.Second)
	if res.End != EndAborted || res.Reason != "shutdown" {
		t.Fatalf("result %+v", res)
	}
	buf := make([]byte, 1)
	r.client.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := r.client.Read(buf); err != io.EOF {
		t.Fatalf("client read after abort: %v", err)
	}
}

func fdCount(t *testing.T) int {
	t.Helper()
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestIdleHoldsNoPipe: after a burst, idle sessions hold no pipe, so an idle
// proxied connection costs two sockets and nothing more; and nothing leaks
// once they end.
func TestIdleHoldsNoPipe(t *testing.T) {
	pp := &PipePool{MaxIdle: 4}
	// The engine's loops (an epoll fd and an eventfd each) start with the
	// first session and live on: start them before counting, so the test
	// does not depend on another having run first.
	if err := StartEngine(); err != nil {
		t.Fatal(err)
	}
	before := fdCount(t)
	const n = 50
	rigs := make([]*rig, n)
	for i := range rigs {
		rigs[i] = newRig(t, false, Options{IdleTimeout: time.Minute, Pipes: pp})
		r := rigs[i]
		msg := randBytes(t, 100<<10)
		go r.client.Write(msg)
		if _, err := io.ReadFull(r.server, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	// Every session has moved bytes and is now idle: each gives its pipe
	// back once its next splice finds the socket empty, a moment after the
	// server read the last byte.
	for deadline := time.Now().Add(2 * time.Second); pp.Open()-pp.Idle() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d pipes held by idle sessions", pp.Open()-pp.Idle())
		}
		time.Sleep(time.Millisecond)
	}
	if pp.Idle() > 4 {
		t.Fatalf("%d idle pipes kept, max 4", pp.Idle())
	}
	// 6 sockets per rig: client, a, b, server.
	if got, want := fdCount(t)-before, n*4+2*pp.Open(); got > want+4 {
		t.Fatalf("%d fds for %d idle sessions, want %d", got, n, want)
	}
	for _, r := range rigs {
		r.client.Close()
		r.server.Close()
		r.wait(t, 5*time.Second)
	}
	pp.Flush()
	if after := fdCount(t); after > before+2 {
		t.Fatalf("fds: %d before, %d after", before, after)
	}
}

// TestResetReturnsPipe: a session ended by a reset gives its pipe back (it
// once leaked 2 fds per reset connection: found by the soak test).
func TestResetReturnsPipe(t *testing.T) {
	pp := &PipePool{MaxIdle: 4}
	for i := 0; i < 20; i++ {
		r := newRig(t, false, Options{IdleTimeout: 10 * time.Second, Pipes: pp})
		r.server.Write(randBytes(t, 64<<10))
		r.server.SetLinger(0)
		r.server.Close()
		io.Copy(io.Discard, r.client)
		if res := r.wait(t, 5*time.Second); res.End != EndResetB {
			t.Fatalf("end %v", res.End)
		}
	}
	if inUse := pp.Open() - pp.Idle(); inUse != 0 {
		t.Fatalf("%d pipes leaked by 20 reset sessions", inUse)
	}
}

// TestSmallThenBulk: a conversation that switches between small messages
// (read/write mode) and bulk (splice mode) both ways keeps every byte in
// order, and a reset arriving in small-message mode is still passed on.
func TestSmallThenBulk(t *testing.T) {
	r := newRig(t, false, Options{IdleTimeout: 10 * time.Second})
	echo := make(chan error, 1)
	go func() { // server: echo everything back
		_, err := io.Copy(r.server, r.server)
		echo <- err
	}()
	r.client.SetDeadline(time.Now().Add(10 * time.Second))
	for round, size := range []int{1, 7, 100, 16<<10 - 1, 16 << 10, 16<<10 + 1, 3, 1 << 20, 5, 9, 300 << 10, 2} {
		for i := 0; i < 3; i++ {
			msg := randBytes(t, size)
			go r.client.Write(msg)
			got := make([]byte, size)
			if _, err := io.ReadFull(r.client, got); err != nil {
				t.Fatalf("round %d size %d: %v", round, size, err)
			}
			if !bytes.Equal(got, msg) {
				t.Fatalf("round %d size %d: bytes altered", round, size)
			}
		}
	}
	if !r.sess.spliced.Load() {
		t.Fatal("bulk rounds did not splice")
	}
	// Now in small-message mode (the last messages were small): a reset
	// from the server reaches the client as a reset.
	r.server.SetLinger(0)
	r.server.Close()
	<-echo
	if res := r.wait(t, 5*time.Second); res.End != EndResetB {
		t.Fatalf("end %v after a reset in small-message mode", res.End)
	}
	if _, err := r.client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after backend reset: %v", err)
	}
}

// TestSmallModeDataThenReset: in small-message mode, bytes followed at once
// by a reset (both may reach the proxy before it wakes) still end the
// session, with no timeout to fall back on: a short read must not be taken
// as "drained" and waited on.
func TestSmallModeDataThenReset(t *testing.T) {
	for i := 0; i < 20; i++ {
		r := newRig(t, false, Options{})
		r.client.SetDeadline(time.Now().Add(10 * time.Second))
		for j := 0; j < 3; j++ { // small exchanges: small-message mode
			r.server.Write([]byte("hi"))
			if _, err := io.ReadFull(r.client, make([]byte, 2)); err != nil {
				t.Fatal(err)
			}
		}
		r.server.Write([]byte("bye"))
		r.server.SetLinger(0)
		r.server.Close()
		if res := r.wait(t, 5*time.Second); res.End != EndResetB {
			t.Fatalf("end %v", res.End)
		}
	}
}
