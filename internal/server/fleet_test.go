package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
)

// fleetConf is one instance of a fleet: store = "consul" with the agent at
// %s, its own state_dir (%s), an upstream "u" with the hash method and
// three hosts, the first of them (%s) a real echo backend.
const fleetConf = `
[control]
state_dir = %q
store = "consul"
kv_prefix = "l4lb/test/"

[consul]
address = %q
wait = "5s"
backoff_min = "50ms"
backoff_max = "200ms"
startup_timeout = "500ms"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "500ms"
drain_timeout = "1s"

[upstream.u]
method = "hash"
tries = 1
max_fails = 0

[[upstream.u.pool]]
name = "p"
hosts = [
  { address = %q, id = "a" },
  { address = "127.0.0.2:7", id = "b" },
  { address = "127.0.0.3:7", id = "c" },
]
`

const fleetKey = "l4lb/test/edits"

// fleetMember is one running instance.
type fleetMember struct {
	s     *Server
	dir   string
	front string // its listener
	stop  func()
}

func startMember(t *testing.T, consul, backend, dir string) *fleetMember {
	t.Helper()
	path := filepath.Join(dir, "l4lb.toml")
	s := newServer(t, path, fmt.Sprintf(fleetConf, filepath.Join(dir, "state"), consul, backend))
	front, stop := runServer(t, s)
	return &fleetMember{s: s, dir: dir, front: front, stop: stop}
}

func startFleet(t *testing.T, consul []string, backend string) []*fleetMember {
	t.Helper()
	var out []*fleetMember
	for _, c := range consul {
		out = append(out, startMember(t, c, backend, t.TempDir()))
	}
	return out
}

func hasHost(s *Server, id string) bool { _, ok := hostsOf(s, "u")["p/"+id]; return ok }

// waitFor polls cond every millisecond and returns how long it took.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// TestFleetPropagation: an edit through any instance (the API, or the
// control socket) is in force on the others within one blocking round
// trip; the store status says in sync everywhere.
func TestFleetPropagation(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	be, err := testbackend.Start(testbackend.Echo)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	fl := startFleet(t, []string{agent.Addr(), agent.Addr(), agent.Addr()}, be.Addr())

	// Every figure is taken from just before the edit call: the call
	// itself (read, check-and-set, read back) is part of what an operator
	// waits for.
	var lat, editLat []time.Duration
	for i, m := range fl {
		id := fmt.Sprintf("x%d", i)
		t0 := time.Now()
		if err := m.s.AddHost("u", "p", control.HostSpec{ID: id, Address: fmt.Sprintf("127.0.1.%d:7", i+1), Weight: 1}); err != nil {
			t.Fatalf("edit on %d: %v", i, err)
		}
		editLat = append(editLat, time.Since(t0))
		if !hasHost(m.s, id) {
			t.Fatalf("instance %d: its own edit is not in force when the call returns", i)
		}
		for j, o := range fl {
			if j != i {
				waitFor(t, 10*time.Second, fmt.Sprintf("host %s on instance %d", id, j), func() bool { return hasHost(o.s, id) })
				lat = append(lat, time.Since(t0))
			}
		}
	}
	// Manual states are shared: down on instance 2, seen on 0 and 1.
	t0 := time.Now()
	if err := fl[2].s.HostAction("u", "p", "b", control.ActionDown); err != nil {
		t.Fatal(err)
	}
	for j := range 2 {
		waitFor(t, 10*time.Second, "b manual_down", func() bool { return hostsOf(fl[j].s, "u")["p/b"].State == pool.StateManualDown })
		lat = append(lat, time.Since(t0))
	}

	// Through a real control socket (curl if there is one; its start is
	// in the figure).
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	stopCtl := serveControl(t, fl[1].s, sock)
	defer stopCtl()
	t0 = time.Now()
	code, body := ctlPost(t, sock, "/v1/upstreams/u/pools/p/hosts", `{"id":"sock","address":"127.0.2.1:7"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST over the socket: %d %s", code, body)
	}
	var sockLat []time.Duration
	for _, j := range []int{0, 2} {
		waitFor(t, 10*time.Second, "host sock", func() bool { return hasHost(fl[j].s, "sock") })
		sockLat = append(sockLat, time.Since(t0))
	}
	lat = append(lat, sockLat...)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("edit calls (read, check-and-set, read back): %v", editLat)
	t.Logf("over the control socket: seen on the other two %v after the request started", sockLat)
	t.Logf("edit seen on the other instances, from before the call: %d samples, min %s, median %s, max %s (blocking wait 5s: one round trip)",
		len(lat), lat[0], lat[len(lat)/2], lat[len(lat)-1])
	// Woken by the blocking query, not by its 5s wait running out: a
	// watcher that polled would show up as ~5s here. Half the wait tells
	// the two apart on a loaded machine (the figure includes the edit call).
	if lat[len(lat)-1] > 2500*time.Millisecond {
		t.Errorf("slowest propagation %s: not one blocking round trip (wait 5s)", lat[len(lat)-1])
	}

	idx := fl[0].s.StoreStatus().Index
	for i, m := range fl {
		waitFor(t, 10*time.Second, "in sync", func() bool { st := m.s.StoreStatus(); return st.InSync && st.Index == idx })
		st := m.s.StoreStatus()
		if st.Kind != "consul" || st.Key != fleetKey || st.Source != "consul" || st.Edits != 5 {
			t.Errorf("instance %d store status: %+v", i, st)
		}
		// The last-known-good copy is the stored journal (written just
		// after the status changes).
		waitFor(t, 10*time.Second, fmt.Sprintf("instance %d last-known-good copy", i), func() bool {
			jf, err := loadJournal(filepath.Join(m.dir, "state", "edits.json"))
			return err == nil && jf != nil && len(jf.Ops) == 5 && jf.Store != nil && jf.Store.Index == idx
		})
	}
	// Reset through one empties the journal of all.
	if err := fl[0].s.Reset(); err != nil {
		t.Fatal(err)
	}
	for j := range fl {
		waitFor(t, 10*time.Second, "reset", func() bool { return !hasHost(fl[j].s, "x0") && !hasHost(fl[j].s, "sock") })
	}
}

// TestFleetConflict: two instances add the same host id at once, both
// built on the same index (the agent holds the writes until both are
// there): exactly one wins, the other gets 409 and changes nothing; the
// loser converges to the winner's journal. Then a conflict on unrelated
// edits: the same, a retry succeeds.
func TestFleetConflict(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	fl := startFleet(t, []string{agent.Addr(), agent.Addr(), agent.Addr()}, "127.0.0.1:7")

	for round, ids := range [][2]string{{"same", "same"}, {"d1", "d2"}} {
		agent.HoldPuts(2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = fl[i].s.AddHost("u", "p", control.HostSpec{ID: ids[i], Address: fmt.Sprintf("127.0.3.%d:7", i+1)})
			}()
		}
		wg.Wait()
		won, lost := -1, -1
		for i, err := range errs {
			switch {
			case err == nil:
				won = i
			case errors.Is(err, control.ErrConflict) && strings.Contains(err.Error(), "edited concurrently by another instance"):
				lost = i
			default:
				t.Fatalf("round %d instance %d: %v", round, i, err)
			}
		}
		if won < 0 || lost < 0 {
			t.Fatalf("round %d: want one winner and one 409, got %v", round, errs)
		}
		t.Logf("round %d (%s, %s): instance %d won, instance %d got 409: %v", round, ids[0], ids[1], won, lost, errs[lost])
		// The shared part: ids, addresses, weights (health is each
		// instance's own, so states may differ for a moment).
		shared := func(s *Server) string {
			var out []string
			for k, h := range hostsOf(s, "u") {
				out = append(out, fmt.Sprintf("%s=%s/%d", k, h.Address, h.Weight))
			}
			sort.Strings(out)
			return strings.Join(out, " ")
		}
		want := shared(fl[won].s)
		for j := range fl {
			deadline := time.Now().Add(10 * time.Second)
			for shared(fl[j].s) != want {
				if time.Now().After(deadline) {
					t.Fatalf("round %d: instance %d did not converge:\nwant %s (instance %d, %+v)\nhave %s (%+v)",
						round, j, want, won, fl[won].s.StoreStatus(), shared(fl[j].s), fl[j].s.StoreStatus())
				}
				time.Sleep(time.Millisecond)
			}
		}
		if round == 1 {
			// The loser retries and wins now.
			if err := fl[lost].s.AddHost("u", "p", control.HostSpec{ID: ids[lost], Address: "127.0.3.9:7"}); err != nil {
				t.Fatalf("retry: %v", err)
			}
		}
	}
}

// TestFleetPartition: one instance loses Consul (its connections cut, new
// ones reset): it keeps serving traffic with what it has, refuses edits
// with 503, says it is not in sync; the others edit on. When Consul is
// back it converges. A restart while cut off serves the last-known-good
// copy and refuses edits until Consul answers.
func TestFleetPartition(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	be, err := testbackend.Start(testbackend.Echo)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	cut := startCutter(t, agent.Addr())
	fl := startFleet(t, []string{agent.Addr(), agent.Addr(), cut.Addr()}, be.Addr())
	// Hash: make every client land on the echo host "a" for the traffic check.
	for _, id := range []string{"b", "c"} {
		if err := fl[0].s.HostAction("u", "p", id, control.ActionDown); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "b, c down on instance 2", func() bool {
		return hostsOf(fl[2].s, "u")["p/c"].State == pool.StateManualDown
	})

	cut.Cut()
	waitFor(t, 10*time.Second, "instance 2 out of sync", func() bool { return !fl[2].s.StoreStatus().InSync })
	err = fl[2].s.AddHost("u", "p", control.HostSpec{ID: "lost", Address: "127.0.4.1:7"})
	if !errors.Is(err, control.ErrUnavailable) || !strings.Contains(err.Error(), "cannot be reached") {
		t.Fatalf("edit while cut off: %v", err)
	}
	if hasHost(fl[2].s, "lost") {
		t.Fatal("a refused edit changed the pool")
	}
	t.Logf("edit while cut off: %v", err)
	t.Logf("status while cut off: %+v", fl[2].s.StoreStatus())
	for range 20 {
		if err := echoLine(fl[2].front); err != nil {
			t.Fatalf("traffic through the cut-off instance: %v", err)
		}
	}
	// The fleet edits on.
	if err := fl[0].s.AddHost("u", "p", control.HostSpec{ID: "new", Address: "127.0.4.2:7"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "new on instance 1", func() bool { return hasHost(fl[1].s, "new") })
	time.Sleep(300 * time.Millisecond)
	if hasHost(fl[2].s, "new") {
		t.Fatal("the cut-off instance saw an edit")
	}

	// Restart while cut off: the last-known-good copy (b, c down), edits
	// refused.
	fl[2].stop()
	m := startMember(t, cut.Addr(), be.Addr(), fl[2].dir)
	if st := m.s.StoreStatus(); st.Source != "last_known_good" || st.InSync || st.Edits != 2 {
		t.Errorf("restarted while cut off: %+v", st)
	}
	if hostsOf(m.s, "u")["p/b"].State != pool.StateManualDown {
		t.Error("the last-known-good copy is not in force")
	}
	if err := m.s.HostAction("u", "p", "a", control.ActionDrain); !errors.Is(err, control.ErrUnavailable) || !strings.Contains(err.Error(), "cannot be reached") {
		t.Fatalf("edit before consul answered: %v", err)
	}
	if err := echoLine(m.front); err != nil {
		t.Fatalf("traffic after the restart: %v", err)
	}

	cut.Heal()
	d := waitFor(t, 10*time.Second, "convergence after the partition", func() bool { return hasHost(m.s, "new") })
	waitFor(t, 10*time.Second, "in sync", func() bool { return m.s.StoreStatus().InSync })
	t.Logf("converged %s after the partition healed (backoff_max 200ms); status %+v", d, m.s.StoreStatus())
	if err := m.s.AddHost("u", "p", control.HostSpec{ID: "after", Address: "127.0.4.3:7"}); err != nil {
		t.Fatalf("edit after healing: %v", err)
	}
	waitFor(t, 10*time.Second, "after on instance 0", func() bool { return hasHost(fl[0].s, "after") })
}

// TestFleetHashSame: with the hash method, 1000 clients map to the same
// host on every instance, after edits made through different instances.
func TestFleetHashSame(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	fl := startFleet(t, []string{agent.Addr(), agent.Addr(), agent.Addr()}, "127.0.0.1:7")
	edits := []func() error{
		func() error {
			return fl[0].s.AddHost("u", "p", control.HostSpec{ID: "d", Address: "127.0.5.1:7", Weight: 1})
		},
		func() error { return fl[1].s.PatchHost("u", "p", "a", control.HostPatch{Weight: ptr(3)}) },
		func() error { return fl[2].s.HostAction("u", "p", "c", control.ActionDown) },
	}
	for _, e := range edits {
		if err := e(); err != nil {
			t.Fatal(err)
		}
	}
	// The last edit's instance read its index back: the others catch up to it.
	idx := fl[2].s.StoreStatus().Index
	for _, m := range fl {
		waitFor(t, 10*time.Second, "in sync", func() bool { st := m.s.StoreStatus(); return st.InSync && st.Index == idx })
	}
	counts := map[string]int{}
	for i := range 1000 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), uint16(40000+i))
		key := pool.HashKey(src, false)
		var first string
		for j, m := range fl {
			_, h := m.s.LiveUpstream("u").Pick(key, nil)
			if h == nil {
				t.Fatalf("client %s: no host on instance %d", src, j)
			}
			if j == 0 {
				first = h.ID
				counts[first]++
			} else if h.ID != first {
				t.Fatalf("client %s: instance 0 picks %s, instance %d picks %s", src, first, j, h.ID)
			}
		}
	}
	t.Logf("1000 clients, same host on all three instances; spread %v", counts)
	if counts["c"] != 0 {
		t.Errorf("the manual_down host got clients: %v", counts)
	}
}

// startCutter puts a relay that can cut an instance off between it and
// the agent at to, until the test ends.
func startCutter(t *testing.T, to string) *consultest.Relay {
	t.Helper()
	r, err := consultest.NewRelay(to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// serveControl serves s's control API on a Unix socket.
func serveControl(t *testing.T, s *Server, sock string) func() {
	cs := control.New(control.ServerConfig{Socket: sock}, s, logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cs.Run(ctx) }()
	select {
	case <-cs.Ready():
	case err := <-done:
		t.Fatal(err)
	}
	return func() { cancel(); <-done }
}

// ctlPost POSTs body to path over the socket: with curl if there is one.
func ctlPost(t *testing.T, sock, path, body string) (int, string) {
	t.Helper()
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-s", "--unix-socket", sock, "-o", "-", "-w", "\n%{http_code}",
			"-X", "POST", "-H", "Content-Type: application/json", "-d", body, "http://l4lb"+path).Output()
		if err != nil {
			t.Fatalf("curl: %v", err)
		}
		s := strings.TrimSpace(string(out))
		i := strings.LastIndexByte(s, '\n')
		var code int
		fmt.Sscan(s[i+1:], &code)
		t.Logf("curl --unix-socket %s -X POST %s: %d", sock, path, code)
		return code, s[:max(i, 0)]
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("http://l4lb"+path, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFleetRealAgent runs propagation and a forced-order conflict against
// a real dev agent when a consul binary is on PATH.
func TestFleetRealAgent(t *testing.T) {
	bin, err := exec.LookPath("consul")
	if err != nil {
		t.Skip("no consul binary on PATH: the real-agent fleet scenario is skipped (the stand-in covers it)")
	}
	addr := consultest.StartDev(t, bin)
	fl := startFleet(t, []string{addr, addr, addr}, "127.0.0.1:7")
	for _, m := range fl {
		waitFor(t, 5*time.Second, "first read", func() bool { return m.s.StoreStatus().InSync })
	}
	var lat []time.Duration
	for i, m := range fl {
		id := fmt.Sprintf("r%d", i)
		start := time.Now() // before the call, as in TestFleetPropagation
		if err := m.s.AddHost("u", "p", control.HostSpec{ID: id, Address: fmt.Sprintf("127.0.6.%d:7", i+1), Weight: 1}); err != nil {
			t.Fatalf("edit on %d: %v", i, err)
		}
		for j, o := range fl {
			if j != i {
				waitFor(t, 5*time.Second, "propagation", func() bool { return hasHost(o.s, id) })
				lat = append(lat, time.Since(start))
			}
		}
	}
	t.Logf("real agent: edit seen on the other instances %v after the call started", lat)
	// A stale index is refused by the real agent too.
	if err := fl[0].s.fleet.Commit(context.Background(), encodeJournal(nil), fl[0].s.StoreStatus().Index-1); err == nil {
		t.Fatal("check-and-set with a stale index succeeded")
	}
}
