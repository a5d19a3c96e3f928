package udp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/pool"
)

// clientFrom is client with the local address bound to ip (any 127/8
// address is local on Linux), port 0 or the given one.
func clientFrom(t testing.TB, local netip.AddrPort, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// hostOf sends p from c and returns the tag of the host that answered
// (the backends are taggers), retrying a lost datagram.
func hostOf(t testing.TB, c *net.UDPConn, p string) string {
	t.Helper()
	for range 5 {
		if got := roundTrip(t, c, p, scaled(time.Second)); got != "" {
			tag, payload, ok := strings.Cut(got, "|")
			if !ok || payload != p {
				t.Fatalf("reply %q to %q", got, p)
			}
			return tag
		}
	}
	t.Fatalf("no reply to %q after 5 tries", p)
	return ""
}

// TestHashSticky: with method = "hash", a client IP keeps its host across
// sessions, whatever its source port (hash_key = "source_ip"), and client
// IPs spread over the hosts. With hash_key = "source_ip_port" the port
// counts: one address and port keeps its host across sessions, and the
// ports of one IP spread. Every datagram opens a session of its own
// (responses = 1), so stickiness comes from the hash, not the table.
func TestHashSticky(t *testing.T) {
	var specs []hostSpec
	for _, tag := range []string{"a", "b", "c", "d"} {
		specs = append(specs, hostSpec{newBackend(t, "127.0.0.1:0", 0, tagger(tag)).addr(), 1})
	}

	t.Run("source_ip", func(t *testing.T) {
		r := start(t, &Settings{Upstream: upstreamOf(t, pool.MethodHash, specs), IdleTimeout: time.Minute, Responses: 1})
		const ips, ports, rounds = 16, 4, 2
		used := map[string]bool{}
		for i := range ips {
			ip := netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)})
			want := ""
			for p := range ports {
				c := clientFrom(t, netip.AddrPortFrom(ip, 0), r.addr)
				for k := range rounds {
					got := hostOf(t, c, fmt.Sprintf("%s port %d round %d", ip, p, k))
					if want == "" {
						want = got
					} else if got != want {
						t.Errorf("%s: port %d round %d went to %s; its first session went to %s", c.LocalAddr(), p, k, got, want)
					}
				}
			}
			used[want] = true
		}
		if len(used) < 2 {
			t.Errorf("%d client IPs all went to %v: the key does not spread", ips, used)
		}
		if st := r.l.Stats(); st.SessionsCreated != ips*ports*rounds {
			t.Errorf("created %d sessions; want %d (one per datagram)", st.SessionsCreated, ips*ports*rounds)
		}
	})

	t.Run("source_ip_port", func(t *testing.T) {
		r := start(t, &Settings{Upstream: upstreamOf(t, pool.MethodHash, specs), IdleTimeout: time.Minute, Responses: 1, HashSourcePort: true})
		const ports, rounds = 16, 3
		used := map[string]bool{}
		for p := range ports {
			c := clientFrom(t, netip.MustParseAddrPort("127.0.0.1:0"), r.addr)
			want := ""
			for k := range rounds {
				got := hostOf(t, c, fmt.Sprintf("port %d round %d", p, k))
				if want == "" {
					want = got
				} else if got != want {
					t.Errorf("%s: round %d went to %s; its first session went to %s", c.LocalAddr(), k, got, want)
				}
			}
			used[want] = true
		}
		if len(used) < 2 {
			t.Errorf("%d ports of one IP all went to %v: the port is not in the key", ports, used)
		}
	})
}

// DNS-shaped traffic: a query is a 12-byte header (ID, flags, counts) and
// one question; an answer echoes the ID and the question and adds one A
// record. The backend answers every query with its own fixed address.

var dnsQuestion = []byte{
	7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, // example.com
	0, 1, 0, 1, // type A, class IN
}

func dnsQuery(id uint16) []byte {
	q := make([]byte, 12, 12+len(dnsQuestion))
	binary.BigEndian.PutUint16(q[0:], id)
	binary.BigEndian.PutUint16(q[2:], 0x0100) // standard query, recursion desired
	binary.BigEndian.PutUint16(q[4:], 1)      // one question
	return append(q, dnsQuestion...)
}

// dnsServer answers with the query's ID and question and the A record a;
// it drops anything that is not a one-question query.
func dnsServer(a netip.Addr) func([]byte) []byte {
	return func(q []byte) []byte {
		if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:]) != 1 {
			return nil
		}
		r := make([]byte, 0, len(q)+16)
		r = append(r, q[0], q[1], 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0) // response, 1 question, 1 answer
		r = append(r, q[12:]...)
		r = append(r, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4) // name at offset 12, A, IN, TTL 60, 4 bytes
		ip := a.As4()
		return append(r, ip[:]...)
	}
}

// dnsAnswer checks r as the answer to the query with id and returns the
// address it gives.
func dnsAnswer(r []byte, id uint16) (netip.Addr, error) {
	n := 12 + len(dnsQuestion)
	switch {
	case len(r) != n+16:
		return netip.Addr{}, fmt.Errorf("%d bytes", len(r))
	case binary.BigEndian.Uint16(r) != id:
		return netip.Addr{}, fmt.Errorf("id %#04x, want %#04x", binary.BigEndian.Uint16(r), id)
	case r[2]&0x80 == 0 || binary.BigEndian.Uint16(r[6:]) != 1:
		return netip.Addr{}, errors.New("not an answer with one record")
	case string(r[12:n]) != string(dnsQuestion):
		return netip.Addr{}, errors.New("question not echoed")
	}
	return netip.AddrFrom4([4]byte(r[n+12:])), nil
}

// TestDNS: 1200 client ports each ask twice through two DNS-shaped hosts
// with responses = 1: every answer carries its own query's ID and comes
// back to the port that asked, and every query is a session that ends
// with its answer.
func TestDNS(t *testing.T) {
	ans := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}
	a := newBackend(t, "127.0.0.1:0", 0, dnsServer(ans[0]))
	b := newBackend(t, "127.0.0.1:0", 0, dnsServer(ans[1]))
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr(), b.addr())), IdleTimeout: time.Minute, Responses: 1})

	const clients, queries = 1200, 2
	var wg sync.WaitGroup
	var misrouted, lost atomic.Int64
	var byHost [2]atomic.Int64
	sem := make(chan struct{}, 100)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := client(t, r.addr)
			buf := make([]byte, 512)
			for k := range queries {
				id := uint16(i*queries + k) // unique across the test: a reply to another client cannot pass
				got := false
				for try := 0; try < 5 && !got; try++ {
					if _, err := c.Write(dnsQuery(id)); err != nil {
						t.Errorf("write: %v", err)
						return
					}
					c.SetReadDeadline(time.Now().Add(scaled(time.Second)))
					n, err := c.Read(buf)
					if err != nil {
						continue // lost under load: ask again, as resolvers do
					}
					got = true
					addr, err := dnsAnswer(buf[:n], id)
					switch {
					case err != nil:
						misrouted.Add(1)
						t.Logf("client %d query %d: %v", i, k, err)
					case addr == ans[0]:
						byHost[0].Add(1)
					case addr == ans[1]:
						byHost[1].Add(1)
					default:
						misrouted.Add(1)
					}
				}
				if !got {
					lost.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := misrouted.Load(); n != 0 {
		t.Errorf("%d answers misrouted or malformed", n)
	}
	if n := lost.Load(); n != 0 {
		t.Errorf("%d queries got no answer after 5 tries", n)
	}
	if byHost[0].Load() == 0 || byHost[1].Load() == 0 {
		t.Errorf("answers by host %d, %d: want both hosts used", byHost[0].Load(), byHost[1].Load())
	}
	// A session counts as completed as its last reply leaves, before that
	// reply is counted in datagrams_down: wait for both.
	eventually(t, 5*time.Second, "every session completed by one answer", func() bool {
		st := r.l.Stats()
		return st.SessionsActive == 0 && st.SessionsCompleted == st.SessionsCreated && st.DatagramsDown == st.SessionsCompleted
	})
	if st := r.l.Stats(); st.SessionsCreated < clients*queries {
		t.Errorf("stats %+v: want >= %d sessions", st, clients*queries)
	}
	if n := len(r.l.Sessions()); n != 0 {
		t.Errorf("%d sessions left in the table", n)
	}
}
