package health

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// udpServer answers each datagram with reply(datagram) (no answer if nil)
// until the test ends.
func udpServer(t *testing.T, reply func([]byte) []byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n]); r != nil {
				pc.WriteTo(r, from)
			}
		}
	}()
	return pc.LocalAddr().String()
}

// TestUDPProber: a DNS-like reply passes; a wrong reply, silence and ICMP
// port unreachable fail, each with its reason. Silence is never health.
func TestUDPProber(t *testing.T) {
	dns := udpServer(t, func(q []byte) []byte { return append([]byte{q[0], q[1], 0x81, 0x80}, q[4:]...) })
	errSrv := udpServer(t, func([]byte) []byte { return []byte("-ERR nope") })
	quiet := udpServer(t, func([]byte) []byte { return nil })
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	closed := pc.LocalAddr().String()
	pc.Close()
	query := []byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}

	for _, tc := range []struct {
		name, addr   string
		send, expect string
		want         string // "" = pass; else a substring of the reason
	}{
		{"dns reply prefix", dns, string(query), "\xbe\xef\x81\x80", ""},
		{"any reply", dns, string(query), "", ""},
		{"wrong reply", errSrv, "PING\r\n", "+PONG", `expected "+PONG", got "-ERR nope"`},
		{"silence", quiet, string(query), "", "timeout after 200ms: no reply"},
		{"port unreachable", closed, string(query), "", "connection refused (ICMP port unreachable)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewProber(Config{Type: TypeUDP, Interval: time.Second, Timeout: 200 * time.Millisecond, Send: tc.send, Expect: tc.expect})
			if err != nil {
				t.Fatal(err)
			}
			err = p.Probe(context.Background(), Addr{Network: "tcp", Address: tc.addr})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("probe failed: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("probe: %v, want %q", err, tc.want)
			}
		})
	}
}
