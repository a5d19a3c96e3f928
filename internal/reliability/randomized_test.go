package reliability

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
)

const randomizedTOML = `
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
drain_timeout = "%s"

[upstream.u]
max_fails = 0

[upstream.u.health]
type = "http"
interval = "50ms"
timeout = "40ms"
jitter = "5ms"
rise = 1
fall = 1
check_address = ":%d"

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "b0", weight = %d } ]
`

// randHosts is how many backends the randomized test has: b0 in the
// config file, b1 and b2 added and removed by edits. Backend k listens on
// 127.0.0.(k+1), writes its id on accept, then echoes; its health endpoint
// is a Flapper on the same IP and a port shared by all three, so one
// check_address (":port") gives each host its own switch.
const randHosts = 3

// mhost is the model of one host in the pool.
type mhost struct {
	weight int
	admin  pool.State // StateUp (no admin state), StateManualDown or StateDraining
}

// model is what the pool should look like, kept by the test alongside the
// server: hosts and weights after edits, admin states after actions,
// health after flips, the file's weight after reloads, and which host each
// open connection reached.
type model struct {
	hosts      map[string]*mhost
	sick       [randHosts]bool // flapper k answers 503
	fileWeight int             // b0's weight in the config file
	b0Weight   *int            // b0's weight as edited, over the file's
	b0Admin    pool.State
	conns      []mconn // in the order they were opened, so a seed replays
}

// mconn is an open connection and the host it reached.
type mconn struct {
	c    net.Conn
	host string
}

func (m *model) drop(c net.Conn) {
	m.conns = slices.DeleteFunc(m.conns, func(x mconn) bool { return x.c == c })
}

func (m *model) reset() {
	m.hosts = map[string]*mhost{"b0": {weight: m.fileWeight, admin: pool.StateUp}}
	m.b0Weight, m.b0Admin = nil, pool.StateUp
}

// state is what the host should show: its admin state if it has one, else
// what its checks say.
func (m *model) state(id string) pool.State {
	h := m.hosts[id]
	if h.admin != pool.StateUp {
		return h.admin
	}
	if m.sick[id[1]-'0'] {
		return pool.StateDown
	}
	return pool.StateUp
}

// usable is the hosts a new connection may reach.
func (m *model) usable() []string {
	var out []string
	for id, h := range m.hosts {
		if m.state(id) == pool.StateUp && h.weight > 0 {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

func (m *model) connsOn(id string) int64 {
	var n int64
	for _, x := range m.conns {
		if x.host == id {
			n++
		}
	}
	return n
}

// diff compares the model with the server's live state: the pool's hosts
// (ids, addresses, weights, states), each host's active connections (a
// removed host that still drains included) and the listener's. "" = same.
func (m *model) diff(ip *inproc, addrs []string) string {
	var d []string
	u, err := ip.s.Upstream("u")
	if err != nil || len(u.Pools) != 1 {
		return fmt.Sprintf("upstream u: %v, %d pools", err, len(u.Pools))
	}
	seen := map[string]bool{}
	for _, h := range u.Pools[0].Hosts {
		seen[h.ID] = true
		mh := m.hosts[h.ID]
		if mh == nil {
			d = append(d, fmt.Sprintf("%s is in the pool, not in the model", h.ID))
			continue
		}
		k := h.ID[1] - '0'
		if h.Address != addrs[k] || h.Weight != mh.weight || h.State != m.state(h.ID) {
			d = append(d, fmt.Sprintf("%s: live %s weight %d %s, model %s weight %d %s", h.ID, h.Address, h.Weight, h.State, addrs[k], mh.weight, m.state(h.ID)))
		}
	}
	for id := range m.hosts {
		if !seen[id] {
			d = append(d, fmt.Sprintf("%s is in the model, not in the pool", id))
		}
	}
	st := ip.s.Status()
	active := map[string]int64{}
	for _, h := range st.Hosts {
		if h.Upstream == "u" {
			active[h.ID] += h.Active
		}
	}
	for id := range active {
		if m.hosts[id] == nil && m.connsOn(id) == 0 && active[id] == 0 {
			d = append(d, fmt.Sprintf("%s: removed, no connection left, still listed", id))
		}
	}
	for k := 0; k < randHosts; k++ {
		id := fmt.Sprintf("b%d", k)
		if want := m.connsOn(id); active[id] != want {
			d = append(d, fmt.Sprintf("%s: %d active, model %d", id, active[id], want))
		}
	}
	if got := st.Listeners[0].Counters["active"]; got != int64(len(m.conns)) {
		d = append(d, fmt.Sprintf("listener: %d active, model %d", got, len(m.conns)))
	}
	return strings.Join(d, "; ")
}

// startFlappers serves a Flapper on each 127.0.0.(k+1) on one port; stop
// closes them.
func startFlappers(t *testing.T) (port int, fl []*testbackend.Flapper, stop func()) {
	t.Helper()
	for try := 0; try < 20; try++ {
		var lns []net.Listener
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		port = ln.Addr().(*net.TCPAddr).Port
		for k := 1; k < randHosts && err == nil; k++ {
			if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", k+1, port)); err == nil {
				lns = append(lns, ln)
			}
		}
		if err != nil { // the port is taken on another IP: another one
			for _, ln := range lns {
				ln.Close()
			}
			continue
		}
		var srvs []*http.Server
		for _, ln := range lns {
			f := testbackend.NewFlapper()
			srv := &http.Server{Handler: f}
			go srv.Serve(ln)
			srvs = append(srvs, srv)
			fl = append(fl, f)
		}
		return port, fl, func() {
			for _, srv := range srvs {
				srv.Close()
			}
		}
	}
	t.Fatal("no port free on 127.0.0.1-3")
	return 0, nil, nil
}

// TestRandomized: a seeded random mix of open, write, half-close, reset,
// pool edits (add, remove, weight), admin actions (down, up, drain), health
// flips (a host's check endpoint starts or stops failing), reloads (the
// file's weight changes) and resets (edits dropped). The test keeps a model
// of what the pool should be, and after EVERY step checks: the server's
// live pool equals the model (hosts, addresses, weights, states; an answer
// that can change only with a health check is awaited, bounded); each
// host's and the listener's active connections equal the model's; an edit
// fails exactly when the model says it must; a new connection reaches a
// host the model says is usable, or is closed when none is; and every open
// connection still echoes random bytes intact. Nothing leaks at the end.
// The seed is printed; L4LB_SEED replays one. 400 steps (5000 in long
// mode).
func TestRandomized(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("L4LB_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("L4LB_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with L4LB_SEED=%d)", seed, seed)
	rng := mrand.New(mrand.NewPCG(seed, 0))
	steps := 400
	if longMode() {
		steps = 5000
	}
	splice.StartEngine() // its loops live as long as the process: not a leak
	g0, fd0 := runtime.NumGoroutine(), fdCount()
	var counts map[string]int
	var maxOpen int
	func() {
		port, flappers, stopFlappers := startFlappers(t)
		defer stopFlappers()
		var addrs []string
		for k := 0; k < randHosts; k++ {
			b, err := testbackend.StartAt(fmt.Sprintf("127.0.0.%d:0", k+1), testbackend.Tagger(fmt.Sprintf("b%d", k)))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			addrs = append(addrs, b.Addr())
		}
		m := &model{fileWeight: 1}
		m.reset()
		file := func(drain string) string {
			return fmt.Sprintf(randomizedTOML, drain, port, addrs[0], m.fileWeight)
		}
		// Drains outlast the test: a connection on a removed or drained
		// host must live on, and the model says so.
		ip := startInproc(t, file("1h"))
		defer ip.stop()
		defer func() {
			for _, x := range m.conns {
				x.c.Close()
			}
		}()
		var history []string
		fail := func(step int, format string, args ...any) {
			t.Helper()
			if len(history) > 12 {
				history = history[len(history)-12:]
			}
			t.Fatalf("seed %d step %d: %s\nlast steps:\n  %s", seed, step, fmt.Sprintf(format, args...), strings.Join(history, "\n  "))
		}
		pickConn := func() (net.Conn, string) {
			x := m.conns[rng.IntN(len(m.conns))]
			return x.c, x.host
		}
		payload := func(max int) []byte {
			b := make([]byte, 1+rng.IntN(max))
			rand.Read(b)
			return b
		}
		// wantErr checks an edit's outcome against the model's verdict.
		wantErr := func(step int, what string, err error, want error) {
			t.Helper()
			if !errors.Is(err, want) && !(err == nil && want == nil) {
				fail(step, "%s: got %v, the model says %v", what, err, want)
			}
		}
		counts = map[string]int{}
		for step := 0; step < steps; step++ {
			var what string
			op := rng.IntN(20)
			if op >= 6 && op <= 10 && len(m.conns) == 0 {
				op = 0 // needs a connection: open one instead
			}
			switch {
			case op < 6: // open
				if len(m.conns) >= 64 {
					what = "open skipped (64 open)"
					break
				}
				usable := m.usable()
				c, err := net.Dial("tcp", ip.addr)
				if err != nil {
					fail(step, "open: %v", err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				tag, err := bufio.NewReader(io.LimitReader(c, 3)).ReadString('\n')
				c.SetDeadline(time.Time{})
				tag = strings.TrimSpace(tag)
				if len(usable) == 0 {
					what = "open-refused: no usable host"
					c.Close()
					if err == nil {
						fail(step, "open: reached %s, the model has no usable host", tag)
					}
					break
				}
				what = fmt.Sprintf("open -> %s (usable %v)", tag, usable)
				if err != nil || !slices.Contains(usable, tag) {
					c.Close()
					fail(step, "open: tag %q, %v; the model's usable hosts are %v", tag, err, usable)
				}
				m.conns = append(m.conns, mconn{c, tag})
			case op < 9: // write
				c, h := pickConn()
				b := payload(64 << 10)
				what = fmt.Sprintf("write %d bytes on a connection to %s", len(b), h)
				if err := echoCheck(c, b); err != nil {
					fail(step, "%s: %v", what, err)
				}
			case op == 9: // half-close: the echo of what was sent, then EOF
				c, h := pickConn()
				b := payload(64 << 10)
				what = fmt.Sprintf("half-close after %d bytes on a connection to %s", len(b), h)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				errc := make(chan error, 1)
				go func() {
					_, err := c.Write(b)
					if err == nil {
						err = c.(*net.TCPConn).CloseWrite()
					}
					errc <- err
				}()
				got, err := io.ReadAll(c)
				werr := <-errc
				if err != nil || werr != nil || !bytes.Equal(got, b) {
					fail(step, "%s: %d of %d bytes back, read %v, write %v", what, len(got), len(b), err, werr)
				}
				c.Close()
				m.drop(c)
			case op == 10: // reset
				c, h := pickConn()
				what = fmt.Sprintf("rst a connection to %s", h)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				m.drop(c)
			case op < 14: // pool edit: add, remove or re-weight a host
				k := rng.IntN(randHosts)
				id := fmt.Sprintf("b%d", k)
				w := rng.IntN(4)
				// Adds outnumber removes, so the pool is seldom empty.
				switch e := rng.IntN(8); {
				case e < 4 && k > 0:
					what = fmt.Sprintf("add %s weight %d", id, w)
					var want error
					if m.hosts[id] != nil {
						want = control.ErrConflict
					}
					wantErr(step, what, ip.s.AddHost("u", "p", control.HostSpec{Address: addrs[k], ID: id, Weight: w}), want)
					if want == nil {
						m.hosts[id] = &mhost{weight: w, admin: pool.StateUp}
					}
				case e == 4 && k > 0:
					what = "remove " + id
					var want error
					if m.hosts[id] == nil {
						want = control.ErrNotFound
					}
					wantErr(step, what, ip.s.RemoveHost("u", "p", id), want)
					delete(m.hosts, id)
				default:
					what = fmt.Sprintf("weight %s %d", id, w)
					var want error
					if m.hosts[id] == nil {
						want = control.ErrNotFound
					}
					wantErr(step, what, ip.s.PatchHost("u", "p", id, control.HostPatch{Weight: &w}), want)
					if want == nil {
						m.hosts[id].weight = w
						if id == "b0" {
							m.b0Weight = &w
						}
					}
				}
			case op < 16: // admin action
				k := rng.IntN(randHosts)
				id := fmt.Sprintf("b%d", k)
				// Up more often than not, so the pool is seldom unusable.
				a := []control.Action{control.ActionDown, control.ActionUp, control.ActionUp, control.ActionUp, control.ActionDrain}[rng.IntN(5)]
				what = fmt.Sprintf("%s %s", a, id)
				var want error
				if m.hosts[id] == nil {
					want = control.ErrNotFound
				}
				wantErr(step, what, ip.s.HostAction("u", "p", id, a), want)
				if want == nil {
					m.hosts[id].admin = map[control.Action]pool.State{control.ActionDown: pool.StateManualDown,
						control.ActionUp: pool.StateUp, control.ActionDrain: pool.StateDraining}[a]
					if id == "b0" {
						m.b0Admin = m.hosts[id].admin
					}
				}
			case op < 18: // health flip: the host's check endpoint starts or stops failing
				k := rng.IntN(randHosts)
				m.sick[k] = rng.IntN(4) == 0 // healthy more often than not
				code := 200
				if m.sick[k] {
					code = 503
				}
				what = fmt.Sprintf("health: b%d's endpoint answers %d", k, code)
				flappers[k].Set(code)
			case op == 18: // reload, with a changed drain_timeout and b0 weight
				m.fileWeight = 1 + rng.IntN(3)
				drain := []string{"1h", "2h"}[rng.IntN(2)]
				what = fmt.Sprintf("reload (b0 weight %d in the file, drain_timeout %s)", m.fileWeight, drain)
				if err := os.WriteFile(ip.path, []byte(fmt.Sprintf("[control]\nstate_dir = %q\n", filepath.Join(filepath.Dir(ip.path), "state"))+file(drain)), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := ip.s.Reload(); err != nil {
					fail(step, "reload: %v", err)
				}
				// Edits overlay the file: an edited weight stays.
				if m.b0Weight == nil {
					m.hosts["b0"].weight = m.fileWeight
				}
			case op == 19: // reset: every edit dropped, back to the file
				if rng.IntN(4) != 0 {
					what = "reset-edits skipped"
					break
				}
				what = "reset-edits"
				if err := ip.s.Reset(); err != nil {
					fail(step, "reset: %v", err)
				}
				m.reset()
			}
			counts[strings.TrimSuffix(strings.Fields(what)[0], ":")]++
			maxOpen = max(maxOpen, len(m.conns))
			history = append(history, fmt.Sprintf("%d: %s", step, what))

			// Invariants, after every step. The pool: what the model says,
			// as soon as the health checks (every 50 ms) have caught up.
			var d string
			for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if d = m.diff(ip, addrs); d == "" || time.Now().After(deadline) {
					break
				}
			}
			if d != "" {
				fail(step, "live state differs from the model: %s", d)
			}
			// The data: every open connection echoes intact.
			for _, x := range m.conns {
				if err := echoCheck(x.c, payload(256)); err != nil {
					fail(step, "invariant: a connection to %s: %v", x.host, err)
				}
			}
		}
		t.Logf("%d steps %v, all invariants held after each; up to %d connections open at once, %d at the end", steps, counts, maxOpen, len(m.conns))
	}()
	settle(t, g0, fd0)
}
