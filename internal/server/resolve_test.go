package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/testbackend"
	"github.com/l4lb/l4lb/pool"
)

// within runs f and reports an error if it has not returned after d: for
// calls that must not wait for a blocked resolver. ok is whether it did.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) (v T, ok bool) {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v = <-done:
		return v, true
	case <-time.After(d):
		t.Errorf("%s did not return within %v while a name resolution was blocked", what, d)
		return v, false
	}
}

// TestSlowResolutionBlocksNothing: a host added by name whose resolution
// hangs delays that edit only. Meanwhile the drain loop closes a drained
// host's connections at their deadline, Status answers, and another edit
// goes through; the same holds for a reload, whose journal replay resolves
// the name again.
func TestSlowResolutionBlocksNothing(t *testing.T) {
	a := testbackend.New(t, testbackend.Echo)
	b := testbackend.New(t, testbackend.Tagger("b"))
	dir := t.TempDir()
	path := filepath.Join(dir, "l4lb.toml")
	const drainTimeout = time.Second
	s := newServer(t, path, fmt.Sprintf(editable, filepath.Join(dir, "state"), drainTimeout.String(), a.Addr()))
	// The resolver of "slow.test:*" reports each call on entered, then
	// waits for a token on proceed (closed at the end: all go).
	entered := make(chan string, 8)
	proceed := make(chan struct{})
	s.resolveHost = func(ctx context.Context, addr string) (string, string, error) {
		if !strings.HasPrefix(addr, "slow.test:") {
			return config.ResolveHost(ctx, addr)
		}
		entered <- addr
		<-proceed // ignores ctx: it hangs for as long as the test says
		return "tcp", b.Addr(), nil
	}
	addr, _ := runServer(t, s)
	var edits sync.WaitGroup // no edit left running after the test
	defer edits.Wait()
	defer close(proceed)

	stream, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	sr := bufio.NewReader(stream)
	stream.SetDeadline(time.Now().Add(20 * time.Second))
	stream.Write([]byte("hello\n"))
	if got, err := sr.ReadString('\n'); err != nil || got != "hello\n" {
		t.Fatalf("stream: %q %v", got, err)
	}

	// a drains: its stream is to be closed at the deadline.
	if err := s.HostAction("u", "p", "a", control.ActionDrain); err != nil {
		t.Fatal(err)
	}
	var deadline time.Time
	for _, h := range s.Status().Hosts {
		if h.ID == "a" {
			deadline = h.DrainDeadline
		}
	}
	if deadline.IsZero() {
		t.Fatal("no drain deadline for a")
	}
	added := make(chan error, 1)
	edits.Go(func() {
		added <- s.AddHost("u", "p", control.HostSpec{ID: "slow", Address: "slow.test:6379", Weight: 1})
	})
	<-entered
	if !time.Now().Before(deadline) {
		t.Fatalf("the resolution began only after the drain deadline: nothing to prove (machine too slow?)")
	}

	// While it hangs: the drain deadline is enforced, Status answers, and
	// another edit applies.
	stream.SetReadDeadline(deadline.Add(2 * time.Second))
	if _, err := sr.ReadString('\n'); err != io.EOF {
		t.Errorf("drained stream at its deadline, while a resolution hung: %v, want EOF", err)
	} else {
		late := time.Since(deadline)
		t.Logf("drained stream closed %v after its deadline while a name resolution hung", late.Round(100*time.Microsecond))
	}
	if st, ok := within(t, 2*time.Second, "Status", s.Status); ok {
		if len(st.Hosts) != 1 || st.Hosts[0].ID != "a" || st.Hosts[0].State != pool.StateDraining {
			t.Errorf("status while resolving: %+v", st.Hosts)
		}
	}
	w := 3
	if err, ok := within(t, 2*time.Second, "PatchHost", func() error {
		return s.PatchHost("u", "p", "a", control.HostPatch{Weight: &w})
	}); ok && err != nil {
		t.Errorf("PatchHost while resolving: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	select {
	case err := <-added:
		t.Fatalf("AddHost returned (%v) before its name resolved", err)
	default:
	}

	proceed <- struct{}{}
	if err := <-added; err != nil {
		t.Fatalf("AddHost once resolved: %v", err)
	}
	if h := hostsOf(s, "u")["p/slow"]; h.Address != "slow.test:6379" {
		t.Fatalf("host slow after its resolution: %+v", h)
	}
	if got := tag(t, addr); got != "b" {
		t.Fatalf("a connection after the edit reached %q, want b (slow.test resolved to b)", got)
	}

	// A reload replays the journal: the name is resolved again, and again
	// nothing waits for it but the reload.
	reloaded := make(chan error, 1)
	edits.Go(func() { reloaded <- s.Reload() })
	if got := <-entered; got != "slow.test:6379" {
		t.Fatalf("reload resolved %q", got)
	}
	within(t, 2*time.Second, "Status during a reload", s.Status)
	if t.Failed() {
		t.FailNow()
	}
	proceed <- struct{}{}
	if err := <-reloaded; err != nil {
		t.Fatalf("reload: %v", err)
	}
	if h := hostsOf(s, "u")["p/slow"]; h.Address != "slow.test:6379" || h.Source != control.SourceAPI {
		t.Fatalf("host slow after the reload: %+v", h)
	}
}
