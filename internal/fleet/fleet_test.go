package fleet

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLog(t *testing.T) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

const key = "l4lb/test/edits"

func newStore(t *testing.T, addr string) *Store {
	t.Helper()
	s, err := New(Config{
		Client: discovery.Config{Address: addr, Wait: 2 * time.Second, BackoffMin: 20 * time.Millisecond,
			BackoffMax: 100 * time.Millisecond, StartupTimeout: 300 * time.Millisecond, Margin: 500 * time.Millisecond},
		Key: key, WriteTimeout: 300 * time.Millisecond,
	}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// watching runs s's watch and collects what it reports.
type watching struct {
	mu   sync.Mutex
	got  []Value
	kick chan struct{}
}

func startWatch(t *testing.T, s *Store) *watching {
	w := &watching{kick: make(chan struct{}, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx, func(v Value) {
			w.mu.Lock()
			w.got = append(w.got, v)
			w.mu.Unlock()
			w.kick <- struct{}{}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// next waits for the next value reported.
func (w *watching) next(t *testing.T, within time.Duration) Value {
	t.Helper()
	select {
	case <-w.kick:
	case <-time.After(within):
		t.Fatalf("no value within %s", within)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got[len(w.got)-1]
}

// until waits for a value that ok accepts (a fresh read may repeat one).
func (w *watching) until(t *testing.T, within time.Duration, ok func(Value) bool) Value {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := w.next(t, time.Until(deadline))
		if ok(v) {
			return v
		}
	}
}

func TestCommitCAS(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	s := newStore(t, a.Addr())
	ctx := context.Background()

	v, err := s.Get(ctx)
	if err != nil || v.Data != nil || v.Index != 0 {
		t.Fatalf("absent key: %+v %v", v, err)
	}
	if err := s.Commit(ctx, []byte("one"), 0); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := s.Commit(ctx, []byte("again"), 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over an existing key: %v", err)
	}
	v, err = s.Get(ctx)
	if err != nil || string(v.Data) != "one" || v.Index == 0 {
		t.Fatalf("after create: %+v %v", v, err)
	}
	if err := s.Commit(ctx, []byte("two"), v.Index-1); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale index: %v", err)
	}
	if err := s.Commit(ctx, []byte("two"), v.Index); err != nil {
		t.Fatalf("update: %v", err)
	}
	if data, _, _ := a.KV(key); string(data) != "two" {
		t.Fatalf("stored %q", data)
	}
}

// TestCommitRace: writers that read the same index send their writes
// together; exactly one wins.
func TestCommitRace(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	ctx := context.Background()
	const n = 3
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = newStore(t, a.Addr())
	}
	if err := stores[0].Commit(ctx, []byte("base"), 0); err != nil {
		t.Fatal(err)
	}
	v, _ := stores[0].Get(ctx)
	a.HoldPuts(n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Commit(ctx, []byte{byte('a' + i)}, v.Index)
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Errorf("writer %d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d winners, want 1: %v", won, errs)
	}
}

func TestCommitUnavailable(t *testing.T) {
	a := consultest.New()
	s := newStore(t, a.Addr())
	ctx := context.Background()
	a.SetFault(consultest.Hang)
	start := time.Now()
	err := s.Commit(ctx, []byte("x"), 0)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("hanging agent: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a hanging agent held the write %s (write timeout 300ms)", d)
	}
	a.SetFault(consultest.Error500)
	if err := s.Commit(ctx, []byte("x"), 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("500: %v", err)
	}
	a.Close()
	if _, err := s.Get(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed agent: %v", err)
	}
}

// TestWatch: the first value, then each change within one blocking round
// trip; a failure is followed by a fresh read once the agent answers; an
// index that goes backwards gives a fresh read.
func TestWatch(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	s := newStore(t, a.Addr())
	w := startWatch(t, s)
	if v := w.next(t, time.Second); v.Data != nil || v.Fresh {
		t.Fatalf("first value: %+v (absent, and not a restore)", v)
	}
	<-s.Ready()
	start := time.Now()
	a.PutKV(key, []byte("one"))
	v := w.next(t, time.Second)
	if string(v.Data) != "one" || v.Fresh {
		t.Fatalf("change: %+v", v)
	}
	t.Logf("change seen in %s", time.Since(start))
	a.Touch() // the index moves, the key does not: nothing reported
	a.PutKV(key, []byte("two"))
	if v := w.next(t, time.Second); string(v.Data) != "two" {
		t.Fatalf("second change: %+v", v)
	}

	a.SetFault(consultest.Error500)
	deadline := time.Now().Add(2 * time.Second)
	for s.Status().Failures < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no failures counted: %+v", s.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.SetFault(consultest.None)
	if v := w.next(t, time.Second); string(v.Data) != "two" {
		t.Fatalf("after recovery: %+v", v)
	}
	if st := s.Status(); st.Failures != 0 || st.LastError != "" || !st.Read {
		t.Errorf("status after recovery: %+v", st)
	}

	// A restored snapshot, while the watch blocks (a query sent after it
	// would wait its whole wait first: the index it sends is in the future).
	waitBlocked(t, a)
	a.SetIndex(1)
	a.PutKV(key, []byte("three"))
	w.until(t, time.Second, func(v Value) bool { return string(v.Data) == "three" })
	a.DeleteKV(key)
	w.until(t, time.Second, func(v Value) bool { return v.Data == nil && v.Index == 0 })
}

// waitBlocked waits until the watch's query is parked at the agent.
func waitBlocked(t *testing.T, a *consultest.Agent) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for a.Blocked() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no query blocked at the agent within 2s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWatchStartDown: with no agent, Ready comes after the startup timeout
// and the watch picks the value up once the agent is there.
func TestWatchStartDown(t *testing.T) {
	a := consultest.New()
	addr := a.Addr()
	a.Close()
	s := newStore(t, addr)
	w := startWatch(t, s)
	select {
	case <-s.Ready():
	case <-time.After(2 * time.Second):
		t.Fatal("not ready")
	}
	if st := s.Status(); st.Read || st.Failures == 0 {
		t.Fatalf("status: %+v", st)
	}
	b, err := consultest.NewAt(addr)
	if err != nil {
		t.Skipf("port taken again: %v", err)
	}
	defer b.Close()
	b.PutKV(key, []byte("x"))
	if v := w.next(t, 2*time.Second); string(v.Data) != "x" {
		t.Fatalf("after the agent came: %+v", v)
	}
}

// TestWatchHung: an agent that takes the watch's query and never answers
// (a SIGSTOPped one) is given up on at the request's deadline, wait +
// wait/16 + margin, and counted as a failure; once it answers again the
// watch reads the key at once.
func TestWatchHung(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	s := newStore(t, a.Addr())
	c := s.cfg.Client
	limit := c.RequestTimeout(c.Wait)
	w := startWatch(t, s)
	w.next(t, time.Second)
	waitBlocked(t, a)
	a.SetFault(consultest.Hang)
	a.PutKV(key, []byte("one")) // answers the blocked query; the next one hangs
	if v := w.next(t, time.Second); string(v.Data) != "one" {
		t.Fatalf("change: %+v", v)
	}
	t0 := time.Now()
	for s.Status().Failures == 0 {
		if time.Since(t0) > limit+2*time.Second {
			t.Fatalf("hung query not given up within %s (limit %s)", time.Since(t0), limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(t0)
	st := s.Status()
	t.Logf("hung agent: the watch gave up after %s (wait %s + wait/16 + margin %s = %s): %s",
		took.Round(time.Millisecond), c.Wait, c.Margin, limit, st.LastError)
	if took < limit-50*time.Millisecond || took > limit+500*time.Millisecond {
		t.Errorf("gave up after %s, want about %s", took, limit)
	}
	if !strings.Contains(st.LastError, "no answer within") {
		t.Errorf("last error %q", st.LastError)
	}
	a.SetFault(consultest.None)
	a.PutKV(key, []byte("two"))
	if v := w.until(t, 2*time.Second, func(v Value) bool { return string(v.Data) == "two" }); v.Fresh {
		t.Errorf("after recovery: %+v", v)
	}
}

// TestWatchIndexZero: an agent stuck at X-Consul-Index 0 answers every
// blocking query at once. The watch sends index 1 instead (never 0, which
// would not block) and pauses backoff_min between such answers instead of
// spinning; a real change still comes through.
func TestWatchIndexZero(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.PutKV(key, []byte("one"))
	a.SetFault(consultest.ZeroIndex)
	s := newStore(t, a.Addr())
	w := startWatch(t, s)
	if v := w.next(t, time.Second); string(v.Data) != "one" {
		t.Fatalf("first value: %+v", v)
	}
	before, t0 := a.KVGets(), time.Now()
	// A window over which to measure the query rate.
	time.Sleep(time.Second)
	n, window := a.KVGets()-before, time.Since(t0)
	bound := int64(window/s.cfg.Client.BackoffMin) + 1
	t.Logf("index stuck at 0: %d queries in %s (%.0f/min; at most %d with backoff_min %s)",
		n, window.Round(time.Millisecond), float64(n)/window.Minutes(), bound, s.cfg.Client.BackoffMin)
	if n > bound {
		t.Errorf("%d queries in %s: the loop is not rate-limited", n, window)
	}
	if q := a.LastQuery(); q.Get("index") != "1" {
		t.Errorf("index sent = %q, want 1 (0 clamped)", q.Get("index"))
	}
	a.PutKV(key, []byte("two"))
	if v := w.next(t, time.Second); string(v.Data) != "two" {
		t.Fatalf("change with the index stuck at 0: %+v", v)
	}
}
