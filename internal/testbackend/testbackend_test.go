package testbackend

import (
	"errors"
	"io"
	"net"
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
