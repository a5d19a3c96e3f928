package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// started is a session run with Start, no goroutine of the test's own.
type started struct {
	client, server *net.TCPConn
	sess           *Session
	res            chan Result
	calls          atomic.Int32
}

func startPair(t testing.TB, opt Options) *started {
	t.Helper()
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	st := &started{client: client, server: server, sess: New(a, b, opt), res: make(chan Result, 2)}
	st.sess.Start(func(r Result) {
		st.calls.Add(1)
		st.res <- r
	})
	t.Cleanup(func() {
		client.Close()
		server.Close()
		st.sess.Abort("test cleanup")
	})
	return st
}

func (st *started) wait(t testing.TB, within time.Duration) Result {
	t.Helper()
	select {
	case r := <-st.res:
		if n := st.calls.Load(); n != 1 {
			t.Fatalf("done called %d times", n)
		}
		return r
	case <-time.After(within):
		t.Fatalf("session still running after %v", within)
		return Result{}
	}
}

// exchange sends msg client to server and back server to client.
func (st *started) exchange(t testing.TB, msg []byte) {
	t.Helper()
	st.client.SetDeadline(time.Now().Add(10 * time.Second))
	st.server.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := st.client.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st.server, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("server got %q, %v", got, err)
	}
	if _, err := st.server.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st.client, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("client got %q, %v", got, err)
	}
}

// warmEngine starts the engine's loops so goroutine counts exclude them.
func warmEngine(t *testing.T) {
	st := startPair(t, Options{})
	st.exchange(t, []byte("x"))
	st.client.Close()
	st.server.Close()
	st.wait(t, 5*time.Second)
}

// TestEngineIdleHoldsNoGoroutine: sessions on the engine cost no goroutine
// and, once idle, no pipe: 200 of them leave the goroutine count as it was.
func TestEngineIdleHoldsNoGoroutine(t *testing.T) {
	warmEngine(t)
	pp := &PipePool{MaxIdle: 4}
	runtime.GC()
	before := runtime.NumGoroutine()
	const n = 200
	sts := make([]*started, n)
	for i := range sts {
		sts[i] = startPair(t, Options{IdleTimeout: time.Minute, Pipes: pp})
		if i%10 == 0 {
			sts[i].exchange(t, make([]byte, 100<<10)) // bulk: takes a pipe
		} else {
			sts[i].exchange(t, []byte("ping"))
		}
	}
	if got := runtime.NumGoroutine(); got > before+5 {
		t.Fatalf("%d goroutines before, %d with %d idle sessions", before, got, n)
	}
	// A flow gives its pipe back at the EAGAIN after its last bytes, a
	// moment after the peer may have read them.
	for deadline := time.Now().Add(2 * time.Second); pp.Open()-pp.Idle() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d pipes held by idle sessions", pp.Open()-pp.Idle())
		}
		time.Sleep(time.Millisecond)
	}
	for _, st := range sts {
		st.client.Close()
		st.server.Close()
		if r := st.wait(t, 5*time.Second); r.End != EndClosed {
			t.Fatalf("end %v", r.End)
		}
	}
	pp.Flush()
}

// TestEngineShortReadThenFIN: in small-message mode the last bytes and the
// FIN often arrive together, so the short read that returns the bytes is
// followed by no new edge: the event's EPOLLRDHUP must keep the flow
// reading. With no timeout to fall back on, a miss hangs the session.
func TestEngineShortReadThenFIN(t *testing.T) {
	for i := 0; i < 50; i++ {
		st := startPair(t, Options{})
		for j := 0; j < 3; j++ {
			st.exchange(t, []byte("hi")) // small-message mode both ways
		}
		// Bytes and FIN in one go, both ways.
		st.client.Write([]byte("last"))
		st.client.CloseWrite()
		st.server.Write([]byte("bye"))
		st.server.CloseWrite()
		up, err := io.ReadAll(st.server)
		if err != nil || string(up) != "last" {
			t.Fatalf("round %d: server got %q, %v", i, up, err)
		}
		down, err := io.ReadAll(st.client)
		if err != nil || string(down) != "bye" {
			t.Fatalf("round %d: client got %q, %v", i, down, err)
		}
		if r := st.wait(t, 5*time.Second); r.End != EndClosed || r.AToB != 10 || r.BToA != 9 {
			t.Fatalf("round %d: result %+v", i, r)
		}
	}
}

// TestEngineDataThenReset: bytes followed at once by a RST, from either
// side, in small-message mode: the reset is passed on, promptly.
func TestEngineDataThenReset(t *testing.T) {
	for _, fromClient := range []bool{false, true} {
		for i := 0; i < 30; i++ {
			st := startPair(t, Options{})
			for j := 0; j < 3; j++ {
				st.exchange(t, []byte("hi"))
			}
			from, to, want := st.server, st.client, EndResetB
			if fromClient {
				from, to, want = st.client, st.server, EndResetA
			}
			from.Write([]byte("bye"))
			from.SetLinger(0)
			from.Close()
			to.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.Copy(io.Discard, to)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("fromClient=%v round %d: peer saw %v, want ECONNRESET", fromClient, i, err)
			}
			if r := st.wait(t, 5*time.Second); r.End != want {
				t.Fatalf("fromClient=%v round %d: end %v, want %v", fromClient, i, r.End, want)
			}
		}
	}
}

// TestEngineAbortConcurrent: Abort from other goroutines, while bytes flow
// and more than once, ends each session exactly once with its reason.
func TestEngineAbortConcurrent(t *testing.T) {
	const n = 50
	sts := make([]*started, n)
	for i := range sts {
		sts[i] = startPair(t, Options{})
		go io.Copy(sts[i].server, sts[i].server) // echo until closed
		go io.Copy(io.Discard, sts[i].client)
		go sts[i].client.Write(make([]byte, 1<<20))
	}
	var wg sync.WaitGroup
	for _, st := range sts {
		for k := 0; k < 3; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st.sess.Abort("stop")
			}()
		}
	}
	wg.Wait()
	for i, st := range sts {
		r := st.wait(t, 5*time.Second)
		if r.End != EndAborted || r.Reason != "stop" {
			t.Fatalf("session %d: %+v", i, r)
		}
	}
	time.Sleep(50 * time.Millisecond) // a second done call would show now
	for i, st := range sts {
		if c := st.calls.Load(); c != 1 {
			t.Fatalf("session %d: done called %d times", i, c)
		}
	}
}

// TestEngineChurn: thousands of short sessions, many at once, so slots are
// reused while events for their previous sessions may still be queued: a
// stale event must never touch the new session.
func TestEngineChurn(t *testing.T) {
	total, parallel := 5000, 50
	if testing.Short() {
		total = 1000
	}
	sem := make(chan struct{}, parallel)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for i := 0; i < total; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- churnOnce(t, i)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func churnOnce(t *testing.T, i int) error {
	client, a := tcpPairErr()
	if client == nil {
		return errors.New("tcp pair failed")
	}
	b, server := tcpPairErr()
	if b == nil {
		client.Close()
		a.Close()
		return errors.New("tcp pair failed")
	}
	defer client.Close()
	defer server.Close()
	res := make(chan Result, 2)
	var calls atomic.Int32
	s := New(a, b, Options{IdleTimeout: 10 * time.Second})
	s.Start(func(r Result) { calls.Add(1); res <- r })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	server.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte{byte(i), byte(i >> 8), 1, 2, 3}
	switch i % 3 {
	case 0: // request, reply, both close
		client.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, msg) {
			return errors.New("request altered")
		}
		server.Write(got)
		if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, msg) {
			return errors.New("reply altered")
		}
		client.Close()
		server.Close()
	case 1: // client sends and resets
		client.Write(msg)
		client.SetLinger(0)
		client.Close()
		io.Copy(io.Discard, server)
		server.Close()
	case 2: // server closes at once
		server.Close()
		io.Copy(io.Discard, client)
		client.Close()
	}
	select {
	case r := <-res:
		if i%3 == 0 && (r.End != EndClosed || r.AToB != uint64(len(msg)) || r.BToA != uint64(len(msg))) {
			return errors.New("session " + r.End.String())
		}
	case <-time.After(10 * time.Second):
		return errors.New("session did not end")
	}
	if calls.Load() != 1 {
		return errors.New("done called more than once")
	}
	return nil
}

func tcpPairErr() (dialed, accepted *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		return nil, nil
	}
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestEngineTimers: idle and fin timeouts fire on time (not early, at most
// 10% late), activity pushes the idle timeout back, and sessions with
// different timeouts on the same loop each get theirs.
func TestEngineTimers(t *testing.T) {
	type tc struct {
		name     string
		opt      Options
		activity time.Duration // one exchange after this long, 0 = none
		halfOpen bool          // the client half-closes at once
		want     time.Duration // from Start
		end      End
	}
	cases := []tc{
		{"idle 300ms", Options{IdleTimeout: 300 * time.Millisecond}, 0, false, 300 * time.Millisecond, EndIdle},
		{"idle 600ms", Options{IdleTimeout: 600 * time.Millisecond}, 0, false, 600 * time.Millisecond, EndIdle},
		{"idle 400ms, activity at 200ms", Options{IdleTimeout: 400 * time.Millisecond}, 200 * time.Millisecond, false, 600 * time.Millisecond, EndIdle},
		{"fin 300ms under idle 1h", Options{IdleTimeout: time.Hour, FinTimeout: 300 * time.Millisecond}, 0, true, 300 * time.Millisecond, EndFinTimeout},
		{"fin 300ms, no idle", Options{FinTimeout: 300 * time.Millisecond}, 0, true, 300 * time.Millisecond, EndFinTimeout},
	}
	var wg sync.WaitGroup
	errs := make(chan string, len(cases))
	for _, c := range cases {
		st := startPair(t, c.opt)
		start := time.Now()
		if c.halfOpen {
			st.client.CloseWrite()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.activity > 0 {
				time.Sleep(c.activity)
				st.client.Write([]byte("x"))
				io.ReadFull(st.server, make([]byte, 1))
			}
			select {
			case r := <-st.res:
				took := time.Since(start)
				if r.End != c.end || took < c.want || took > c.want+c.want/10 {
					errs <- c.name + ": ended " + r.End.String() + " after " + took.String()
				}
			case <-time.After(5 * time.Second):
				errs <- c.name + ": did not end"
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestEngineUnix: unix stream sockets run on the engine too.
func TestEngineUnix(t *testing.T) {
	c, s := unixPair(t, "unix")
	client, a := tcpPair(t)
	defer client.Close()
	defer c.Close()
	sess := New(a, s, Options{IdleTimeout: 10 * time.Second})
	if fd, ok := sockFD(s); !ok || fd < 0 {
		t.Fatal("unix conn not taken by the engine")
	}
	res := make(chan Result, 1)
	sess.Start(func(r Result) { res <- r })
	body := randBytes(t, 1<<20)
	go func() { client.Write(body); client.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	c.Write([]byte("done"))
	c.CloseWrite()
	back, _ := io.ReadAll(client)
	if string(back) != "done" {
		t.Fatalf("client got %q", back)
	}
	select {
	case r := <-res:
		if r.End != EndClosed || r.AToB != 1<<20 || r.BToA != 4 {
			t.Fatalf("result %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
}

// TestEngineUrgentData: a client that sends TCP urgent data (telnet's
// interrupt, MSG_OOB) must not stall its connection. A read stops short at
// the urgent mark with more bytes queued, so "a short read means drained"
// would wait for an edge that never comes; and splice(2) stops at the mark
// for good (it never skips the urgent byte). Both in small-message mode and
// in bulk mode (a session's first bytes), the bytes after the mark must
// arrive. Like HAProxy and nginx, l4lb passes the ordinary stream on and
// drops the urgent byte itself.
func TestEngineUrgentData(t *testing.T) {
	for _, mode := range []string{"small", "bulk"} {
		t.Run(mode, func(t *testing.T) {
			st := startPair(t, Options{})
			if mode == "small" {
				for range 3 {
					st.exchange(t, []byte("hi"))
				}
			}
			rc, err := st.client.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			send := func(b []byte, flags int) {
				rc.Write(func(fd uintptr) bool {
					serr = unix.Send(int(fd), b, flags)
					return true
				})
				if serr != nil {
					t.Fatal(serr)
				}
			}
			// One burst: "hello", the urgent "!", "world", so the mark sits
			// in the middle of what the proxy's read finds queued.
			send([]byte("hello"), unix.MSG_MORE)
			send([]byte("!"), unix.MSG_OOB|unix.MSG_MORE)
			send([]byte("world"), 0)
			st.server.SetReadDeadline(time.Now().Add(3 * time.Second))
			got := make([]byte, 10)
			if _, err := io.ReadFull(st.server, got); err != nil || string(got) != "helloworld" {
				t.Fatalf("server got %q, %v: the bytes after the urgent mark did not come through", got, err)
			}
			st.exchange(t, []byte("still flowing"))
		})
	}
}
