package testbackend

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// The fault fixtures must really produce the faults the proxy tests rely on.
func TestBlackholeTimesOut(t *testing.T) {
	addr := Blackhole(t)
	_, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial blackhole: %v, want a timeout", err)
	}
}

func TestRefuserRefuses(t *testing.T) {
	addr := Refuser(t)
	_, err := net.DialTimeout("tcp", addr, time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial refuser: %v, want ECONNREFUSED", err)
	}
	// Every Refuser of a run is its own port, however many there are.
	seen := map[string]bool{addr: true}
	for i := range 2000 {
		a := Refuser(t)
		if seen[a] {
			t.Fatalf("Refuser %d returned %s again", i, a)
		}
		seen[a] = true
	}
	// And the host can be brought up where it refused.
	s, err := StartAt(addr, Echo)
	if err != nil {
		t.Fatalf("listening where a Refuser was: %v", err)
	}
	defer s.Close()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial after StartAt: %v", err)
	}
	c.Close()
}

func TestTagger(t *testing.T) {
	s := New(t, Tagger("b1"))
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 3)
	if _, err := c.Read(buf); err != nil || string(buf) != "b1\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// TestChaosCuts: the relay delivers exactly CutAfter bytes, then cuts with a
// FIN or with a reset as asked.
func TestChaosCuts(t *testing.T) {
	src := New(t, Source(make([]byte, 1<<20)))
	for _, rst := range []bool{false, true} {
		c, err := StartChaos(&Chaos{CutAfter: 100 << 10, CutRST: rst}, src.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", c.Addr())
		if rst && errors.Is(err, syscall.ECONNRESET) {
			// The relay can deliver and reset before the dialer reads
			// SO_ERROR: the reset is what it was asked for.
			c.Close()
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		conn.Close()
		c.Close()
		if rst && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("RST cut: %v after %d bytes", err, n)
		}
		if !rst && (err != nil || n != 100<<10) {
			t.Errorf("FIN cut: %d bytes, %v", n, err)
		}
	}
}

// TestChaosRate: the bandwidth cap holds on average.
func TestChaosRate(t *testing.T) {
	src := New(t, Source(make([]byte, 256<<10)))
	c, err := StartChaos(&Chaos{BytesPerS: 1 << 20}, src.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := net.Dial("tcp", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	n, _ := io.Copy(io.Discard, conn)
	if d := time.Since(start); n != 256<<10 || d < 200*time.Millisecond {
		t.Fatalf("%d bytes in %v at a 1 MiB/s cap (want >= ~250ms)", n, d)
	}
}

// TestChaosDelay: each chunk waits Delay in each direction, so a round trip
// through the relay takes at least twice Delay, and arrives intact.
func TestChaosDelay(t *testing.T) {
	echo := New(t, Echo)
	const delay = 50 * time.Millisecond
	c, err := StartChaos(&Chaos{Delay: delay}, echo.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn, err := net.Dial("tcp", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 3; i++ {
		start := time.Now()
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("read %q, %v", buf, err)
		}
		if d := time.Since(start); d < 2*delay {
			t.Fatalf("round trip %d took %v through a relay delaying %v each way", i, d, delay)
		}
	}
	if c.Cuts() != 0 {
		t.Errorf("a relay without CutAfter counted %d cuts", c.Cuts())
	}
}

// TestChaosCountsCuts: every cut is counted, and only cuts.
func TestChaosCountsCuts(t *testing.T) {
	src := New(t, Source(make([]byte, 64<<10)))
	c, err := StartChaos(&Chaos{CutAfter: 1 << 10}, src.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 3; i++ {
		conn, err := net.Dial("tcp", c.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := io.Copy(io.Discard, conn)
		conn.Close()
		if n != 1<<10 {
			t.Fatalf("cut after %d bytes, want 1024", n)
		}
	}
	if c.Cuts() != 3 {
		t.Fatalf("Cuts() = %d after 3 cut connections", c.Cuts())
	}
}

// TestResetter: the connection stays open until n bytes are read, then the
// client sees ECONNRESET, not a clean EOF.
func TestResetter(t *testing.T) {
	s := New(t, Resetter(100))
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(make([]byte, 99)); err != nil {
		t.Fatal(err)
	}
	// One byte short: nothing happens (a bounded wait for a non-event).
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if _, err := conn.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("after 99 of 100 bytes: %v, want a timeout", err)
	}
	if _, err := conn.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after 100 bytes: %v, want ECONNRESET", err)
	}
}

// TestSilent: accepted, never answers, but reads (so the client's writes
// succeed).
func TestSilent(t *testing.T) {
	s := New(t, Silent)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(make([]byte, 1<<20)); err != nil {
		t.Fatalf("write to a silent backend: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if n, err := conn.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("silent backend: read %d, %v; want a timeout", n, err)
	}
	conn.Close()
	if s.Accepted.Load() != 1 {
		t.Fatalf("accepted %d", s.Accepted.Load())
	}
}

// TestHalfCloser: no response before the client's FIN; after it, the whole
// response, then EOF.
func TestHalfCloser(t *testing.T) {
	resp := []byte("the response")
	s := New(t, HalfCloser(resp))
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("request"))
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if _, err := conn.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("before the FIN: %v, want a timeout", err)
	}
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != string(resp) {
		t.Fatalf("after the FIN: %q, %v", got, err)
	}
}

// TestFlapper: answers 200 until told otherwise.
func TestFlapper(t *testing.T) {
	f := NewFlapper()
	srv := httptest.NewServer(f)
	defer srv.Close()
	get := func() int {
		t.Helper()
		r, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if c := get(); c != 200 {
		t.Fatalf("new flapper: %d", c)
	}
	f.Set(503)
	if c := get(); c != 503 {
		t.Fatalf("after Set(503): %d", c)
	}
	f.Set(200)
	if c := get(); c != 200 {
		t.Fatalf("after Set(200): %d", c)
	}
}
