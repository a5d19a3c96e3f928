package reliability

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/proxy"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/splice"
)

const soakTOML = `
[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
drain_timeout = "1h"

[upstream.u]
max_fails = 0

[upstream.u.health]
type = "http"
interval = "500ms"
timeout = "400ms"
rise = 1
fall = 3
check_address = ":%d"

[[upstream.u.pool]]
name = "p"
hosts = [
  { address = %q, id = "clean", weight = 3 },
  { address = %q, id = "delay" },
  { address = %q, id = "rst" },
  { address = %q, id = "fin" },
  { address = %q, id = "spare" },
]
`

// Soak paths. Every backend writes its id and a newline, then echoes, so a
// client knows which path it took; only the cutting relays may lose bytes.
var soakCutters = map[string]bool{"rst": true, "fin": true}

// TestSoak: churn with faults for a while (15 s in CI; L4LB_SOAK=30m for the
// real soak). Eight clients send random payloads (1 B to 256 KiB, then a
// FIN) through one pool: "clean" (direct), "delay" (a chaos relay adding
// 1 ms per chunk each way), "rst" and "fin" (relays cutting after 64 KiB
// with a reset or a FIN) and "spare", which an operator goroutine keeps
// editing: removed and added back, re-weighted, drained and brought back
// up, and its health check flipped down and up. On every path but the two
// cutters, the echo must be exactly what was sent, with no error: a lost,
// altered or extra byte, a reset or a timeout fails the test at once. A cut
// connection must have received a prefix of its echo, and each cut the
// client sees must be one the relay made (its Cuts count). fds and
// goroutines, sampled all along, do not grow.
func TestSoak(t *testing.T) {
	dur, err := soakDuration()
	if err != nil {
		t.Fatal(err)
	}
	every := time.Second
	if dur >= 10*time.Minute {
		every = 10 * time.Second
	}
	splice.StartEngine() // its loops live as long as the process: not a leak
	g0, fd0 := runtime.NumGoroutine(), fdCount()
	type sample struct{ g, fd int }
	var samples []sample
	var (
		mu     sync.Mutex
		byPath = map[string]int{}
		cutBy  = map[string]int{}
		edits  = map[string]int{}
	)
	var intact atomic.Int64
	var relays map[string]*testbackend.Chaos
	func() {
		port, flappers, stopFlappers := startFlappers(t)
		defer stopFlappers()
		var backends []*testbackend.Server
		defer func() {
			for _, b := range backends {
				b.Close()
			}
		}()
		backend := func(ip, tag string) string {
			b, err := testbackend.StartAt(ip+":0", testbackend.Tagger(tag))
			if err != nil {
				t.Fatal(err)
			}
			backends = append(backends, b)
			return b.Addr()
		}
		relays = map[string]*testbackend.Chaos{}
		relay := func(tag string, c *testbackend.Chaos) string {
			r, err := testbackend.StartChaos(c, backend("127.0.0.1", tag))
			if err != nil {
				t.Fatal(err)
			}
			relays[tag] = r
			return r.Addr()
		}
		clean := backend("127.0.0.1", "clean")
		delay := relay("delay", &testbackend.Chaos{Delay: time.Millisecond})
		rst := relay("rst", &testbackend.Chaos{CutAfter: 64 << 10, CutRST: true})
		fin := relay("fin", &testbackend.Chaos{CutAfter: 64 << 10})
		spare := backend("127.0.0.2", "spare") // its own IP: its own health endpoint
		defer func() {
			for _, r := range relays {
				r.Close()
			}
		}()
		ip := startInproc(t, fmt.Sprintf(soakTOML, port, clean, delay, rst, fin, spare))
		defer ip.stop()

		stop := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		report := func(err error) {
			select {
			case errs <- err:
			default:
			}
		}
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := mrand.New(mrand.NewPCG(uint64(w), 7))
				for {
					select {
					case <-stop:
						return
					default:
					}
					b := make([]byte, 1+rng.IntN(256<<10))
					rand.Read(b)
					path, n, cut, err := soakConn(ip.addr, b)
					if err != nil {
						report(err)
						return
					}
					intact.Add(int64(n))
					mu.Lock()
					byPath[path]++
					if cut {
						cutBy[path]++
						// Each cut seen must be one a relay made: per path,
						// and in all with those of unknown path.
						made := relays["rst"].Cuts() + relays["fin"].Cuts()
						seen := int64(cutBy["rst"] + cutBy["fin"] + cutBy[""])
						if path != "" && int64(cutBy[path]) > relays[path].Cuts() {
							err = fmt.Errorf("%d cut connections on the %s path, but its relay cut only %d: bytes were lost elsewhere", cutBy[path], path, relays[path].Cuts())
						} else if seen > made {
							err = fmt.Errorf("%d cut connections seen, %d cuts made by the relays: bytes were lost elsewhere", seen, made)
						}
					}
					mu.Unlock()
					if err != nil {
						report(err)
						return
					}
				}
			}(w)
		}
		// The operator: every 250 ms one change to "spare". A health flip
		// is awaited until the checks report it (fall 3 x 500 ms), so each
		// one takes effect.
		healthy := func() (bool, bool) {
			for _, h := range ip.s.Status().Hosts {
				if h.ID == "spare" && h.Reason != "removed" {
					return h.Healthy, true
				}
			}
			return false, false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(99, 7))
			present, sick := true, false
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				var kind string
				var err error
				switch r := rng.IntN(5); {
				case !present:
					kind, present = "add", true
					err = ip.s.AddHost("u", "p", control.HostSpec{Address: spare, ID: "spare", Weight: 1 + rng.IntN(3)})
				case r == 0:
					kind, present = "remove", false
					err = ip.s.RemoveHost("u", "p", "spare")
				case r == 1:
					kind = "weight"
					w := rng.IntN(4)
					err = ip.s.PatchHost("u", "p", "spare", control.HostPatch{Weight: &w})
				case r == 2:
					kind = "admin"
					err = ip.s.HostAction("u", "p", "spare", []control.Action{control.ActionDrain, control.ActionUp}[rng.IntN(2)])
				default:
					kind, sick = "health flip", !sick
					flappers[1].Set(map[bool]int{false: 200, true: 503}[sick])
					deadline := time.Now().Add(10 * time.Second)
					for {
						if h, ok := healthy(); !ok || h == !sick {
							break
						}
						if time.Now().After(deadline) {
							err = fmt.Errorf("health checks did not see it in 10 s")
							break
						}
						time.Sleep(20 * time.Millisecond)
					}
				}
				if err != nil {
					report(fmt.Errorf("operator: %s spare: %w", kind, err))
					return
				}
				mu.Lock()
				edits[kind]++
				mu.Unlock()
			}
		}()
		deadline := time.After(dur)
		tick := time.NewTicker(every)
		defer tick.Stop()
	loop:
		for {
			select {
			case <-deadline:
				break loop
			case err := <-errs:
				st := ip.s.Status()
				close(stop)
				wg.Wait()
				for _, h := range st.Hosts {
					t.Logf("host %s: %s weight %d active %d total %d fails %d %s", h.ID, h.State, h.Weight, h.Active, h.Total, h.FailCount, h.LastFailReason)
				}
				t.Fatalf("%v (listener counters %v)", err, st.Listeners[0].Counters)
			case <-tick.C:
				samples = append(samples, sample{runtime.NumGoroutine(), fdCount()})
			}
		}
		close(stop)
		wg.Wait()
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		if n := ip.s.Status().Listeners[0].Counters["no_backend"]; n != 0 {
			t.Errorf("%d clients closed for want of a usable host: clean, delay, rst and fin are always up (unless their health checks time out on an overloaded machine)", n)
		}
	}()
	settle(t, g0, fd0)
	total := 0
	var paths []string
	for p, n := range byPath {
		total += n
		if p != "" { // reset before the tag: reported with the cuts
			paths = append(paths, fmt.Sprintf("%s %d", p, n))
		}
	}
	sort.Strings(paths)
	t.Logf("soak %v: %d connections (%s); cut: rst %d (relay made %d), fin %d (relay made %d), reset before the tag %d; %d MiB echoed intact, 0 bytes lost or altered on clean paths; operator edits of spare: %v",
		dur, total, strings.Join(paths, ", "), cutBy["rst"], relays["rst"].Cuts(), cutBy["fin"], relays["fin"].Cuts(), cutBy[""], intact.Load()>>20, edits)
	for _, p := range []string{"clean", "delay", "rst", "fin", "spare"} {
		if byPath[p] == 0 {
			t.Errorf("no connection took the %s path: the soak did not exercise it", p)
		}
	}
	if cutBy["rst"] == 0 || cutBy["fin"] == 0 {
		t.Errorf("no cut seen (rst %d, fin %d): the faults were not injected", cutBy["rst"], cutBy["fin"])
	}
	// Growth: the median of the last third against the first third.
	med := func(s []sample, f func(sample) int) int {
		v := make([]int, len(s))
		for i, x := range s {
			v[i] = f(x)
		}
		sort.Ints(v)
		return v[len(v)/2]
	}
	third := len(samples) / 3
	if third > 0 {
		first, last := samples[:third], samples[len(samples)-third:]
		gGrowth := med(last, func(s sample) int { return s.g }) - med(first, func(s sample) int { return s.g })
		fdGrowth := med(last, func(s sample) int { return s.fd }) - med(first, func(s sample) int { return s.fd })
		t.Logf("%d samples every %v: goroutines %+d, fds %+d (median of the last third vs the first)", len(samples), every, gGrowth, fdGrowth)
		// The listener's idle connection workers may build up to
		// proxy.MaxIdleWorkers during the run: not a leak.
		if gGrowth > 20+proxy.MaxIdleWorkers || fdGrowth > 20 {
			t.Errorf("resources grow during the soak: goroutines %+d, fds %+d", gGrowth, fdGrowth)
		}
	}
}

// soakConn sends b on a new connection, half-closes, and reads to EOF: the
// backend's tag line, then the echo. It returns the path taken ("" when the
// tag never arrived), how many echoed bytes came back intact, and whether
// the connection was cut. On a path that may not cut, anything but the
// exact echo and a clean EOF is an error; on a cutting path a prefix is
// allowed, different bytes are not. A reset before the whole tag arrived is
// a cut of unknown path (l4lb passes a backend's reset on at once, and
// bytes it had not yet written to the client, the tag included, go with
// it); the caller counts those against the relays' cuts too.
func soakConn(addr string, b []byte) (path string, n int, cut bool, err error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", 0, false, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	c.Close() // unblocks the writer on a cut connection
	wr := <-werr
	tag, echo, ok := bytes.Cut(got, []byte("\n"))
	if !ok {
		for p := range soakCutters {
			if errors.Is(rerr, syscall.ECONNRESET) && strings.HasPrefix(p+"\n", string(got)) {
				return "", 0, true, nil
			}
		}
		return "", 0, false, fmt.Errorf("no tag line: %q, read %v, write %v", got, rerr, wr)
	}
	path = string(tag)
	if !bytes.Equal(echo, b[:min(len(echo), len(b))]) || len(echo) > len(b) {
		return path, 0, false, fmt.Errorf("%s path: bytes altered (%d of %d back)", path, len(echo), len(b))
	}
	full := len(echo) == len(b) && rerr == nil && wr == nil
	switch {
	case soakCutters[path]:
		return path, len(echo), !full, nil
	case path == "clean" || path == "delay" || path == "spare":
		if !full {
			return path, len(echo), false, fmt.Errorf("%s path, which cuts nothing: %d of %d bytes back, read %v, write %v", path, len(echo), len(b), rerr, wr)
		}
		return path, len(echo), false, nil
	}
	return path, 0, false, errors.New("unknown tag " + path)
}
