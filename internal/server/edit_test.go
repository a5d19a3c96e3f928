package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
)

const editable = `
[control]
state_dir = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
drain_timeout = %q

[upstream.u]
tries = 3

[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "a" } ]
`

// newServer builds (and binds, but does not run) a server from toml.
func newServer(t *testing.T, path, toml string) *Server {
	t.Helper()
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(path, cfg, logger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runServer(t *testing.T, s *Server) (addr string, stop func()) {
	t.Helper()
	if err := s.Bind(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return s.Listeners()[0].Addr().String(), stop
}

func hostsOf(s *Server, upstream string) map[string]control.Host {
	m := map[string]control.Host{}
	u, _ := s.Upstream(upstream)
	for _, p := range u.Pools {
		for _, h := range p.Hosts {
			m[p.Name+"/"+h.ID] = h
		}
	}
	return m
}

// TestEditsSurviveRestart: accepted edits are saved under state_dir and come
// back on the next start, manual states included; reset goes back to the
// file; an edit refused changes nothing, on disk or live.
func TestEditsSurviveRestart(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	toml := fmt.Sprintf(editable, filepath.Join(dir, "state"), "1s", a.Addr())

	s1 := newServer(t, path, toml)
	addr, stop := runServer(t, s1)
	if err := s1.AddHost("u", "p", control.HostSpec{Address: b.Addr(), ID: "b", Weight: 3}); err != nil {
		t.Fatal(err)
	}
	w := 2
	if err := s1.PatchHost("u", "p", "b", control.HostPatch{Weight: &w}); err != nil {
		t.Fatal(err)
	}
	if err := s1.HostAction("u", "p", "a", control.ActionDown); err != nil {
		t.Fatal(err)
	}
	// Refused edits change nothing.
	before := hostsOf(s1, "u")
	for _, err := range []error{
		s1.AddHost("u", "p", control.HostSpec{Address: b.Addr(), ID: "b", Weight: 1}),
		s1.AddHost("u", "nope", control.HostSpec{Address: b.Addr(), ID: "c", Weight: 1}),
		s1.PatchHost("u", "p", "zz", control.HostPatch{Weight: &w}),
		s1.DeleteUpstream("u"),
		s1.AddHost("u", "p", control.HostSpec{Address: "no-such-host.invalid:1", ID: "d", Weight: 1}),
	} {
		if err == nil {
			t.Fatal("a bad edit was accepted")
		}
	}
	if after := hostsOf(s1, "u"); !reflect.DeepEqual(before, after) {
		t.Fatalf("refused edits changed the state:\n%v\n%v", before, after)
	}
	// New connections follow the edits at once: a is manual_down, b takes all.
	for i := 0; i < 3; i++ {
		if got := tag(t, addr); got != "b" {
			t.Fatalf("after edits: %q", got)
		}
	}
	stop()

	s2 := newServer(t, path, toml)
	got := hostsOf(s2, "u")
	want := map[string]control.Host{
		"p/a": {ID: "a", Address: a.Addr(), Weight: 1, Source: control.SourceConfig, State: pool.StateManualDown},
		"p/b": {ID: "b", Address: b.Addr(), Weight: 2, Source: control.SourceAPI, State: pool.StateUp},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart:\n got %v\nwant %v", got, want)
	}
	if err := s2.Reset(); err != nil {
		t.Fatal(err)
	}
	if got := hostsOf(s2, "u"); len(got) != 1 || got["p/a"].State != pool.StateUp {
		t.Fatalf("after reset: %v", got)
	}
	s3 := newServer(t, path, toml)
	if got := hostsOf(s3, "u"); len(got) != 1 {
		t.Fatalf("reset did not persist: %v", got)
	}
}

// TestRemoveHostDrains: a host with live streams is removed: no new
// connection reaches it, its streams keep flowing until drain_timeout, then
// the rest are closed; status shows the countdown meanwhile.
func TestRemoveHostDrains(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Tagger("b"))
	dir := t.TempDir()
	s := newServer(t, filepath.Join(dir, "l4lb.toml"), fmt.Sprintf(editable, filepath.Join(dir, "state"), "1500ms", a.Addr()))
	addr, _ := runServer(t, s)
	const streams = 50
	conns := make([]net.Conn, streams)
	readers := make([]*bufio.Reader, streams)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		conns[i], readers[i] = c, bufio.NewReader(c)
		if line, _ := readers[i].ReadString('\n'); line != "a\n" {
			t.Fatalf("stream %d reached %q", i, line)
		}
	}
	if err := s.AddHost("u", "p", control.HostSpec{Address: b.Addr(), ID: "b", Weight: 1}); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	if err := s.RemoveHost("u", "p", "a"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if got := tag(t, addr); got != "b" {
			t.Fatalf("new connection after removal reached %q", got)
		}
	}
	var countdown bool
	for _, h := range s.Status().Hosts {
		if h.ID == "a" && h.State == pool.StateDraining && !h.DrainDeadline.IsZero() {
			countdown = true
		}
	}
	if !countdown {
		t.Fatalf("status shows no drain countdown for a: %+v", s.Status().Hosts)
	}
	// The streams still carry bytes, intact.
	for i, c := range conns {
		msg := fmt.Sprintf("stream %d still alive\n", i)
		c.Write([]byte(msg))
		if got, err := readers[i].ReadString('\n'); err != nil || got != msg {
			t.Fatalf("stream %d after removal: %q, %v", i, got, err)
		}
	}
	// At drain_timeout the stragglers are closed.
	for i := range conns {
		if _, err := readers[i].ReadString('\n'); err != io.EOF {
			t.Fatalf("stream %d at drain timeout: %v, want EOF", i, err)
		}
	}
	took := time.Since(removed)
	t.Logf("50 streams drained and closed %v after removal (drain_timeout 1.5s)", took.Round(time.Millisecond))
	if took < 1400*time.Millisecond || took > 3*time.Second {
		t.Fatalf("closed after %v, drain_timeout 1.5s", took)
	}
}

// TestReloadKeepsOldOnError: a reload with a syntax error, a semantic error
// or an empty file changes nothing and live traffic goes on; a valid file
// then applies, and live edits are replayed over it.
func TestReloadKeepsOldOnError(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	b := testbackend.New(t, testbackend.Echo)
	c := testbackend.New(t, testbackend.Tagger("c"))
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	good := fmt.Sprintf(editable, filepath.Join(dir, "state"), "1s", a.Addr())
	s := newServer(t, path, good)
	addr, _ := runServer(t, s)
	if err := s.AddHost("u", "p", control.HostSpec{Address: c.Addr(), ID: "c", Weight: 0}); err != nil {
		t.Fatal(err)
	}
	live, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	live.SetDeadline(time.Now().Add(20 * time.Second)) // reached a (c has weight 0)
	lr := bufio.NewReader(live)
	if line, _ := lr.ReadString('\n'); line != "a\n" {
		t.Fatalf("live reached %q", line)
	}
	before := s.Upstreams()
	for name, bad := range map[string]string{
		"syntax":   good + "\n[[listener\n",
		"semantic": strings.Replace(good, `tries = 3`, `tries = -1`, 1),
		"empty":    "",
	} {
		os.WriteFile(path, []byte(bad), 0o644)
		err := s.Reload()
		if err == nil || !errors.Is(err, control.ErrInvalid) {
			t.Fatalf("%s: reload err %v", name, err)
		}
		if !reflect.DeepEqual(before, s.Upstreams()) {
			t.Fatalf("%s: a failed reload changed the upstreams", name)
		}
		live.Write([]byte("ping\n"))
		if got, err := lr.ReadString('\n'); err != nil || got != "ping\n" {
			t.Fatalf("%s: live connection after a failed reload: %q %v", name, got, err)
		}
	}
	if n := s.ReloadFailures(); n != 3 {
		t.Errorf("reload failures = %d", n)
	}
	// A valid new file: a second listener, b added to the pool in the file.
	next := strings.Replace(good, fmt.Sprintf(`{ address = %q, id = "a" }`, a.Addr()),
		fmt.Sprintf(`{ address = %q, id = "a" }, { address = %q, id = "b", weight = 0 }`, a.Addr(), b.Addr()), 1) + `
[[listener]]
name = "second"
listen = "127.0.0.1:0"
upstream = "u"
`
	os.WriteFile(path, []byte(next), 0o644)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	hosts := hostsOf(s, "u")
	if _, ok := hosts["p/b"]; !ok || hosts["p/c"].Source != control.SourceAPI {
		t.Fatalf("after reload: %v (want b from the file and c replayed from the edits)", hosts)
	}
	lns := s.Listeners()
	if len(lns) != 2 || lns[0].Addr().String() != addr {
		t.Fatalf("listeners after reload: %d, first at %v (was %s)", len(lns), lns[0].Addr(), addr)
	}
	if got := tag(t, lns[1].Addr().String()); got != "a" {
		t.Fatalf("new listener: %q", got)
	}
	live.Write([]byte("still\n"))
	if got, err := lr.ReadString('\n'); err != nil || got != "still\n" {
		t.Fatalf("live connection across a good reload: %q %v", got, err)
	}
}

const underLoad = `
[control]
state_dir = %q

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"
drain_timeout = %q

[upstream.u]
tries = 3

[[upstream.u.pool]]
name = "p"
hosts = [ %s ]
`

// loadStream is one long-lived stream of TestEditsUnderLoad.
type loadStream struct {
	host         int          // index of the backend it reached
	rounds       atomic.Int64 // round trips done, each checked
	afterRemoval atomic.Int64 // of which begun after its host was first removed
	lastOK       atomic.Int64 // UnixNano of the last good round trip
}

// TestEditsUnderLoad: 200 long-lived streams spread over six hosts, and new
// connections all along, while 10 clients on the real control socket
// remove, re-add and reweight those hosts. drain_timeout is longer than the
// run, so a removed host's streams drain rather than get cut. Host h0 is
// only ever reweighted (1..9), so some host is up throughout.
//
// Each editor takes a per-host lock around its request, so the answer to
// every edit is known in advance (an add of a present host is 409, a remove
// of an absent one 404, ...) and checked, and the model built from the
// acknowledged edits is the state the server must end in: it is compared
// with the control API's view, with the live pool that selection uses (and
// with what selection does: one smooth-WRR cycle of new connections), and
// with a server restarted from the saved edits.
//
// Claims: every stream echoes every line intact, checked every ~100ms, and
// every stream on a host that was removed still does after the removal;
// no new connection fails.
func TestEditsUnderLoad(t *testing.T) {
	dur := 30 * time.Second
	if testing.Short() {
		dur = 5 * time.Second
	}
	const nHosts, nStreams, nEditors = 6, 200, 10
	var backs []*testbackend.Server
	var hosts []string
	for i := range nHosts {
		backs = append(backs, testbackend.New(t, testbackend.Tagger(fmt.Sprint("h", i))))
		hosts = append(hosts, fmt.Sprintf(`{ address = %q, id = "h%d" }`, backs[i].Addr(), i))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	toml := fmt.Sprintf(underLoad, filepath.Join(dir, "state"), (dur + time.Minute).String(), strings.Join(hosts, ", "))
	s := newServer(t, path, toml)
	addr, _ := runServer(t, s)
	sock, _ := startControl(t, s, control.ServerConfig{})

	var failMu sync.Mutex
	var failures []string
	var nFail atomic.Int64
	fail := func(format string, args ...any) {
		if nFail.Add(1) <= 10 {
			failMu.Lock()
			failures = append(failures, fmt.Sprintf(format, args...))
			failMu.Unlock()
		}
	}
	begin := time.Now()
	since := func() time.Duration { return time.Since(begin).Round(time.Millisecond) }
	// removedAt[i] is when host i was first removed (UnixNano; 0 = never).
	var removedAt [nHosts]atomic.Int64
	hostOf := func(tag string) int {
		var i int
		if _, err := fmt.Sscanf(tag, "h%d\n", &i); err != nil || i < 0 || i >= nHosts {
			return -1
		}
		return i
	}

	// The streams, opened before any edit: round robin over six hosts of
	// weight 1 spreads them evenly.
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	streams := make([]*loadStream, nStreams)
	perHost := make([]int, nHosts)
	for i := range streams {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tag, err := r.ReadString('\n')
		h := hostOf(tag)
		if err != nil || h < 0 {
			c.Close()
			t.Fatalf("stream %d reached %q, %v", i, tag, err)
		}
		st := &loadStream{host: h}
		streams[i] = st
		perHost[h]++
		load.Add(1)
		go func() {
			defer load.Done()
			defer c.Close()
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			pause := time.NewTimer(time.Hour)
			defer pause.Stop()
			for n := 0; ; n++ {
				pause.Reset(time.Duration(50+rng.IntN(100)) * time.Millisecond)
				select {
				case <-stopLoad:
					return
				case <-pause.C:
				}
				began := time.Now().UnixNano()
				msg := fmt.Sprintf("stream %d line %d\n", i, n)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte(msg)); err != nil {
					fail("stream %d (h%d) broken at %v: write: %v", i, h, since(), err)
					return
				}
				if got, err := r.ReadString('\n'); err != nil || got != msg {
					fail("stream %d (h%d) broken at %v: read %q, %v; want %q", i, h, since(), got, err, msg)
					return
				}
				st.rounds.Add(1)
				if at := removedAt[h].Load(); at != 0 && began > at {
					st.afterRemoval.Add(1)
				}
				st.lastOK.Store(time.Now().UnixNano())
			}
		}()
	}
	for i, n := range perHost {
		if n < nStreams/nHosts/2 {
			t.Fatalf("streams per host %v: h%d has too few for the test to mean anything", perHost, i)
		}
	}

	// New connections all along, from two clients: each must reach a host
	// and echo.
	var newOK, newFailed atomic.Int64
	newConns := make(chan struct{})
	var newLoad sync.WaitGroup
	for k := range 2 {
		newLoad.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-newConns:
					return
				default:
				}
				if tag, err := tagEcho(addr, fmt.Sprintf("new %d/%d\n", k, n)); err != nil || hostOf(tag) < 0 {
					newFailed.Add(1)
					fail("new connection %d/%d at %v: %q, %v", k, n, since(), tag, err)
				} else {
					newOK.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}

	// The editors. model[i] is host i as the acknowledged edits left it;
	// hostMu[i] is held over each edit of host i and its check.
	type hostModel struct {
		present bool
		weight  int
	}
	var hostMu [nHosts]sync.Mutex
	var model [nHosts]hostModel
	for i := range model {
		model[i] = hostModel{present: true, weight: 1}
	}
	var nAdd, nRemove, nPatch, nRefused atomic.Int64
	deadline := time.Now().Add(dur)
	var editors sync.WaitGroup
	for e := range nEditors {
		editors.Go(func() {
			c := control.NewClient(sock)
			defer c.Close()
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(uint64(e), 1))
			for time.Now().Before(deadline) {
				i := rng.IntN(nHosts)
				id := fmt.Sprint("h", i)
				hostMu[i].Lock()
				m := &model[i]
				kind := 2 // h0 is only reweighted
				if i > 0 {
					kind = rng.IntN(3)
				}
				w := rng.IntN(10)
				if i == 0 {
					w = 1 + rng.IntN(9)
				}
				var u control.Upstream
				var err error
				var want int // the status a refusal must have; 0 = it must succeed
				var next hostModel
				switch kind {
				case 0:
					u, err = c.AddHost(ctx, "u", "p", control.HostSpec{ID: id, Address: backs[i].Addr(), Weight: w})
					want, next = http.StatusConflict, hostModel{true, w}
					nAdd.Add(1)
				case 1:
					u, err = c.RemoveHost(ctx, "u", "p", id)
					want, next = http.StatusNotFound, hostModel{}
					nRemove.Add(1)
				case 2:
					u, err = c.PatchHost(ctx, "u", "p", id, control.HostPatch{Weight: &w})
					want, next = http.StatusNotFound, hostModel{true, w}
					nPatch.Add(1)
				}
				if kind == 0 && !m.present || kind != 0 && m.present {
					want = 0
				}
				var se *control.StatusError
				switch {
				case want == 0 && err != nil:
					fail("editor %d, op %d on %s (model %+v): %v", e, kind, id, *m, err)
				case want != 0 && (!errors.As(err, &se) || se.Code != want):
					fail("editor %d, op %d on %s (model %+v): got %v, want a %d", e, kind, id, *m, err, want)
				case want != 0:
					nRefused.Add(1)
				default:
					// The answer shows the upstream after the edit: this
					// host as the model now has it.
					*m = next
					if kind == 1 {
						removedAt[i].CompareAndSwap(0, time.Now().UnixNano())
					}
					got, ok := hostInView(u, id)
					if ok != m.present || ok && (got.Weight != m.weight || got.Address != backs[i].Addr()) {
						fail("editor %d, op %d on %s: the answer shows %+v (present %v), want %+v", e, kind, id, got, ok, *m)
					}
				}
				hostMu[i].Unlock()
				time.Sleep(50 * time.Millisecond) // about 20 edits/s each
			}
		})
	}
	editors.Wait()
	editsEnd := time.Now().UnixNano()

	// Every stream does one more round trip after the last edit, so that
	// each stream on a removed host is seen alive after its removal.
	for wait := time.Now().Add(15 * time.Second); ; {
		behind := 0
		for _, st := range streams {
			if st.lastOK.Load() <= editsEnd {
				behind++
			}
		}
		if behind == 0 || nFail.Load() > 0 {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("%d streams made no round trip in the 15s after the last edit", behind)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(newConns)
	newLoad.Wait()

	// The final state is the model: in the API's view over the socket, in
	// the live pool selection uses, and in what selection does.
	want := map[string]int{} // id -> weight
	total := 0
	for i, m := range model {
		if m.present {
			want[fmt.Sprint("h", i)] = m.weight
			total += m.weight
		}
	}
	c := control.NewClient(sock)
	defer c.Close()
	view, err := c.Upstream(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	gotView := map[string]int{}
	for _, p := range view.Pools {
		for _, h := range p.Hosts {
			gotView[h.ID] = h.Weight
		}
	}
	if !reflect.DeepEqual(gotView, want) {
		t.Errorf("final state in the API view %v, want the last edits' %v", gotView, want)
	}
	gotLive := map[string]int{}
	lu := s.LiveUpstream("u")
	if lu == nil || len(lu.Pools()) != 1 {
		t.Fatalf("live upstream u: %v", lu)
	}
	for _, h := range lu.Pools()[0].Hosts {
		gotLive[h.ID] = h.Weight()
		if i := hostOf(h.ID + "\n"); i < 0 || h.Address != backs[i].Addr() || h.State() != pool.StateUp {
			t.Errorf("live host %s: address %s, state %v", h.ID, h.Address, h.State())
		}
	}
	if !reflect.DeepEqual(gotLive, want) {
		t.Errorf("final state in the live pool %v, want the last edits' %v", gotLive, want)
	}
	// One smooth-WRR cycle (total picks) gives each host exactly its weight.
	picked := map[string]int{}
	for n := range total {
		tag, err := tagEcho(addr, fmt.Sprintf("cycle %d\n", n))
		if err != nil {
			t.Fatalf("new connection after the edits: %v", err)
		}
		picked[strings.TrimSpace(tag)]++
	}
	for id, w := range want {
		if w == 0 {
			delete(want, id)
		}
	}
	if !reflect.DeepEqual(picked, want) {
		t.Errorf("%d new connections after the edits reached %v, want the weights %v", total, picked, want)
	}
	// The saved edits give the same state on a restart.
	restarted := map[string]int{}
	for _, h := range hostsOf(newServer(t, path, toml), "u") {
		restarted[h.ID] = h.Weight
	}
	if !reflect.DeepEqual(restarted, gotView) {
		t.Errorf("after a restart from the saved edits %v, want %v", restarted, gotView)
	}

	close(stopLoad)
	load.Wait()
	var rounds int64
	onRemoved, afterRemoval := 0, 0
	for _, st := range streams {
		rounds += st.rounds.Load()
		if removedAt[st.host].Load() != 0 {
			onRemoved++
			if st.afterRemoval.Load() > 0 {
				afterRemoval++
			}
		}
	}
	removed := 0
	for i := range removedAt {
		if removedAt[i].Load() != 0 {
			removed++
		}
	}
	t.Logf("%v: %d edits (%d add, %d remove, %d reweight; %d refused as expected), %d stream round trips, %d new connections; "+
		"streams on removed hosts %d/%d, alive after the removal %d; broken streams or failed connections: %d",
		dur, nAdd.Load()+nRemove.Load()+nPatch.Load(), nAdd.Load(), nRemove.Load(), nPatch.Load(), nRefused.Load(),
		rounds, newOK.Load(), onRemoved, nStreams, afterRemoval, nFail.Load())
	for _, f := range failures {
		t.Error(f)
	}
	if n := nFail.Load(); n > int64(len(failures)) {
		t.Errorf("... %d failures in all", n)
	}
	if removed != nHosts-1 {
		t.Errorf("%d of the %d removable hosts were removed during the run: the test proves too little", removed, nHosts-1)
	}
	if afterRemoval != onRemoved || onRemoved < nStreams/2 {
		t.Errorf("%d streams were on removed hosts, %d of them seen alive after the removal", onRemoved, afterRemoval)
	}
	if newFailed.Load() != 0 {
		t.Errorf("%d new connections failed while h0 was up", newFailed.Load())
	}
}

// hostInView finds host id in u.
func hostInView(u control.Upstream, id string) (control.Host, bool) {
	for _, p := range u.Pools {
		for _, h := range p.Hosts {
			if h.ID == id {
				return h, true
			}
		}
	}
	return control.Host{}, false
}

// tagEcho opens a connection to a Tagger backend through addr: it returns
// the tag line, after checking that msg comes back intact.
func tagEcho(addr, msg string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	tag, err := r.ReadString('\n')
	if err != nil {
		return tag, fmt.Errorf("tag: %w", err)
	}
	if _, err := c.Write([]byte(msg)); err != nil {
		return tag, err
	}
	if got, err := r.ReadString('\n'); err != nil || got != msg {
		return tag, fmt.Errorf("echo %q: %v", got, err)
	}
	return tag, nil
}

func echoLine(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("new\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "new\n" {
		return fmt.Errorf("echo %q: %v", got, err)
	}
	return nil
}

// TestReloadRefusesControlChanges: the [control] section is set up once, at
// start (the control server gets its socket, mode, group and allow_uids
// then). A reload that changes any of it is refused, naming the keys, over
// the real control socket (422) and changes nothing; the same settings
// spelled differently (mode "600", allow_uids reordered) are no change.
func TestReloadRefusesControlChanges(t *testing.T) {
	a := testbackend.New(t, testbackend.Tagger("a"))
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	const tmpl = `
[control]
socket = %q
state_dir = %q
%s

[[listener]]
name = "front"
listen = "127.0.0.1:0"
upstream = "u"

[upstream.u]
[[upstream.u.pool]]
name = "p"
hosts = [ { address = %q, id = "a", weight = %d } ]
`
	sock, state := filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "state")
	file := func(control string, weight int) string {
		return fmt.Sprintf(tmpl, sock, state, control, a.Addr(), weight)
	}
	const base = "mode = \"0600\"\nallow_uids = [1001, 1002]"
	s := newServer(t, path, file(base, 1))
	runServer(t, s)
	_, c := startControl(t, s, control.ServerConfig{})
	ctx := context.Background()
	before := s.Upstreams()

	for _, tc := range []struct {
		name, control string
		want          []string // keys the error must name
	}{
		{"uid added", "mode = \"0600\"\nallow_uids = [1001, 1002, 1003]", []string{"control.allow_uids"}},
		{"uid taken out", "mode = \"0600\"\nallow_uids = [1001]", []string{"control.allow_uids"}},
		{"uids dropped", "mode = \"0600\"", []string{"control.allow_uids"}},
		{"mode", "mode = \"0660\"\nallow_uids = [1001, 1002]", []string{"control.mode"}},
		{"group", "mode = \"0600\"\ngroup = \"0\"\nallow_uids = [1001, 1002]", []string{"control.group"}},
		{"mode and uids", "mode = \"0666\"\nallow_uids = [0]", []string{"control.mode", "control.allow_uids"}},
		{"engine loops", base + fmt.Sprintf("\n[engine]\nloops = %d", splice.DefaultLoops()+1), []string{"engine.loops"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The weight change shows that nothing of the file applied.
			if err := os.WriteFile(path, []byte(file(tc.control, 5)), 0o644); err != nil {
				t.Fatal(err)
			}
			err := c.Reload(ctx)
			var se *control.StatusError
			if !errors.As(err, &se) || se.Code != 422 {
				t.Fatalf("reload: %v, want a 422", err)
			}
			for _, k := range tc.want {
				if !strings.Contains(se.Message, k) {
					t.Errorf("error %q does not name %s", se.Message, k)
				}
			}
			if !strings.Contains(se.Message, "restart l4lb") {
				t.Errorf("error %q does not say to restart", se.Message)
			}
			if after := s.Upstreams(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused reload changed the upstreams:\n%v\n%v", before, after)
			}
		})
	}
	if n := s.ReloadFailures(); n != 7 {
		t.Errorf("reload failures = %d, want 7", n)
	}
	// The same settings spelled otherwise are no change: the reload applies
	// (the engine's default loop count written out is the default).
	same := fmt.Sprintf("mode = \"600\"\nallow_uids = [1002, 1001, 1001]\n[engine]\nloops = %d", splice.DefaultLoops())
	if err := os.WriteFile(path, []byte(file(same, 5)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(ctx); err != nil {
		t.Fatalf("reload with the same [control] spelled otherwise: %v", err)
	}
	if w := hostsOf(s, "u")["p/a"].Weight; w != 5 {
		t.Errorf("weight after the good reload = %d, want 5", w)
	}
}
