package testbackend

import (
	"errors"
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
	_, err := net.DialTimeout("tcp", Refuser(t), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial refuser: %v, want ECONNREFUSED", err)
	}
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
