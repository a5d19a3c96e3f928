package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/l4lb/l4lb/internal/l4lbtest"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
)

// The fleet end to end: three real l4lb processes with [control] store =
// "consul" sharing one Consul (the stand-in, running in this test process,
// or a dev agent when a consul binary is on PATH), each with its own
// control socket and state_dir. The third reaches Consul through a relay
// that can cut it off.

// fleetProcConf: socket, state_dir, consul address; hosts a, b, c.
const fleetProcConf = `[log]
level = "info"
format = "json"

[control]
socket = %q
state_dir = %q
store = "consul"
kv_prefix = "l4lb/e2e/"

[consul]
address = %q
wait = "5s"
backoff_min = "50ms"
backoff_max = "200ms"
startup_timeout = "2s"

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
connect_timeout = "1s"
drain_timeout = "1s"

[upstream.u]
method = "hash"
tries = 1
max_fails = 0

[[upstream.u.pool]]
name = "p"
hosts = [
  { address = %q, id = "a" },
  { address = %q, id = "b" },
  { address = %q, id = "c" },
]
`

// member is one l4lb process of the fleet.
type member struct {
	n    int
	p    *l4lbtest.Proc
	sock string
	c    *control.Client
}

func (m *member) front() string { return m.p.Addrs["front"] }

// tagger starts a backend that greets with tag, until the test ends.
func tagger(t *testing.T, tag string) string {
	return testbackend.New(t, testbackend.Tagger(tag)).Addr()
}

// startFleetProcs runs one l4lb per Consul address, on the same hosts.
func startFleetProcs(t *testing.T, consul []string, hosts [3]string) []*member {
	t.Helper()
	var fl []*member
	for i, addr := range consul {
		dir := t.TempDir()
		sock := filepath.Join(dir, "control.sock")
		p := l4lbtest.Start(t, binPath, fmt.Sprintf(fleetProcConf, sock, filepath.Join(dir, "state"), addr, hosts[0], hosts[1], hosts[2]))
		c := control.NewClient(sock)
		t.Cleanup(c.Close)
		fl = append(fl, &member{n: i, p: p, sock: sock, c: c})
	}
	return fl
}

// hostOf finds host id in pool p of upstream u as instance m serves it.
func (m *member) hostOf(ctx context.Context, id string) (control.Host, bool, error) {
	u, err := m.c.Upstream(ctx, "u")
	if err != nil {
		return control.Host{}, false, err
	}
	for _, p := range u.Pools {
		for _, h := range p.Hosts {
			if p.Name == "p" && h.ID == id {
				return h, true, nil
			}
		}
	}
	return control.Host{}, false, nil
}

// watchFor polls m's control socket (GET /v1/upstreams/u, every
// millisecond) until host id is there and ok accepts it, and sends how
// long after t0 that was seen (or an error) on the channel it returns. It
// is started before the edit it waits for: an edit can show on the others
// before its own call has returned.
func (m *member) watchFor(t0 time.Time, within time.Duration, id string, ok func(control.Host) bool) <-chan seen {
	out := make(chan seen, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		for {
			h, found, err := m.hostOf(ctx, id)
			if err == nil && found && ok(h) {
				out <- seen{m.n, time.Since(t0), nil}
				return
			}
			if ctx.Err() != nil {
				out <- seen{m.n, 0, fmt.Errorf("instance %d: host %s not seen within %s (last: %+v, found %v, %v)", m.n, id, within, h, found, err)}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return out
}

type seen struct {
	n   int
	d   time.Duration
	err error
}

func anyHost(control.Host) bool { return true }

// ctlBin runs the real `l4lb ctl --socket SOCK ARGS...`.
func ctlBin(t *testing.T, sock string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(binPath, append([]string{"ctl", "--socket", sock}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("l4lb ctl: %v", err)
	}
	return code, out.String(), errb.String()
}

// storeLineOf is the "store:" line of `l4lb ctl status`.
func storeLineOf(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "store: ") {
			return l
		}
	}
	return ""
}

// edit makes one edit through instance i and times its propagation: from
// just before the call until the others show it over their sockets.
func edit(t *testing.T, fl []*member, i int, what string, id string, ok func(control.Host) bool, call func() error) (self time.Duration, others []time.Duration) {
	t.Helper()
	t0 := time.Now()
	var chans []<-chan seen
	for j, o := range fl {
		if j != i {
			chans = append(chans, o.watchFor(t0, 10*time.Second, id, ok))
		}
	}
	if err := call(); err != nil {
		t.Fatalf("%s through instance %d: %v", what, i, err)
	}
	self = time.Since(t0)
	for _, ch := range chans {
		s := <-ch
		if s.err != nil {
			t.Fatal(s.err)
		}
		others = append(others, s.d)
	}
	t.Logf("%s through instance %d: call %s; visible on the other two %v after the call started",
		what, i, self.Round(10*time.Microsecond), roundAll(others))
	return self, others
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(10 * time.Microsecond)
	}
	return out
}

// TestFleetProcesses: three l4lb processes against one Consul stand-in.
func TestFleetProcesses(t *testing.T) {
	agent := consultest.New()
	defer agent.Close()
	relay, err := consultest.NewRelay(agent.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	hosts := [3]string{tagger(t, "a"), tagger(t, "b"), tagger(t, "c")}
	fl := startFleetProcs(t, []string{agent.Addr(), agent.Addr(), relay.Addr()}, hosts)
	runFleetScenario(t, fl, relay, agent.HoldPuts)
}

// TestFleetProcessesRealAgent: the same against a real dev agent when a
// consul binary is on PATH (the check-and-set race is left out: only the
// stand-in can hold writes back to force it).
func TestFleetProcessesRealAgent(t *testing.T) {
	bin, err := exec.LookPath("consul")
	if err != nil {
		t.Skip("no consul binary on PATH: the three processes run against the stand-in only (TestFleetProcesses)")
	}
	addr := consultest.StartDev(t, bin)
	relay, err := consultest.NewRelay(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	hosts := [3]string{tagger(t, "a"), tagger(t, "b"), tagger(t, "c")}
	fl := startFleetProcs(t, []string{addr, addr, relay.Addr()}, hosts)
	runFleetScenario(t, fl, relay, nil)
}

// runFleetScenario: propagation, a forced check-and-set race (when
// holdPuts is set), a partition of fl[2] through relay, and the same hash
// choice on every instance for 1000 real client addresses.
func runFleetScenario(t *testing.T, fl []*member, relay *consultest.Relay, holdPuts func(int)) {
	ctx := context.Background()

	// 1. An edit through any instance's socket is visible on the other two
	// within one blocking round trip (wait is 5s: a figure far below it is
	// the watch answered on the change, not at the end of its wait).
	var all []time.Duration
	for i, m := range fl {
		id := fmt.Sprintf("x%d", i)
		addr := tagger(t, id)
		_, others := edit(t, fl, i, "host add "+id, id, anyHost, func() error {
			_, err := m.c.AddHost(ctx, "u", "p", control.HostSpec{ID: id, Address: addr, Weight: 1})
			return err
		})
		all = append(all, others...)
	}
	// Through the real `l4lb ctl` too (its own start is in the figure).
	addr := tagger(t, "viactl")
	_, others := edit(t, fl, 1, "l4lb ctl host add", "viactl", anyHost, func() error {
		if code, out, errs := ctlBin(t, fl[1].sock, "host", "add", "u", "p", addr, "--id", "viactl"); code != 0 {
			return fmt.Errorf("exit %d: %s%s", code, out, errs)
		}
		return nil
	})
	all = append(all, others...)
	// A manual state is shared.
	_, others = edit(t, fl, 2, "l4lb ctl host down b", "b", func(h control.Host) bool { return h.State == pool.StateManualDown }, func() error {
		if code, out, errs := ctlBin(t, fl[2].sock, "host", "down", "u", "p", "b"); code != 0 {
			return fmt.Errorf("exit %d: %s%s", code, out, errs)
		}
		return nil
	})
	all = append(all, others...)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	t.Logf("propagation between processes, from before the edit call to visible over the other instance's socket: %d samples, min %s, median %s, max %s",
		len(all), all[0].Round(10*time.Microsecond), all[len(all)/2].Round(10*time.Microsecond), all[len(all)-1].Round(10*time.Microsecond))
	if worst := all[len(all)-1]; worst > 2*time.Second {
		t.Errorf("slowest propagation %s: more than one blocking round trip", worst)
	}

	// 2. Concurrent conflicting edits: the stand-in holds both writes until
	// both have arrived, so both were built on the same index.
	if holdPuts != nil {
		conflict(t, fl, holdPuts)
	}

	// 3. Partition: fl[2] loses Consul.
	partition(t, fl, relay)

	// 4. The same backend whichever instance a client hits.
	sameHash(t, fl)
}

// conflict: instances 0 and 1 add the same host id with different
// addresses at once: exactly one wins, the other gets 409 and changes
// nothing; every instance ends with the winner's host.
func conflict(t *testing.T, fl []*member, holdPuts func(int)) {
	ctx := context.Background()
	addrs := [2]string{tagger(t, "same0"), tagger(t, "same1")}
	holdPuts(2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = fl[i].c.AddHost(ctx, "u", "p", control.HostSpec{ID: "same", Address: addrs[i], Weight: 1})
		}()
	}
	wg.Wait()
	won, lost := -1, -1
	for i, err := range errs {
		var se *control.StatusError
		switch {
		case err == nil:
			won = i
		case errors.As(err, &se) && se.Code == 409 && strings.Contains(se.Message, "edited concurrently by another instance"):
			lost = i
		default:
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	if won < 0 || lost < 0 {
		t.Fatalf("want one winner and one 409, got %v", errs)
	}
	t.Logf("concurrent edits: instance %d won, instance %d got 409: %v", won, lost, errs[lost])
	t0 := time.Now()
	var chans []<-chan seen
	for _, m := range fl {
		chans = append(chans, m.watchFor(t0, 10*time.Second, "same", func(h control.Host) bool { return h.Address == addrs[won] }))
	}
	for _, ch := range chans {
		if s := <-ch; s.err != nil {
			t.Fatal(s.err)
		}
	}
}

// partition: fl[2] is cut off from Consul. It keeps serving, refuses
// edits with 503, and `l4lb ctl status` says it is not in sync; the others
// edit on. Healed, it converges and accepts edits again.
func partition(t *testing.T, fl []*member, relay *consultest.Relay) {
	ctx := context.Background()
	cut := fl[2]
	cut.p.Drain()
	relay.Cut()
	// The watch's blocked query is cut: logged at once.
	cut.p.WaitLog(t, "consul query failed: retrying with backoff; edits are refused while consul cannot be reached", 10*time.Second)
	code, out, errs := ctlBin(t, cut.sock, "status")
	line := storeLineOf(out)
	t.Logf("cut off: %s", line)
	if code != 0 || !strings.Contains(line, "store: consul l4lb/e2e/edits") || !strings.Contains(line, "NOT in sync") {
		t.Fatalf("l4lb ctl status while cut off: exit %d, store line %q\n%s%s", code, line, out, errs)
	}
	code, _, errs = ctlBin(t, cut.sock, "host", "add", "u", "p", tagger(t, "lost"), "--id", "lost")
	t.Logf("edit while cut off: exit %d: %s", code, strings.TrimSpace(errs))
	if code != exitRefused || !strings.Contains(errs, "cannot be reached") {
		t.Fatalf("edit while cut off: exit %d, %q; want a refusal saying Consul cannot be reached", code, errs)
	}
	_, err := cut.c.AddHost(ctx, "u", "p", control.HostSpec{ID: "lost", Address: "127.0.0.1:1", Weight: 1})
	var se *control.StatusError
	if !errors.As(err, &se) || se.Code != 503 {
		t.Fatalf("edit while cut off through the client: %v, want 503", err)
	}
	if _, found, _ := cut.hostOf(ctx, "lost"); found {
		t.Fatal("a refused edit changed the cut-off instance")
	}
	// It keeps serving.
	for range 10 {
		if _, err := greet(cut.front(), nil); err != nil {
			t.Fatalf("traffic through the cut-off instance: %v", err)
		}
	}
	// The others edit on; the cut-off instance does not see it.
	addr := tagger(t, "during")
	ch := fl[1].watchFor(time.Now(), 10*time.Second, "during", anyHost)
	if _, err := fl[0].c.AddHost(ctx, "u", "p", control.HostSpec{ID: "during", Address: addr, Weight: 1}); err != nil {
		t.Fatal(err)
	}
	if s := <-ch; s.err != nil {
		t.Fatal(s.err)
	}
	if _, found, _ := cut.hostOf(ctx, "during"); found {
		t.Fatal("the cut-off instance saw an edit")
	}

	// Healed: it converges (after at most backoff_max) and is in sync.
	t0 := time.Now()
	relay.Heal()
	if s := <-cut.watchFor(t0, 10*time.Second, "during", anyHost); s.err != nil {
		t.Fatal(s.err)
	} else {
		t.Logf("healed: the cut-off instance converged %s later (backoff 50ms..200ms)", s.d.Round(time.Millisecond))
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := cut.c.Status(ctx)
		if err == nil && st.Store != nil && st.Store.InSync {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not in sync 10s after healing: %+v %v", st.Store, err)
		}
	}
	_, out, _ = ctlBin(t, cut.sock, "status")
	line = storeLineOf(out)
	t.Logf("healed: %s", line)
	if !strings.Contains(line, ", in sync") || strings.Contains(line, "NOT") {
		t.Errorf("store line after healing: %q", line)
	}
	edit(t, fl, 2, "host add after healing", "after", anyHost, func() error {
		_, err := cut.c.AddHost(ctx, "u", "p", control.HostSpec{ID: "after", Address: tagger(t, "after"), Weight: 1})
		return err
	})
}

// sameHash: the fleet goes back to the file (reset), then edits through
// each instance (a host added, a weight, a manual down); once all three
// are at the same index, 1000 clients from distinct 127.x.y.z addresses
// connect to each instance: each client reaches the same backend on all
// three.
func sameHash(t *testing.T, fl []*member) {
	ctx := context.Background()
	if code, out, errs := ctlBin(t, fl[0].sock, "reset"); code != 0 {
		t.Fatalf("reset: %d %s%s", code, out, errs)
	}
	dAddr := tagger(t, "d")
	edit(t, fl, 0, "host add d", "d", anyHost, func() error {
		_, err := fl[0].c.AddHost(ctx, "u", "p", control.HostSpec{ID: "d", Address: dAddr, Weight: 1})
		return err
	})
	edit(t, fl, 1, "host set a --weight 3", "a", func(h control.Host) bool { return h.Weight == 3 }, func() error {
		w := 3
		_, err := fl[1].c.PatchHost(ctx, "u", "p", "a", control.HostPatch{Weight: &w})
		return err
	})
	edit(t, fl, 2, "host down c", "c", func(h control.Host) bool { return h.State == pool.StateManualDown }, func() error {
		_, err := fl[2].c.HostAction(ctx, "u", "p", "c", control.ActionDown)
		return err
	})
	// b is back up after the reset everywhere (it was down before it).
	for _, m := range fl {
		if s := <-m.watchFor(time.Now(), 10*time.Second, "b", func(h control.Host) bool { return h.State == pool.StateUp }); s.err != nil {
			t.Fatal(s.err)
		}
	}
	var index uint64
	for i, m := range fl {
		st, err := m.c.Status(ctx)
		if err != nil || st.Store == nil || !st.Store.InSync {
			t.Fatalf("instance %d store: %+v %v", i, st.Store, err)
		}
		if i == 0 {
			index = st.Store.Index
		} else if st.Store.Index != index {
			t.Fatalf("instance %d at index %d, instance 0 at %d", i, st.Store.Index, index)
		}
	}

	const clients = 1000
	src := func(i int) net.IP { return net.IPv4(127, 77, byte(i/254), byte(i%254+1)) }
	picks := make([][clients]string, len(fl))
	for k, m := range fl {
		results := make(chan error, clients)
		next := make(chan int)
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					tag, err := greet(m.front(), &net.TCPAddr{IP: src(i)})
					picks[k][i] = tag
					results <- err
				}
			}()
		}
		for i := range clients {
			next <- i
		}
		close(next)
		wg.Wait()
		close(results)
		for err := range results {
			if err != nil {
				t.Fatalf("instance %d: %v", k, err)
			}
		}
	}
	spread := map[string]int{}
	for i := range clients {
		spread[picks[0][i]]++
		for k := 1; k < len(fl); k++ {
			if picks[k][i] != picks[0][i] {
				t.Fatalf("client %s: instance 0 sent it to %s, instance %d to %s", src(i), picks[0][i], k, picks[k][i])
			}
		}
	}
	t.Logf("hash: %d clients (distinct source addresses 127.77.0.1-127.77.3.238, real connections) x 3 instances: the same backend on all three; spread %v",
		clients, spread)
	if spread["c"] != 0 || spread["a"] == 0 || spread["b"] == 0 || spread["d"] == 0 {
		t.Errorf("spread %v: want a, b and d, never the manual_down c", spread)
	}
	if spread["a"] < spread["b"] || spread["a"] < spread["d"] {
		t.Errorf("spread %v: a has weight 3, the others 1", spread)
	}
}

// greet connects to addr (from local, if set) and returns the backend's
// greeting line.
func greet(addr string, local *net.TCPAddr) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != nil {
		d.LocalAddr = local
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("from %s: %w", c.LocalAddr(), err)
	}
	return strings.TrimSpace(line), nil
}
