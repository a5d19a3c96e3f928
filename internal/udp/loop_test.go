package udp

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestManyReady: replies for three times more sessions than one
// epoll_wait returns (maxEvents) arrive in one burst; every client gets its
// own. The backend holds every request until it has them all, then answers
// as fast as it can write, so the owner can find more session sockets ready
// than a wait takes (how many at once is the scheduler's to decide).
func TestManyReady(t *testing.T) {
	const clients = 3*maxEvents + 7
	bc := udpHost(t, func(bc *net.UDPConn) {
		type req struct {
			from netip.AddrPort
			p    []byte
		}
		var got []req
		buf := make([]byte, 256)
		for len(got) < clients {
			n, from, err := bc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			got = append(got, req{from, append([]byte(nil), buf[:n]...)})
		}
		for _, r := range got {
			bc.WriteToUDPAddrPort(r.p, r.from)
		}
	})

	r := start(t, &Settings{Upstream: upstream(t, hosts(bc.LocalAddr().String())), IdleTimeout: time.Minute})
	cs := make([]*net.UDPConn, clients)
	for i := range cs {
		cs[i] = client(t, r.addr)
		if _, err := cs[i].Write([]byte(fmt.Sprint("client ", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cs {
		if got, want := recv(t, c, scaled(5*time.Second)), fmt.Sprint("client ", i); got != want {
			t.Fatalf("client %d of %d: reply %q; want %q; stats %+v", i, clients, got, want, r.l.Stats())
		}
	}
	if st := r.l.Stats(); st.SessionsActive != clients {
		t.Errorf("stats %+v; want %d active sessions", st, clients)
	}
}

// TestChattyHost: a host that answers one datagram with many more replies
// than the owner reads from one session at a time (replyBudget) has every
// one relayed, in order, and a second client's round trips through the
// same listener are answered meanwhile.
func TestChattyHost(t *testing.T) {
	const replies = 8 * replyBudget
	flood := func(p []byte) [][]byte {
		if string(p) != "flood" {
			return [][]byte{p}
		}
		out := make([][]byte, replies)
		for i := range out {
			out[i] = fmt.Appendf(nil, "reply %04d", i)
		}
		return out
	}
	bc := udpHost(t, func(bc *net.UDPConn) {
		buf := make([]byte, 256)
		for {
			n, from, err := bc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			for _, p := range flood(buf[:n]) {
				bc.WriteToUDPAddrPort(p, from)
			}
		}
	})

	r := start(t, &Settings{Upstream: upstream(t, hosts(bc.LocalAddr().String())), IdleTimeout: time.Minute})
	a, b := client(t, r.addr), client(t, r.addr)
	_ = a.SetReadBuffer(8 << 20)
	// a reads as the replies come (a client that waited would lose them
	// to its own receive buffer, not to l4lb).
	done := make(chan string, 1)
	go func() {
		buf := make([]byte, 256)
		for i := range replies {
			a.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
			n, err := a.Read(buf)
			if want := fmt.Sprintf("reply %04d", i); err != nil || string(buf[:n]) != want {
				done <- fmt.Sprintf("reply %d of %d is %q (%v); want %q", i, replies, buf[:n], err, want)
				return
			}
		}
		done <- ""
	}()
	if _, err := a.Write([]byte("flood")); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		p := fmt.Sprint("b ", i)
		if got := roundTrip(t, b, p, scaled(5*time.Second)); got != p {
			t.Fatalf("client b, round trip %d during the flood: %q", i, got)
		}
	}
	if msg := <-done; msg != "" {
		t.Fatalf("client a: %s; stats %+v", msg, r.l.Stats())
	}
}

// udpHost is a host socket on 127.0.0.1 served by serve in a goroutine of
// its own, for hosts whose replies newBackend's one-for-one cannot shape.
// The socket is closed, and serve awaited, at cleanup.
func udpHost(t *testing.T, serve func(c *net.UDPConn)) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	var done sync.WaitGroup
	done.Add(1)
	go func() {
		defer done.Done()
		serve(c)
	}()
	t.Cleanup(func() { c.Close(); done.Wait() })
	return c
}
