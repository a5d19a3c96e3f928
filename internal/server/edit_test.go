package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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

// TestEditsUnderLoad: 200 long-lived streams and a stream of new
// connections while 10 clients add, remove and reweight hosts: no
// established connection breaks, no new connection fails while a host is
// up (one stays up throughout), and the final state is the last edits'.
func TestEditsUnderLoad(t *testing.T) {
	dur := 30 * time.Second
	if testing.Short() {
		dur = 5 * time.Second
	}
	const nBackends = 6
	var backs []*testbackend.Server
	for i := 0; i < nBackends; i++ {
		backs = append(backs, testbackend.New(t, testbackend.Echo))
	}
	dir := t.TempDir()
	s := newServer(t, filepath.Join(dir, "l4lb.toml"), fmt.Sprintf(editable, filepath.Join(dir, "state"), "60s", backs[0].Addr()))
	addr, _ := runServer(t, s)

	var broken, failed, newOK, rounds atomic.Int64
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	// 200 long-lived streams, each echoing a line every ~100ms.
	for i := 0; i < 200; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		load.Add(1)
		go func(i int, c net.Conn) {
			defer load.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			for n := 0; ; n++ {
				select {
				case <-stopLoad:
					return
				case <-time.After(time.Duration(50+rand.IntN(100)) * time.Millisecond):
				}
				msg := fmt.Sprintf("%d/%d\n", i, n)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte(msg)); err != nil {
					broken.Add(1)
					return
				}
				if got, err := r.ReadString('\n'); err != nil || got != msg {
					broken.Add(1)
					return
				}
				rounds.Add(1)
			}
		}(i, c)
	}
	// New connections, one after another.
	load.Add(1)
	go func() {
		defer load.Done()
		for {
			select {
			case <-stopLoad:
				return
			default:
			}
			if err := echoLine(addr); err != nil {
				failed.Add(1)
			} else {
				newOK.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	// 10 editors on hosts 1..5 (host a, backs[0], is never touched).
	var edits sync.WaitGroup
	var editsDone atomic.Int64
	deadline := time.Now().Add(dur)
	for e := 0; e < 10; e++ {
		edits.Add(1)
		go func(e int) {
			defer edits.Done()
			rng := rand.New(rand.NewPCG(uint64(e), 1))
			for time.Now().Before(deadline) {
				i := 1 + rng.IntN(nBackends-1)
				id := fmt.Sprintf("h%d", i)
				var err error
				switch rng.IntN(3) {
				case 0:
					err = s.AddHost("u", "p", control.HostSpec{Address: backs[i].Addr(), ID: id, Weight: 1 + rng.IntN(5)})
				case 1:
					err = s.RemoveHost("u", "p", id)
				case 2:
					w := rng.IntN(10)
					err = s.PatchHost("u", "p", id, control.HostPatch{Weight: &w})
				}
				if err != nil && !errors.Is(err, control.ErrNotFound) && !errors.Is(err, control.ErrConflict) {
					t.Errorf("edit: %v", err)
				}
				editsDone.Add(1)
				time.Sleep(50 * time.Millisecond) // about 20 edits/s each
			}
		}(e)
	}
	edits.Wait()
	// The final state is what the last edits made: settle it explicitly.
	for i := 1; i < nBackends; i++ {
		s.RemoveHost("u", "p", fmt.Sprintf("h%d", i))
	}
	s.AddHost("u", "p", control.HostSpec{Address: backs[1].Addr(), ID: "final", Weight: 7})
	close(stopLoad)
	load.Wait()
	hosts := hostsOf(s, "u")
	if len(hosts) != 2 || hosts["p/final"].Weight != 7 || hosts["p/a"].Weight != 1 {
		t.Errorf("final state %v", hosts)
	}
	t.Logf("%v: %d edits, %d stream round trips, %d new connections; broken streams %d, failed new connections %d",
		dur, editsDone.Load(), rounds.Load(), newOK.Load(), broken.Load(), failed.Load())
	if broken.Load() != 0 || failed.Load() != 0 {
		t.Fatalf("%d established connections broken, %d new connections failed", broken.Load(), failed.Load())
	}
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
	if n := s.ReloadFailures(); n != 6 {
		t.Errorf("reload failures = %d, want 6", n)
	}
	// The same settings spelled otherwise are no change: the reload applies.
	if err := os.WriteFile(path, []byte(file("mode = \"600\"\nallow_uids = [1002, 1001, 1001]", 5)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(ctx); err != nil {
		t.Fatalf("reload with the same [control] spelled otherwise: %v", err)
	}
	if w := hostsOf(s, "u")["p/a"].Weight; w != 5 {
		t.Errorf("weight after the good reload = %d, want 5", w)
	}
}
