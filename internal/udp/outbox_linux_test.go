package udp

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/uring"
)

// TestOutboxCarriesTheRelay: with io_uring, every datagram relayed either
// way goes through the listener's outbox, and every reply reaches the
// client that asked, intact, while many clients are in flight at once.
// With L4LB_IO_URING=0 nothing does, and the relay is the same.
func TestOutboxCarriesTheRelay(t *testing.T) {
	ring := os.Getenv("L4LB_IO_URING") != "0"
	if ring && uring.Available() != nil {
		t.Skipf("io_uring unavailable here: %v", uring.Available())
	}
	a := newBackend(t, "127.0.0.1:0", 0, tagger("a"))
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute})
	const clients, rounds = 20, 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c := client(t, r.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for j := range rounds {
				p := fmt.Sprintf("%d.%d.%s", i, j, make([]byte, j*20))
				c.SetDeadline(time.Now().Add(scaled(2 * time.Second)))
				if _, err := c.Write([]byte(p)); err != nil {
					errs <- err
					return
				}
				n, err := c.Read(buf)
				if err != nil || string(buf[:n]) != "a|"+p {
					errs <- fmt.Errorf("client %d round %d: got %d bytes, %v", i, j, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sent := r.l.ringSent.Load()
	if !ring {
		if sent != 0 {
			t.Fatalf("%d sends on io_uring with L4LB_IO_URING=0", sent)
		}
		return
	}
	if want := uint64(2 * clients * rounds); sent < want {
		t.Fatalf("%d sends through the outbox for %d round trips, want at least %d", sent, clients*rounds, want)
	}
	// A reply is counted when its completion is read, just after the
	// client may have had it.
	eventually(t, 2*time.Second, "every datagram counted", func() bool {
		st := r.l.Stats()
		return st.DatagramsUp == clients*rounds && st.DatagramsDown == clients*rounds
	})
}

// TestRefusedMovesTheBurst: a client's datagrams that reach the listener
// together, behind one that its host refused, all follow that one to the
// next host. The first goes to the dead host and is lost (its ICMP answer
// is what the second send meets), as a datagram is to any host that died.
// The burst is queued before the listener runs, so it is read in one batch:
// the outbox would otherwise have queued it all to the refused socket.
func TestRefusedMovesTheBurst(t *testing.T) {
	dead := refused(t)
	live := newBackend(t, "127.0.0.1:0", 0, tagger("live"))
	u := upstream(t, hosts(dead), hosts(live.addr()))
	l, err := Listen("test", "127.0.0.1:0", &Settings{Upstream: u, IdleTimeout: time.Minute}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c := client(t, l.Addr().String())
	const burst = 10
	for i := range burst {
		if _, err := c.Write([]byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	r := run(t, l)
	got := map[string]bool{}
	for range burst - 1 {
		p := recv(t, c, scaled(2*time.Second))
		if p == "" {
			break
		}
		got[p] = true
	}
	for i := 1; i < burst; i++ {
		if !got[fmt.Sprintf("live|%d", i)] {
			t.Errorf("no reply to datagram %d from the live host; replies %v", i, got)
		}
	}
	// All ten left l4lb: the first to the dead host.
	if st := r.l.Stats(); st.HostErrors != 1 || st.DatagramsUp != burst {
		t.Errorf("host errors %d, datagrams up %d; want 1, %d", st.HostErrors, st.DatagramsUp, burst)
	}
}
