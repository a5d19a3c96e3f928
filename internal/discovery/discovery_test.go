package discovery

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/l4lb/l4lb/internal/discovery/consultest"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func logger() zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// update is one Sink.Update call.
type update struct {
	key string
	in  []Instance
	src Source
	at  time.Time
}

// recSink records what the watchers report.
type recSink struct {
	updates chan update
	mu      sync.Mutex
	errs    []error
	recov   int
	errAt   time.Time
}

func newSink() *recSink { return &recSink{updates: make(chan update, 1000)} }

func (s *recSink) Update(w Watch, in []Instance, src Source) {
	s.updates <- update{key: w.Key(), in: in, src: src, at: time.Now()}
}

func (s *recSink) Error(w Watch, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errAt.IsZero() {
		s.errAt = time.Now()
	}
	s.errs = append(s.errs, err)
}

func (s *recSink) Recovered(w Watch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recov++
}

func (s *recSink) counts() (errs, recovered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.errs), s.recov
}

// next waits for the next update.
func (s *recSink) next(t *testing.T, within time.Duration) update {
	t.Helper()
	select {
	case u := <-s.updates:
		return u
	case <-time.After(within):
		t.Fatalf("no update within %s", within)
	}
	return update{}
}

// none asserts that no update comes for d.
func (s *recSink) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case u := <-s.updates:
		t.Fatalf("unexpected update: %d instances from %s", len(u.in), u.src)
	case <-time.After(d):
	}
}

func ids(in []Instance) []string {
	out := []string{}
	for _, x := range in {
		out = append(out, x.ID)
	}
	return out
}

// testConfig is quick: short waits and backoffs.
func testConfig(addr string) Config {
	return Config{
		Address: addr, Wait: 2 * time.Second, BackoffMin: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond,
		StartupTimeout: time.Second, Margin: 300 * time.Millisecond, EmptyGrace: 600 * time.Millisecond,
	}
}

// start runs a Discovery with cfg on watches until the test ends.
func start(t *testing.T, cfg Config, ws ...Watch) (*Discovery, *recSink) {
	t.Helper()
	return startLog(t, cfg, logger(), ws...)
}

// startLog is start with the discovery logging to log.
func startLog(t *testing.T, cfg Config, log zerolog.Logger, ws ...Watch) (*Discovery, *recSink) {
	t.Helper()
	sink := newSink()
	d, err := New(cfg, sink, log)
	if err != nil {
		t.Fatal(err)
	}
	d.SetWatches(ws)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of its context ending")
		}
	})
	return d, sink
}

// waitBlocked waits until n queries are parked at the agent.
func waitBlocked(t *testing.T, a *consultest.Agent, n int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for a.Blocked() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d queries blocked at the agent after 2s, want %d", a.Blocked(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

var redis = Watch{Service: "redis", PassingOnly: true}

func TestWatchKey(t *testing.T) {
	for _, tt := range []struct {
		w    Watch
		want string
	}{
		{Watch{Service: "redis"}, "redis"},
		{Watch{Service: "redis", PassingOnly: true, Tags: []string{"a", "b"}}, "redis?passing=1&tag=a&tag=b"},
		{Watch{Service: "a b", Datacenter: "dc2", Near: "_agent"}, "a%20b?dc=dc2&near=_agent"},
		{Watch{Service: "x", Tags: []string{"a&passing=1"}}, "x?tag=a%26passing%3D1"},
	} {
		if got := tt.w.Key(); got != tt.want {
			t.Errorf("%+v: key %q, want %q", tt.w, got, tt.want)
		}
	}
}

func TestInstances(t *testing.T) {
	mk := func(id, addr, nodeIP string, port int, w api.AgentWeights, checks ...string) *api.ServiceEntry {
		e := &api.ServiceEntry{Node: &api.Node{Node: "n-" + id, Address: nodeIP}, Service: &api.AgentService{ID: id, Address: addr, Port: port, Weights: w}}
		for i, c := range checks {
			cid := "c" + string(rune('0'+i))
			if c == "maint" {
				cid, c = api.ServiceMaintPrefix+id, api.HealthCritical
			}
			e.Checks = append(e.Checks, &api.HealthCheck{CheckID: cid, Status: c})
		}
		return e
	}
	w := api.AgentWeights{Passing: 10, Warning: 2}
	got := instances([]*api.ServiceEntry{
		mk("a", "10.0.0.2", "10.1.0.1", 6379, w, api.HealthPassing),
		mk("b", "", "10.1.0.1", 6379, w, api.HealthPassing, api.HealthWarning), // node address, warning weight
		mk("c", "10.0.0.3", "", 6379, w, "maint"),                              // maintenance: out
		mk("d", "10.0.0.4", "", 0, w),                                          // no port: out
		mk("e", "10.0.0.2", "", 6379, api.AgentWeights{Passing: 5000}),         // same address:port as a: one host
		mk("f", "::1", "", 6380, api.AgentWeights{}, api.HealthCritical),       // no weights: 1
		nil,
	}, zerolog.Nop())
	want := []Instance{
		{ID: "10.0.0.2:6379", Address: "10.0.0.2", Port: 6379, Weight: 10, Status: "passing", Node: "n-a", ServiceID: "a"},
		{ID: "10.1.0.1:6379", Address: "10.1.0.1", Port: 6379, Weight: 2, Status: "warning", Node: "n-b", ServiceID: "b"},
		{ID: "[::1]:6380", Address: "::1", Port: 6380, Weight: 1, Status: "critical", Node: "n-f", ServiceID: "f"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("instances:\n got %+v\nwant %+v", got, want)
	}
}

// TestFollow: instances come and go; the sink follows within one round
// trip of the blocking query, which is measured.
func TestFollow(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 6379, Tags: []string{"primary"}})
	a.Register("redis", consultest.Instance{Address: "127.0.0.3", Port: 6379, Tags: []string{"replica"}, Weights: api.AgentWeights{Passing: 5, Warning: 1}})
	a.Register("redis", consultest.Instance{Address: "127.0.0.4", Port: 6379, Status: api.HealthCritical})
	a.Register("other", consultest.Instance{Address: "127.0.0.9", Port: 1})
	cfg := testConfig(a.Addr())
	cfg.Wait = 5 * time.Second // an update must not wait for the wait to run out
	primary := Watch{Service: "redis", Tags: []string{"primary"}, PassingOnly: true, Datacenter: "dc1", Near: "_agent"}
	d, sink := start(t, cfg, redis, primary)

	got := map[string][]string{}
	for range 2 {
		u := sink.next(t, 2*time.Second)
		got[u.key] = ids(u.in)
		if u.src != SourceConsul {
			t.Errorf("source %s", u.src)
		}
	}
	if want := []string{"127.0.0.2:6379", "127.0.0.3:6379"}; !slices.Equal(got[redis.Key()], want) {
		t.Errorf("redis = %v, want %v (critical one left out)", got[redis.Key()], want)
	}
	if want := []string{"127.0.0.2:6379"}; !slices.Equal(got[primary.Key()], want) {
		t.Errorf("primary = %v, want %v", got[primary.Key()], want)
	}
	<-d.Ready()
	waitBlocked(t, a, 2) // both watchers are parked in a query

	var worst time.Duration
	step := func(what string, f func(), want ...string) {
		t.Helper()
		t0 := time.Now()
		f()
		u := sink.next(t, time.Second)
		lat := u.at.Sub(t0)
		worst = max(worst, lat)
		t.Logf("%s: followed in %s", what, lat.Round(10*time.Microsecond))
		if u.key != redis.Key() || !slices.Equal(ids(u.in), want) {
			t.Fatalf("%s: got %s %v, want %v", what, u.key, ids(u.in), want)
		}
	}
	step("add", func() { a.Register("redis", consultest.Instance{Address: "127.0.0.5", Port: 6379}) },
		"127.0.0.2:6379", "127.0.0.3:6379", "127.0.0.5:6379")
	step("remove", func() { a.Deregister("redis", "127.0.0.3:6379") }, "127.0.0.2:6379", "127.0.0.5:6379")
	step("critical recovers", func() { a.SetStatus("redis", "127.0.0.4:6379", api.HealthPassing) },
		"127.0.0.2:6379", "127.0.0.4:6379", "127.0.0.5:6379")
	step("maintenance", func() { a.SetStatus("redis", "127.0.0.4:6379", api.HealthMaint) }, "127.0.0.2:6379", "127.0.0.5:6379")
	t.Logf("follow latency: worst %s over 4 changes (wait = %s)", worst.Round(10*time.Microsecond), cfg.Wait)
	if worst > 500*time.Millisecond {
		t.Errorf("follow latency %s: more than a round trip", worst)
	}

	// A warning instance takes its warning weight.
	a.Register("redis", consultest.Instance{Address: "127.0.0.6", Port: 6379, Weights: api.AgentWeights{Passing: 7, Warning: 3}, Status: api.HealthWarning})
	u := sink.next(t, time.Second)
	for _, in := range u.in {
		if in.ID == "127.0.0.6:6379" && (in.Weight != 3 || in.Status != "warning") {
			t.Errorf("warning instance %+v: want weight 3", in)
		}
	}

	// A new index with the same instances changes nothing.
	before := a.Requests()
	a.Touch()
	a.Touch()
	sink.none(t, 300*time.Millisecond)
	if n := a.Requests() - before; n < 2 {
		t.Errorf("%d queries after two touches: the watcher should have been woken", n)
	}

	q := a.LastQuery()
	for _, k := range []string{"stale", "index", "wait"} {
		if !q.Has(k) { // both watches send all three
			t.Errorf("query without %s: %v", k, q)
		}
	}
	st, ok := d.Status(primary.Key())
	if !ok || st.Source != SourceConsul || st.Index == 0 || st.Instances != 1 || st.Updated.IsZero() {
		t.Errorf("status = %+v", st)
	}
}

// TestQueryParams: datacenter, near, tags and passing reach the agent.
func TestQueryParams(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	w := Watch{Service: "db", Tags: []string{"b", "a"}, PassingOnly: true, Datacenter: "dc2", Near: "_agent"}
	_, sink := start(t, testConfig(a.Addr()), w)
	sink.next(t, 2*time.Second)
	q := a.LastQuery()
	if q.Get("dc") != "dc2" || q.Get("near") != "_agent" || !q.Has("passing") || !q.Has("stale") ||
		!slices.Equal(slices.Sorted(slices.Values(q["tag"])), []string{"a", "b"}) {
		t.Errorf("query = %v", q)
	}
}

// TestSharedWatch: pools that follow the same service share one watcher.
func TestSharedWatch(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 1, Tags: []string{"x", "y"}})
	w1 := Watch{Service: "redis", Tags: []string{"x", "y"}}
	w2 := Watch{Service: "redis", Tags: []string{"y", "x", "x"}}
	d, sink := start(t, testConfig(a.Addr()), w1, w2)
	u := sink.next(t, 2*time.Second)
	sink.none(t, 200*time.Millisecond)
	if u.key != "redis?tag=x&tag=y" {
		t.Errorf("key %q", u.key)
	}
	if q := a.Queries(w1.Key()); q.First != 1 {
		t.Errorf("the agent saw %d watchers of %s start, want 1", q.First, w1.Key())
	}
	// Changing the set: a new watch starts, a gone one stops.
	w3 := Watch{Service: "redis", Tags: []string{"x"}}
	d.SetWatches([]Watch{w3})
	u = sink.next(t, 2*time.Second)
	if u.key != w3.Key() {
		t.Errorf("key %q, want %q", u.key, w3.Key())
	}
	if _, ok := d.Status(w1.Key()); ok {
		t.Errorf("watch %s still running", w1.Key())
	}
}

// TestIndexBackwards: an index lower than the one sent resets the watcher
// to 0, so that it does not block on an index the agent will not reach
// for a long time.
func TestIndexBackwards(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	for i := range 20 {
		a.Touch()
		_ = i
	}
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 1})
	cfg := testConfig(a.Addr())
	cfg.Wait = 10 * time.Second
	_, sink := start(t, cfg, redis)
	sink.next(t, 2*time.Second)
	waitBlocked(t, a, 1)
	before := a.Requests()
	a.SetIndex(2) // a restored snapshot: 22 -> 2; wakes the blocked query
	// Parked again, two queries later (one that does not block, then one
	// on index 2), before the change below.
	for deadline := time.Now().Add(2 * time.Second); a.Requests() < before+2 || a.Blocked() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after the index went backwards: %d queries, %d blocked", a.Requests()-before, a.Blocked())
		}
	}
	t0 := time.Now()
	a.Register("redis", consultest.Instance{Address: "127.0.0.3", Port: 1}) // index 3, still < 22
	u := sink.next(t, 2*time.Second)
	t.Logf("after the index went backwards, followed a change in %s", time.Since(t0).Round(time.Millisecond))
	if len(u.in) != 2 {
		t.Errorf("got %v", ids(u.in))
	}
}

// TestIndexZero: an agent stuck at X-Consul-Index 0 answers every blocking
// query at once; the watcher clamps to 1 and rate-limits instead of
// spinning.
func TestIndexZero(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 1})
	a.SetFault(consultest.ZeroIndex)
	cfg := testConfig(a.Addr())
	cfg.BackoffMin = 100 * time.Millisecond
	_, sink := start(t, cfg, redis)
	sink.next(t, 2*time.Second)
	before := a.Requests()
	time.Sleep(time.Second)
	n := a.Requests() - before
	t.Logf("index stuck at 0: %d queries in 1s (%d/min)", n, n*60)
	if n > 11 { // at most one per BackoffMin (plus jitter)
		t.Errorf("%d queries in 1s with backoff_min 100ms: the loop is not rate-limited", n)
	}
	if q := a.LastQuery(); q.Get("index") != "1" {
		t.Errorf("index sent = %q, want 1 (clamped)", q.Get("index"))
	}
}

// TestTransientErrors: 500s, refused and reset connections are reported
// once, retried with backoff, and recovery is reported once.
func TestTransientErrors(t *testing.T) {
	for _, f := range []struct {
		name  string
		fault consultest.Fault
	}{{"500", consultest.Error500}, {"reset", consultest.Reset}} {
		t.Run(f.name, func(t *testing.T) {
			a := consultest.New()
			defer a.Close()
			a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 1})
			_, sink := start(t, testConfig(a.Addr()), redis)
			sink.next(t, 2*time.Second)
			a.SetFault(f.fault)
			a.Touch() // wake the blocked query: the next one fails
			deadline := time.Now().Add(2 * time.Second)
			for {
				if e, _ := sink.counts(); e > 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			a.SetFault(consultest.None)
			a.Register("redis", consultest.Instance{Address: "127.0.0.3", Port: 1})
			u := sink.next(t, 2*time.Second)
			if len(u.in) != 2 {
				t.Errorf("after recovery: %v", ids(u.in))
			}
			if e, r := sink.counts(); e != 1 || r != 1 {
				t.Errorf("errors reported %d, recoveries %d: want 1 and 1", e, r)
			}
		})
	}
}

// outageBound is the most requests a watcher may make in d while every
// request fails at once: the sum of the shortest delays backoff can give.
func outageBound(d, lo, hi time.Duration) int {
	n, spent := 1, time.Duration(0)
	for i := 1; ; i++ {
		base := lo
		for j := 1; j < i && base < hi; j++ {
			base *= 2
		}
		base = min(base, hi)
		spent += max(base/2, lo)
		if spent > d {
			return n
		}
		n++
	}
}

// TestBackoffBoundsRate: during an outage the request rate stays between
// what backoff allows with its shortest delays and with its longest (plus
// a little per request for the request itself): a constant retry at the
// floor breaks the upper bound, an uncapped one the lower. The rate is
// logged per minute. TestBackoffOutageHour does the same for the defaults
// over an hour on a fake clock.
func TestBackoffBoundsRate(t *testing.T) {
	for _, f := range []struct {
		name  string
		fault consultest.Fault // None: a closed port
	}{{"500", consultest.Error500}, {"refused", consultest.None}} {
		t.Run(f.name, func(t *testing.T) {
			cfg := testConfig("")
			var count func() int64 // nil: count the failures the status shows
			if f.fault == consultest.None {
				cfg.Address = closedPort(t)
			} else {
				a := consultest.New()
				defer a.Close()
				a.SetFault(f.fault)
				cfg.Address = a.Addr()
				count = a.Requests
			}
			t0 := time.Now()
			d, _ := start(t, cfg, redis)
			// A window over which to measure a rate, not a wait for an event.
			time.Sleep(3 * time.Second)
			var n int64
			if count != nil {
				n = count()
			} else {
				st, _ := d.Status(redis.Key())
				n = int64(st.Failures)
			}
			window := time.Since(t0)
			// Each failed request costs some time of its own (a few ms under
			// -race on a busy machine): 20ms is allowed for it. An uncapped
			// retry (50ms, 100ms, ... 1.6s) makes 6 requests in 3s; this
			// bound is 9 or more.
			const slack = 20 * time.Millisecond
			hi := outageBound(window, cfg.BackoffMin, cfg.BackoffMax)
			lo := outageMin(window, cfg.BackoffMin, cfg.BackoffMax, slack)
			t.Logf("outage (%s): %d requests in %s = %.0f/min (allowed %d..%d; backoff %s..%s)", f.name, n, window.Round(time.Millisecond),
				float64(n)/window.Minutes(), lo, hi, cfg.BackoffMin, cfg.BackoffMax)
			if n > int64(hi) {
				t.Errorf("%d requests in %s, more than backoff allows (%d)", n, window, hi)
			}
			if n < int64(lo) {
				t.Errorf("%d requests in %s, fewer than capped backoff gives (%d): the delay is not capped at %s", n, window, lo, cfg.BackoffMax)
			}
		})
	}
}

// TestHungAgent: an agent that accepts and never answers is abandoned
// after wait + wait/16 + margin, and reported.
func TestHungAgent(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.SetFault(consultest.Hang)
	cfg := testConfig(a.Addr())
	cfg.Wait = 800 * time.Millisecond
	cfg.StartupTimeout = 10 * time.Second // so the first request has the normal deadline
	limit := cfg.RequestTimeout(cfg.Wait)
	t0 := time.Now()
	_, sink := start(t, cfg, redis)
	deadline := time.Now().Add(limit + 2*time.Second)
	for time.Now().Before(deadline) {
		if e, _ := sink.counts(); e > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	sink.mu.Lock()
	at := sink.errAt
	sink.mu.Unlock()
	if at.IsZero() {
		t.Fatalf("hung agent not abandoned within %s", limit+2*time.Second)
	}
	took := at.Sub(t0)
	t.Logf("hung agent abandoned after %s (wait %s + wait/16 + margin %s = %s)", took.Round(time.Millisecond), cfg.Wait, cfg.Margin, limit)
	if took < limit-50*time.Millisecond || took > limit+500*time.Millisecond {
		t.Errorf("abandoned after %s, want about %s", took, limit)
	}
}

// TestEmptyGuard: an empty answer does not wipe a serving set unless it is
// confirmed: empty answers for EmptyGrace, over two answers at least.
func TestEmptyGuard(t *testing.T) {
	a := consultest.New()
	defer a.Close()
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 1})
	a.Register("redis", consultest.Instance{Address: "127.0.0.3", Port: 1})
	cfg := testConfig(a.Addr())
	d, sink := start(t, cfg, redis)
	sink.next(t, 2*time.Second)

	// A flap: every instance fails, then one comes back within the grace.
	a.SetStatus("redis", "127.0.0.2:1", api.HealthCritical)
	a.SetStatus("redis", "127.0.0.3:1", api.HealthCritical)
	time.Sleep(200 * time.Millisecond)
	if st, _ := d.Status(redis.Key()); st.EmptySince.IsZero() || st.Instances != 2 {
		t.Errorf("status during the hold = %+v", st)
	}
	a.SetStatus("redis", "127.0.0.3:1", api.HealthPassing)
	u := sink.next(t, time.Second)
	if !slices.Equal(ids(u.in), []string{"127.0.0.3:1"}) {
		t.Errorf("after the flap: %v (the empty answer must not have been applied)", ids(u.in))
	}

	// Every instance fails for good: applied after the grace.
	t0 := time.Now()
	a.SetStatus("redis", "127.0.0.3:1", api.HealthCritical)
	u = sink.next(t, cfg.EmptyGrace+cfg.RequestTimeout(cfg.EmptyGrace))
	took := u.at.Sub(t0)
	t.Logf("empty answer confirmed after %s (grace %s)", took.Round(time.Millisecond), cfg.EmptyGrace)
	if len(u.in) != 0 || took < cfg.EmptyGrace {
		t.Errorf("got %v after %s: want empty, not before %s", ids(u.in), took, cfg.EmptyGrace)
	}
	// Nothing to protect: instances come back at once.
	a.SetStatus("redis", "127.0.0.2:1", api.HealthPassing)
	if u := sink.next(t, time.Second); len(u.in) != 1 {
		t.Errorf("got %v", ids(u.in))
	}
}

// TestColdStartLKG: a run with Consul up leaves a copy on disk; a start
// with Consul down (refused, then hung) serves it within startup_timeout,
// and converges once Consul answers.
func TestColdStartLKG(t *testing.T) {
	dir := t.TempDir()
	a := consultest.New()
	a.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 6379})
	a.Register("redis", consultest.Instance{Address: "127.0.0.3", Port: 6379})
	cfg := testConfig(a.Addr())
	cfg.StateDir = dir
	func() {
		sink := newSink()
		d, err := New(cfg, sink, logger())
		if err != nil {
			t.Fatal(err)
		}
		d.SetWatches([]Watch{redis})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		sink.next(t, 2*time.Second)
		cancel()
		<-done
	}()
	a.Close()
	b, err := os.ReadFile(LKGPath(dir, redis.Key()))
	if err != nil {
		t.Fatal(err)
	}
	if l, err := DecodeLKG(b); err != nil || len(l.Instances) != 2 || l.Watch != redis.Key() || l.Index == 0 {
		t.Fatalf("lkg = %+v, %v", l, err)
	}

	t.Run("refused", func(t *testing.T) {
		addr := closedPort(t)
		c := cfg
		c.Address = addr
		t0 := time.Now()
		d, sink := start(t, c, redis)
		u := sink.next(t, c.StartupTimeout+time.Second)
		t.Logf("consul refused: serving the last-known-good copy after %s", time.Since(t0).Round(time.Millisecond))
		if u.src != SourceLKG || len(u.in) != 2 {
			t.Fatalf("got %s %v", u.src, ids(u.in))
		}
		select {
		case <-d.Ready():
		case <-time.After(time.Second):
			t.Fatal("not ready")
		}
		if st, _ := d.Status(redis.Key()); st.Source != SourceLKG || st.Index == 0 || st.Updated.IsZero() {
			t.Errorf("status = %+v", st)
		}
		// Consul comes up on that address with one instance fewer.
		a2, err := consultest.NewAt(addr)
		if err != nil {
			t.Skipf("cannot listen again on %s: %v", addr, err)
		}
		defer a2.Close()
		a2.Register("redis", consultest.Instance{Address: "127.0.0.2", Port: 6379})
		t1 := time.Now()
		u = sink.next(t, 3*time.Second)
		t.Logf("converged on live data %s after consul came up", time.Since(t1).Round(time.Millisecond))
		if u.src != SourceConsul || len(u.in) != 1 {
			t.Errorf("got %s %v", u.src, ids(u.in))
		}
	})
	t.Run("hung", func(t *testing.T) {
		h := consultest.New()
		defer h.Close()
		h.SetFault(consultest.Hang)
		c := cfg
		c.Address = h.Addr()
		c.StartupTimeout = 500 * time.Millisecond
		// The copy holds what the last run saw: after "refused" converged,
		// one instance.
		b, _ := os.ReadFile(LKGPath(dir, redis.Key()))
		l, err := DecodeLKG(b)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		_, sink := start(t, c, redis)
		u := sink.next(t, 2*time.Second)
		took := time.Since(t0)
		t.Logf("consul hung: serving the last-known-good copy after %s (startup_timeout %s)", took.Round(time.Millisecond), c.StartupTimeout)
		if u.src != SourceLKG || !slices.Equal(u.in, l.Instances) || took > c.StartupTimeout+300*time.Millisecond {
			t.Errorf("got %s %v after %s", u.src, ids(u.in), took)
		}
	})
}

// TestCorruptLKG: a damaged copy is reported (an error in the log naming
// the file and what is wrong with it) and ignored: the pool waits for
// Consul.
func TestCorruptLKG(t *testing.T) {
	good, err := EncodeLKG(LKG{Watch: redis.Key(), Index: 7, Time: time.Now(), Instances: []Instance{{ID: "10.0.0.1:1", Address: "10.0.0.1", Port: 1, Weight: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		body []byte
		why  string // in the reported error
	}{
		"truncated":   {good[:len(good)/2], "not a last-known-good file"},
		"bit flipped": {[]byte(strings.Replace(string(good), "10.0.0.1:1", "10.0.0.2:1", 1)), "checksum mismatch"},
		"not json":    {[]byte("\x00\x01garbage"), "not a last-known-good file"},
		"other watch": {mustEncode(t, LKG{Watch: "other", Instances: []Instance{{ID: "10.0.0.1:1", Address: "10.0.0.1", Port: 1, Weight: 1}}}), `written for watch \"other\"`},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := LKGPath(dir, redis.Key())
			if err := os.WriteFile(path, c.body, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(closedPort(t))
			cfg.StateDir = dir
			var log logBuf
			d, sink := startLog(t, cfg, zerolog.New(&log), redis)
			select {
			case <-d.Ready():
			case <-time.After(2 * time.Second):
				t.Fatal("not ready")
			}
			sink.none(t, 100*time.Millisecond)
			if st, _ := d.Status(redis.Key()); st.Source != SourceWaiting {
				t.Errorf("status = %+v", st)
			}
			// Ready comes after the copy was tried: the report is there.
			line := log.find(`"message":"last-known-good copy ignored"`)
			if line == "" {
				t.Fatalf("the damaged copy was not reported; log:\n%s", log.String())
			}
			for _, want := range []string{`"level":"error"`, path, c.why} {
				if !strings.Contains(line, want) {
					t.Errorf("report %s lacks %s", line, want)
				}
			}
		})
	}
}

// logBuf collects log lines; safe for the watchers' goroutines.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// find returns the first line containing s, or "".
func (l *logBuf) find(s string) string {
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}

func mustEncode(t *testing.T, l LKG) []byte {
	b, err := EncodeLKG(l)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLKGRoundTrip(t *testing.T) {
	l := LKG{Watch: "redis?passing=1", Index: 42, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Instances: []Instance{{ID: "[::1]:6379", Address: "::1", Port: 6379, Weight: 3, Status: "warning", Node: "n<1>", ServiceID: "r&1"}}}
	b := mustEncode(t, l)
	got, err := DecodeLKG(b)
	if err != nil || got.Watch != l.Watch || got.Index != l.Index || !got.Time.Equal(l.Time) || !slices.Equal(got.Instances, l.Instances) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
}

// FuzzLKG: no input panics; whatever decodes re-encodes to the same thing.
func FuzzLKG(f *testing.F) {
	good, _ := EncodeLKG(LKG{Watch: "redis", Index: 1, Instances: []Instance{{ID: "10.0.0.1:1", Address: "10.0.0.1", Port: 1, Weight: 1}}})
	f.Add(good)                                            // a good file
	f.Add(good[:20])                                       // truncated
	f.Add([]byte(`{"version":2}`))                         // a newer format
	f.Add([]byte(`{"version":1,"sha256":"","body":null}`)) // no body
	f.Add([]byte(`[]`))                                    // not an object
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeLKG(b)
		if err != nil {
			return
		}
		again, err := DecodeLKG(mustEncode(t, l))
		if err != nil || !slices.Equal(again.Instances, l.Instances) || again.Watch != l.Watch {
			t.Errorf("re-encode: %+v %v", again, err)
		}
	})
}

// FuzzConsulPayload: any health-endpoint answer, once decoded as the api
// client decodes it, turns into instances without panicking, and every
// instance is dialable: an address, a port in range, a weight in 0..1000.
func FuzzConsulPayload(f *testing.F) {
	f.Add([]byte(`[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"r1","Service":"redis","Address":"10.0.0.2","Port":6379,"Weights":{"Passing":10,"Warning":1}},"Checks":[{"Status":"passing"}]}]`))
	f.Add([]byte(`[{"Node":{"Address":"10.0.0.1"},"Service":{"Port":6379},"Checks":[{"Status":"warning"}]}]`))
	f.Add([]byte(`[{"Node":null,"Service":null,"Checks":null}]`))
	f.Add([]byte(`[{"Service":{"Address":"::1","Port":70000,"Weights":{"Passing":-5}}}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var entries []*api.ServiceEntry
		if json.Unmarshal(b, &entries) != nil {
			return
		}
		for _, in := range instances(entries, zerolog.Nop()) {
			if in.Address == "" || in.Port < 1 || in.Port > 65535 || in.Weight < 0 || in.Weight > 1000 {
				t.Fatalf("undialable instance %+v from %s", in, b)
			}
		}
	})
}
