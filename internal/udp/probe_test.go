package udp

import (
	"context"
	"errors"
	"testing"
	"time"
)

// dnsReply answers a DNS-like query: the 2-byte id, then flags 0x8180
// (response, no error), then the rest of the query.
func dnsReply(q []byte) []byte {
	if len(q) < 2 {
		return nil
	}
	return append([]byte{q[0], q[1], 0x81, 0x80}, q[min(4, len(q)):]...)
}

func TestProbeUDP(t *testing.T) {
	dns := newBackend(t, "127.0.0.1:0", 0, dnsReply)
	quiet := newBackend(t, "127.0.0.1:0", 0, silent)
	pong := newBackend(t, "127.0.0.1:0", 0, func([]byte) []byte { return []byte("-ERR nope") })
	closed := refused(t)
	query := []byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	timeout := scaled(200 * time.Millisecond)

	for _, tc := range []struct {
		name         string
		addr         string
		send, expect []byte
		is           error  // nil = success
		msg          string // the reason, when it is fixed
	}{
		{"dns reply prefix", dns.addr(), query, []byte{0xbe, 0xef, 0x81, 0x80}, nil, ""},
		{"any reply", dns.addr(), query, nil, nil, ""},
		{"wrong reply", pong.addr(), []byte("PING\r\n"), []byte("+PONG"), ErrUnexpectedReply, `expected "+PONG", got "-ERR nope"`},
		{"silence is not health", quiet.addr(), query, nil, ErrNoReply, "timeout after " + timeout.String() + ": no reply"},
		{"silence with expect", quiet.addr(), query, []byte{0xbe}, ErrNoReply, "timeout after " + timeout.String() + ": no reply"},
		{"port unreachable", closed, query, nil, ErrRefused, "connection refused (ICMP port unreachable)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ProbeUDP(context.Background(), tc.addr, tc.send, tc.expect, timeout)
			switch {
			case tc.is == nil && err != nil:
				t.Fatalf("err = %v; want success", err)
			case tc.is != nil && !errors.Is(err, tc.is):
				t.Fatalf("err = %v; want %v", err, tc.is)
			case tc.msg != "" && err.Error() != tc.msg:
				t.Errorf("reason %q; want %q", err, tc.msg)
			}
		})
	}
}

func TestProbeUDPCanceled(t *testing.T) {
	quiet := newBackend(t, "127.0.0.1:0", 0, silent)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	err := ProbeUDP(ctx, quiet.addr(), []byte("x"), nil, time.Minute)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v; want canceled", err)
	}
	if d := time.Since(start); d > scaled(5*time.Second) {
		t.Errorf("took %s after cancel", d)
	}
}

func TestProbeUDPBadAddress(t *testing.T) {
	if err := ProbeUDP(context.Background(), "not an address", nil, nil, time.Second); err == nil {
		t.Error("no error for a bad address")
	}
}
