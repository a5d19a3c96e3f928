package udp

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/uring"
	"github.com/l4lb/l4lb/pool"
)

// TestRouting: 1000 client ports each send their own payloads through two
// hosts; every reply comes back to the port that asked, with its payload,
// from the listener's address, and each client keeps one host.
func TestRouting(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, tagger("a"))
	b := newBackend(t, "127.0.0.1:0", 0, tagger("b"))
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr(), b.addr())), IdleTimeout: time.Minute})

	const clients, rounds = 1000, 3
	var wg sync.WaitGroup
	var misrouted, lost, moved atomic.Int64
	sem := make(chan struct{}, 100)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c := client(t, r.addr)
			var host string
			for k := range rounds {
				p := fmt.Sprintf("client %d round %d %s", i, k, c.LocalAddr())
				got := ""
				// UDP may drop under load: a client retries, as clients do.
				for try := 0; try < 5 && got == ""; try++ {
					got = roundTrip(t, c, p, scaled(time.Second))
				}
				tag, payload, ok := strings.Cut(got, "|")
				switch {
				case got == "":
					lost.Add(1)
				case !ok || payload != p:
					misrouted.Add(1)
				case host == "":
					host = tag
				case host != tag:
					moved.Add(1)
				}
			}
		}(i)
	}
	wg.Wait()
	if n := misrouted.Load(); n != 0 {
		t.Errorf("%d replies misrouted", n)
	}
	if n := lost.Load(); n != 0 {
		t.Errorf("%d requests got no reply after 5 tries", n)
	}
	if n := moved.Load(); n != 0 {
		t.Errorf("%d clients changed host within their session", n)
	}
	st := r.l.Stats()
	if st.SessionsCreated != clients || st.SessionsActive != clients {
		t.Errorf("sessions created %d, active %d; want %d each", st.SessionsCreated, st.SessionsActive, clients)
	}
	if got := len(r.l.Sessions()); got != clients {
		t.Errorf("Sessions() lists %d; want %d", got, clients)
	}
}

// TestWeights: sessions, not datagrams, are spread by weight.
func TestWeights(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, tagger("a"))
	b := newBackend(t, "127.0.0.1:0", 0, tagger("b"))
	u := upstream(t, []hostSpec{{a.addr(), 3}, {b.addr(), 1}})
	r := start(t, &Settings{Upstream: u, IdleTimeout: time.Minute})
	count := map[string]int{}
	for i := range 400 {
		c := client(t, r.addr)
		for k := range 3 { // more datagrams in a session do not move it
			got := roundTrip(t, c, fmt.Sprint(i, k), scaled(2*time.Second))
			if k == 0 {
				tag, _, _ := strings.Cut(got, "|")
				count[tag]++
			}
		}
	}
	// Smooth weighted round robin is exact over whole cycles.
	if count["a"] != 300 || count["b"] != 100 {
		t.Errorf("sessions per host = %v; want a:300 b:100", count)
	}
}

// TestSessions lists what GET /v1/sessions will show.
func TestSessions(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute})
	c := client(t, r.addr)
	for range 3 {
		if got := roundTrip(t, c, "12345", scaled(2*time.Second)); got != "12345" {
			t.Fatalf("reply %q", got)
		}
	}
	var ss []SessionInfo
	eventually(t, 2*time.Second, "reply counters", func() bool {
		ss = r.l.Sessions()
		return len(ss) == 1 && ss[0].DatagramsDown == 3
	})
	s := ss[0]
	want := SessionInfo{Listener: "test", Client: c.LocalAddr().String(), Upstream: "u", Pool: "p0", Host: a.addr(),
		DatagramsUp: 3, DatagramsDown: 3, BytesUp: 15, BytesDown: 15}
	s.Since, s.Age, s.Idle = time.Time{}, 0, 0
	if s != want {
		t.Errorf("session = %+v\nwant      %+v", s, want)
	}
	st := r.l.Stats()
	if st.DatagramsUp != 3 || st.DatagramsDown != 3 || st.BytesUp != 15 || st.BytesDown != 15 {
		t.Errorf("stats = %+v", st)
	}
}

// TestExpiry: after idle_timeout + 10% the table is empty, every session
// socket is closed, and the hosts' active counts are back to 0.
func TestExpiry(t *testing.T) {
	idle := scaled(400 * time.Millisecond)
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	u := upstream(t, hosts(a.addr()))
	before := fdCount(t)
	r := start(t, &Settings{Upstream: u, IdleTimeout: idle})
	var cs []*net.UDPConn
	for range 200 {
		cs = append(cs, client(t, r.addr))
	}
	for i, c := range cs {
		if got := roundTrip(t, c, fmt.Sprint(i), scaled(2*time.Second)); got != fmt.Sprint(i) {
			t.Fatalf("reply %q", got)
		}
	}
	last := time.Now()
	if n := r.l.Stats().SessionsActive; n != 200 {
		t.Fatalf("active = %d; want 200", n)
	}
	time.Sleep(time.Until(last.Add(idle + idle/10)))
	if n := len(r.l.Sessions()); n != 0 {
		t.Errorf("after idle_timeout+10%%: %d sessions in the table", n)
	}
	st := r.l.Stats()
	if st.SessionsActive != 0 || st.SessionsExpired != 200 {
		t.Errorf("active %d, expired %d; want 0, 200", st.SessionsActive, st.SessionsExpired)
	}
	h := u.Pools()[0].Hosts[0].Stats()
	if h.Active != 0 || h.Total != 200 {
		t.Errorf("host active %d total %d; want 0, 200", h.Active, h.Total)
	}
	for _, c := range cs {
		c.Close()
	}
	// The listener still runs: its socket, its epoll fd and its io_uring
	// (when it has one) over the baseline.
	own := 2
	if uring.Available() == nil {
		own = 3
	}
	if got := fdCount(t); got != before+own {
		t.Errorf("fds: %d after expiry; want baseline %d + the listener's %d", got, before, own)
	}
}

// TestResponses: with responses = 1 a session ends after one reply, and
// the next query opens a new one.
func TestResponses(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute, Responses: 1})
	c := client(t, r.addr)
	for i := range 3 {
		if got := roundTrip(t, c, "q", scaled(2*time.Second)); got != "q" {
			t.Fatalf("query %d: reply %q", i, got)
		}
		eventually(t, 2*time.Second, "session closed", func() bool { return r.l.Stats().SessionsActive == 0 })
	}
	if st := r.l.Stats(); st.SessionsCreated != 3 || st.SessionsCompleted != 3 {
		t.Errorf("created %d completed %d; want 3, 3", st.SessionsCreated, st.SessionsCompleted)
	}
	if n := len(r.l.Sessions()); n != 0 {
		t.Errorf("%d sessions left in the table", n)
	}
}

// TestResponsesWithinABatch: with responses = 3 and a host that answers
// every query with 5 datagrams at once, the client gets the first 3 in
// order, whether the owner reads them in one batch or several, and never
// the other 2.
func TestResponsesWithinABatch(t *testing.T) {
	host := newBackendN(t, "127.0.0.1:0", 0, func([]byte) [][]byte {
		return [][]byte{[]byte("r0"), []byte("r1"), []byte("r2"), []byte("r3"), []byte("r4")}
	})
	r := start(t, &Settings{Upstream: upstream(t, hosts(host.addr())), IdleTimeout: time.Minute, Responses: 3})
	c := client(t, r.addr)
	for q := range 2 {
		if _, err := c.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if got, want := recv(t, c, scaled(2*time.Second)), fmt.Sprintf("r%d", i); got != want {
				t.Fatalf("query %d, reply %d: %q; want %q", q, i, got, want)
			}
		}
		eventually(t, 2*time.Second, "session completed", func() bool { return r.l.Stats().SessionsCompleted == uint64(q+1) })
		// The session's socket is closed: replies 3 and 4 went with it.
		if got := recv(t, c, scaled(100*time.Millisecond)); got != "" {
			t.Fatalf("query %d: a fourth reply came through: %q", q, got)
		}
	}
}

// TestResponsesFreeTheSlot: with max_sessions = 1 and responses = 1, a
// client that got its reply leaves room for the next client at once. A
// session counts its end before it sends the last reply and hands itself
// back to the table's owner after, so the next client's query can come in
// between; it used to be dropped as "table full".
func TestResponsesFreeTheSlot(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute, Responses: 1, MaxSessions: 1})
	for i := range 300 {
		c := client(t, r.addr)
		if got := roundTrip(t, c, "q", scaled(2*time.Second)); got != "q" {
			t.Fatalf("client %d: reply %q; stats %+v", i, got, r.l.Stats())
		}
		eventually(t, 2*time.Second, "session counted ended", func() bool { return r.l.Stats().SessionsActive == 0 })
		c.Close()
	}
	if st := r.l.Stats(); st.DroppedFull != 0 || st.SessionsCompleted != 300 {
		t.Errorf("dropped_full %d, completed %d; want 0, 300", st.DroppedFull, st.SessionsCompleted)
	}
}

// TestLateReply: a reply that comes after its session expired is dropped
// (the session socket is closed), and nothing panics.
func TestLateReply(t *testing.T) {
	idle := scaled(100 * time.Millisecond)
	a := newBackend(t, "127.0.0.1:0", 3*idle, echo)
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: idle})
	c := client(t, r.addr)
	if got := roundTrip(t, c, "late", 5*idle); got != "" {
		t.Errorf("got %q after the session expired; want nothing", got)
	}
	if st := r.l.Stats(); st.SessionsExpired != 1 || st.DatagramsDown != 0 {
		t.Errorf("expired %d, down %d; want 1, 0", st.SessionsExpired, st.DatagramsDown)
	}
}

// TestMaxSessions: with max_sessions = 1000, 1200 clients never grow the
// table past 1000, and the 200 left out are counted.
func TestMaxSessions(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute, MaxSessions: 1000})
	stop := make(chan struct{})
	var peak atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			peak.Store(max(peak.Load(), r.l.Stats().SessionsActive, int64(len(r.l.Sessions()))))
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var cs []*net.UDPConn
	for range 1200 {
		cs = append(cs, client(t, r.addr))
	}
	for i, c := range cs[:1000] {
		if got := roundTrip(t, c, "x", scaled(2*time.Second)); got != "x" {
			t.Fatalf("client %d: reply %q", i, got)
		}
	}
	for _, c := range cs[1000:] {
		c.Write([]byte("x"))
	}
	eventually(t, 2*time.Second, "drops counted", func() bool { return r.l.Stats().DroppedFull == 200 })
	if got := recv(t, cs[1100], 50*time.Millisecond); got != "" {
		t.Errorf("a client beyond max_sessions got %q", got)
	}
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > 1000 {
		t.Errorf("table grew to %d", p)
	}
	if st := r.l.Stats(); st.SessionsActive != 1000 || st.DroppedFull != 200 {
		t.Errorf("active %d dropped %d; want 1000, 200", st.SessionsActive, st.DroppedFull)
	}
}

// TestFailover: when a session's host goes down, the client's next
// datagram opens a session to a usable host; with no usable host at all
// the datagram is dropped and counted.
func TestFailover(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, tagger("a"))
	b := newBackend(t, "127.0.0.1:0", 0, tagger("b"))
	u := upstream(t, hosts(a.addr()), hosts(b.addr()))
	r := start(t, &Settings{Upstream: u, IdleTimeout: time.Minute})
	c := client(t, r.addr)
	if got := roundTrip(t, c, "1", scaled(2*time.Second)); got != "a|1" {
		t.Fatalf("got %q; want a|1", got)
	}
	ha, hb := u.Pools()[0].Hosts[0], u.Pools()[1].Hosts[0]
	ha.SetState(pool.StateDown, "test", false)
	if got := roundTrip(t, c, "2", scaled(2*time.Second)); got != "b|2" {
		t.Fatalf("after a went down: got %q; want b|2", got)
	}
	ha.SetState(pool.StateUp, "test", false)
	if got := roundTrip(t, c, "3", scaled(2*time.Second)); got != "b|3" {
		t.Errorf("a live session moved back when a came up: got %q; want b|3", got)
	}
	hb.SetState(pool.StateManualDown, "test", true)
	ha.SetState(pool.StateDown, "test", false)
	if got := roundTrip(t, c, "4", 100*time.Millisecond); got != "" {
		t.Errorf("no usable host: got %q", got)
	}
	st := r.l.Stats()
	if st.DroppedNoHost != 1 || st.SessionsFailed != 2 {
		t.Errorf("dropped_no_host %d, failed %d; want 1, 2", st.DroppedNoHost, st.SessionsFailed)
	}
	if ha.Stats().Active != 0 || hb.Stats().Active != 0 {
		t.Errorf("host active counts %d, %d; want 0", ha.Stats().Active, hb.Stats().Active)
	}
}

// TestDrainingKeepsSessions: a draining host takes no new session but
// keeps the ones it has, as TCP connections are kept.
func TestDrainingKeepsSessions(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, tagger("a"))
	b := newBackend(t, "127.0.0.1:0", 0, tagger("b"))
	u := upstream(t, hosts(a.addr(), b.addr()))
	r := start(t, &Settings{Upstream: u, IdleTimeout: time.Minute})
	c1, c2 := client(t, r.addr), client(t, r.addr)
	if got := roundTrip(t, c1, "1", scaled(2*time.Second)); got != "a|1" {
		t.Fatalf("got %q", got)
	}
	u.Pools()[0].Hosts[0].SetState(pool.StateDraining, "test", true)
	if got := roundTrip(t, c1, "2", scaled(2*time.Second)); got != "a|2" {
		t.Errorf("session on a draining host: got %q; want a|2", got)
	}
	if got := roundTrip(t, c2, "3", scaled(2*time.Second)); got != "b|3" {
		t.Errorf("new session: got %q; want b|3", got)
	}
}

// TestICMPRefused: a host that answers with ICMP port unreachable is
// reported through OnHostError and recorded on the host; the session ends
// and the client's next datagram is sent afresh.
func TestICMPRefused(t *testing.T) {
	dead := refused(t)
	type report struct{ host, reason string }
	reports := make(chan report, 10)
	u := upstream(t, hosts(dead))
	r := start(t, &Settings{Upstream: u, IdleTimeout: time.Minute, OnHostError: func(_ *pool.Pool, h *pool.Host, reason string) {
		reports <- report{h.ID, reason}
	}})
	c := client(t, r.addr)
	c.Write([]byte("ping"))
	select {
	case rep := <-reports:
		if rep.host != dead || rep.reason != "connection refused (ICMP port unreachable)" {
			t.Errorf("report %+v", rep)
		}
	case <-time.After(scaled(2 * time.Second)):
		t.Fatal("no host error reported")
	}
	h := u.Pools()[0].Hosts[0].Stats()
	if h.FailCount < 1 || h.LastFailReason != reasonRefused {
		t.Errorf("host fail count %d, reason %q", h.FailCount, h.LastFailReason)
	}
	eventually(t, 2*time.Second, "session ended", func() bool { return r.l.Stats().SessionsActive == 0 })
	c.Write([]byte("ping"))
	eventually(t, 2*time.Second, "second session", func() bool { return r.l.Stats().SessionsCreated >= 2 })
}

// TestWildcardReplySource: a listener on a wildcard address replies from
// the address each client sent to. 127.0.0.2 is local too, but the route to
// a 127.0.0.1 client would pick 127.0.0.1 as the source; a connected
// client socket drops a reply from anywhere but where it sent.
func TestWildcardReplySource(t *testing.T) {
	a := newBackend(t, "127.0.0.1:0", 0, echo)
	for _, listen := range []string{"0.0.0.0:0", "[::]:0"} {
		t.Run(listen, func(t *testing.T) {
			r := startAt(t, listen, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute})
			port := netip.MustParseAddrPort(r.addr).Port()
			for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
				c := client(t, netip.AddrPortFrom(netip.MustParseAddr(ip), port).String())
				if got := roundTrip(t, c, ip, scaled(2*time.Second)); got != ip {
					t.Errorf("to %s: got %q", ip, got)
				}
			}
		})
	}
}

// TestIPv6: a listener and a host on ::1.
func TestIPv6(t *testing.T) {
	if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
		t.Skip("no IPv6 loopback")
	} else {
		c.Close()
	}
	a := newBackend(t, "[::1]:0", 0, echo)
	r := startAt(t, "[::1]:0", &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute})
	c := client(t, r.addr)
	if got := roundTrip(t, c, "six", scaled(2*time.Second)); got != "six" {
		t.Errorf("got %q", got)
	}
}

// TestChurn: 10,000 sessions opened and ended (responses = 1) by 50
// concurrent clients, then a stop: goroutines and fds back to baseline
// (goleak checks the goroutines when the package's tests end).
func TestChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	before := fdCount(t)
	func() {
		a, err := startBackend("127.0.0.1:0", echo)
		if err != nil {
			t.Fatal(err)
		}
		defer a.close()
		r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Minute, Responses: 1})
		defer r.shutdown(t)
		const clients, each = 50, 200
		var wg sync.WaitGroup
		var lost atomic.Int64
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(r.addr)))
				if err != nil {
					lost.Add(each)
					return
				}
				defer c.Close()
				buf := make([]byte, 64)
				for k := range each {
					p := fmt.Sprint(i, "/", k)
					c.Write([]byte(p))
					c.SetReadDeadline(time.Now().Add(scaled(2 * time.Second)))
					n, err := c.Read(buf)
					if err != nil || string(buf[:n]) != p {
						lost.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if n := lost.Load(); n > 0 {
			t.Errorf("%d of %d requests lost or wrong", n, clients*each)
		}
		eventually(t, 5*time.Second, "all sessions ended", func() bool { return r.l.Stats().SessionsActive == 0 })
		if st := r.l.Stats(); st.SessionsCreated < clients*each {
			t.Errorf("created %d sessions; want >= %d", st.SessionsCreated, clients*each)
		}
	}()
	if got := fdCount(t); got > before+4 {
		t.Errorf("fds: %d after churn; baseline %d", got, before)
	}
}

// startBackend is newBackend without the cleanup, for tests that check
// fds before they end.
func startBackend(addr string, h func([]byte) []byte) (*backend, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		return nil, err
	}
	b := &backend{conn: c}
	b.wg.Add(1)
	go b.serve(0, oneReply(h))
	return b, nil
}

// TestShutdown: Run returns promptly with live sessions, having closed
// every session socket.
func TestShutdown(t *testing.T) {
	before := fdCount(t)
	a, err := startBackend("127.0.0.1:0", echo)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	r := start(t, &Settings{Upstream: upstream(t, hosts(a.addr())), IdleTimeout: time.Hour})
	var cs []*net.UDPConn // kept open: a closed client's port may be reused
	for i := range 100 {
		c := client(t, r.addr)
		roundTrip(t, c, fmt.Sprint(i), scaled(2*time.Second))
		cs = append(cs, c)
	}
	if n := r.l.Stats().SessionsActive; n != 100 {
		t.Fatalf("active %d", n)
	}
	r.shutdown(t)
	for _, c := range cs {
		c.Close()
	}
	if n := r.l.Stats().SessionsActive; n != 0 {
		t.Errorf("active %d after Run returned", n)
	}
	if r.l.Sessions() != nil {
		t.Errorf("Sessions() after stop is not nil")
	}
	if got := fdCount(t); got > before+1 { // the backend still runs
		t.Errorf("fds: %d after stop; baseline %d", got, before)
	}
}

func TestSweepEvery(t *testing.T) {
	for _, tc := range []struct{ idle, want time.Duration }{
		{30 * time.Second, time.Second},
		{2 * time.Second, 100 * time.Millisecond},
		{10 * time.Millisecond, 10 * time.Millisecond},
	} {
		if got := sweepEvery(tc.idle); got != tc.want {
			t.Errorf("sweepEvery(%s) = %s; want %s", tc.idle, got, tc.want)
		}
	}
}
