package pool

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestStateNames(t *testing.T) {
	for _, tc := range []struct {
		s    State
		name string
	}{
		{StateUp, "up"},
		{StateDown, "down"},
		{StateManualDown, "manual_down"},
		{StateDraining, "draining"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.String(); got != tc.name {
				t.Errorf("String() = %q, want %q", got, tc.name)
			}
			got, err := ParseState(tc.name)
			if err != nil || got != tc.s {
				t.Errorf("ParseState(%q) = %v, %v; want %v", tc.name, got, err, tc.s)
			}
			b, err := json.Marshal(tc.s)
			if err != nil || string(b) != `"`+tc.name+`"` {
				t.Errorf("json = %s, %v", b, err)
			}
			var back State
			if err := json.Unmarshal(b, &back); err != nil || back != tc.s {
				t.Errorf("json round trip = %v, %v", back, err)
			}
		})
	}
	if _, err := ParseState("UP"); !errors.Is(err, ErrUnknownState) {
		t.Errorf("ParseState(UP) err = %v, want ErrUnknownState", err)
	}
	if got := State(9).String(); got != "State(9)" {
		t.Errorf("State(9) = %q", got)
	}
}

func TestParseAllDown(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want AllDown
		err  bool
	}{
		{"", AllDownReject, false},
		{"reject", AllDownReject, false},
		{"try_all", AllDownTryAll, false},
		{"all", 0, true},
	} {
		got, err := ParseAllDown(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseAllDown(%q) = %v, %v", tc.in, got, err)
		}
		if err == nil && tc.in != "" && got.String() != tc.in {
			t.Errorf("%v.String() = %q", got, got.String())
		}
	}
}

func TestNewHostDefaults(t *testing.T) {
	h := NewHost("", "", "127.0.0.1:6379", -3)
	if h.ID != "127.0.0.1:6379" || h.Network != "tcp" || h.Weight() != 0 {
		t.Errorf("got id=%q network=%q weight=%d", h.ID, h.Network, h.Weight())
	}
	if h.State() != StateUp || h.Usable() {
		t.Errorf("weight 0 host: state=%v usable=%v, want up and not usable", h.State(), h.Usable())
	}
	h.SetWeight(2)
	if !h.Usable() {
		t.Error("weight 2 up host not usable")
	}
	u := NewHost("sock", "unix", "/run/x.sock", 1)
	if u.ID != "sock" || u.Network != "unix" {
		t.Errorf("got %q %q", u.ID, u.Network)
	}
}

func TestSetState(t *testing.T) {
	type step struct {
		s           State
		manual      bool
		wantPrev    State
		wantChanged bool
		wantNow     State
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"down and up", []step{
			{StateDown, false, StateUp, true, StateDown},
			{StateDown, false, StateDown, false, StateDown},
			{StateUp, false, StateDown, true, StateUp},
		}},
		{"manual down is sticky", []step{
			{StateManualDown, true, StateUp, true, StateManualDown},
			{StateUp, false, StateManualDown, false, StateManualDown},
			{StateDown, false, StateManualDown, false, StateManualDown},
			// The checks said down meanwhile: a manual up reveals it.
			{StateUp, true, StateManualDown, true, StateDown},
			{StateUp, false, StateDown, true, StateUp},
		}},
		{"draining is sticky", []step{
			{StateDraining, true, StateUp, true, StateDraining},
			{StateUp, false, StateDraining, false, StateDraining},
			{StateManualDown, true, StateDraining, true, StateManualDown},
		}},
		{"unknown state ignored", []step{
			{State(42), true, StateUp, false, StateUp},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHost("", "tcp", "10.0.0.1:1", 1)
			for i, st := range tc.steps {
				prev, changed := h.SetState(st.s, "r", st.manual)
				if prev != st.wantPrev || changed != st.wantChanged || h.State() != st.wantNow {
					t.Fatalf("step %d SetState(%v, manual=%v) = %v, %v, now %v; want %v, %v, now %v",
						i, st.s, st.manual, prev, changed, h.State(), st.wantPrev, st.wantChanged, st.wantNow)
				}
			}
		})
	}
}

func TestHealthAndAdmin(t *testing.T) {
	h := NewHost("", "tcp", "10.0.0.1:1", 1)
	if !h.Healthy() || h.State() != StateUp {
		t.Fatalf("new host: healthy=%v state=%v", h.Healthy(), h.State())
	}
	steps := []struct {
		do          func() bool
		wantChanged bool
		wantState   State
		wantHealthy bool
		wantReason  string
	}{
		{func() bool { return h.SetHealth(false, "connection refused") }, true, StateDown, false, "connection refused"},
		{func() bool { return h.SetHealth(false, "timeout after 1s") }, false, StateDown, false, "connection refused"},
		{func() bool { return h.SetAdmin(StateManualDown, "maintenance") }, true, StateManualDown, false, "maintenance"},
		// Health moves underneath; the effective state and its reason stay.
		{func() bool { return h.SetHealth(true, "rise 2") }, true, StateManualDown, true, "maintenance"},
		{func() bool { return h.SetHealth(false, "status 503") }, true, StateManualDown, false, "maintenance"},
		{func() bool { return h.SetAdmin(StateDraining, "drain") }, true, StateDraining, false, "drain"},
		{func() bool { return h.SetAdmin(StateDown, "bogus") }, false, StateDraining, false, "drain"},
		// Manual up of a host the checks say is down: down, not up.
		{func() bool { return h.SetAdmin(StateUp, "operator up") }, true, StateDown, false, "operator up"},
		{func() bool { return h.SetAdmin(StateUp, "again") }, false, StateDown, false, "operator up"},
		{func() bool { return h.SetHealth(true, "rise 2") }, true, StateUp, true, "rise 2"},
	}
	for i, s := range steps {
		changed := s.do()
		st := h.Stats()
		if changed != s.wantChanged || st.State != s.wantState || st.Healthy != s.wantHealthy || st.Reason != s.wantReason {
			t.Fatalf("step %d: changed=%v state=%v healthy=%v reason=%q; want %v %v %v %q",
				i, changed, st.State, st.Healthy, st.Reason, s.wantChanged, s.wantState, s.wantHealthy, s.wantReason)
		}
	}
}

// TestSlowStart checks the ramp: from a tenth of the weight right after
// coming back, to the full weight once the period has passed.
func TestSlowStart(t *testing.T) {
	h := NewHost("", "tcp", "10.0.0.1:1", 100)
	h.SetSlowStart(time.Hour) // long enough that the test cannot see it move much
	if got := h.EffectiveWeight(); got != 100 {
		t.Fatalf("no ramp yet: effective weight %d, want 100", got)
	}
	h.SetHealth(false, "down")
	h.SetHealth(true, "up")
	if got := h.EffectiveWeight(); got < 10 || got > 11 {
		t.Fatalf("just back: effective weight %d, want ~10", got)
	}
	// A short period ends; the ramp is dropped and the full weight returns.
	h.SetSlowStart(20 * time.Millisecond)
	h.SetHealth(false, "down")
	h.SetHealth(true, "up")
	mid := h.EffectiveWeight()
	time.Sleep(30 * time.Millisecond)
	if got := h.EffectiveWeight(); got != 100 || mid >= 100 || h.rampEnd.Load() != 0 {
		t.Fatalf("after the period: %d (mid %d, rampEnd %d), want 100", got, mid, h.rampEnd.Load())
	}
	// Weight 1 has nothing to ramp; off means off.
	h.SetSlowStart(0)
	h.SetHealth(false, "down")
	h.SetHealth(true, "up")
	if got := h.EffectiveWeight(); got != 100 {
		t.Fatalf("slow start off: %d", got)
	}
}

// TestSlowStartDistribution measures the ramp through picks: a host that
// just came back gets far less than its share, and its share grows.
func TestSlowStartDistribution(t *testing.T) {
	a := NewHost("a", "tcp", "10.0.0.1:1", 10)
	b := NewHost("b", "tcp", "10.0.0.2:1", 10)
	p := mustPool(t, "p", 0, []*Host{a, b})
	const period = 400 * time.Millisecond
	b.SetSlowStart(period)
	b.SetHealth(false, "down")
	b.SetHealth(true, "back")
	share := func() float64 {
		n := 0
		for range 2000 {
			if p.Pick(0, nil) == b {
				n++
			}
		}
		return float64(n) / 2000
	}
	early := share()
	time.Sleep(period / 2)
	middle := share()
	time.Sleep(period)
	late := share()
	t.Logf("share of the slow-starting host: start %.2f, half way %.2f, after %.2f", early, middle, late)
	if early > 0.15 || middle < early || middle > 0.45 || late < 0.49 || late > 0.51 {
		t.Errorf("share start %.2f, half way %.2f, after %.2f; want ~0.09, ~0.35, 0.5", early, middle, late)
	}
}

func TestSetStateRecordsReasonAndTime(t *testing.T) {
	h := NewHost("", "tcp", "10.0.0.1:1", 1)
	created := h.Since()
	time.Sleep(time.Millisecond)
	h.SetState(StateDown, "connection refused", false)
	st := h.Stats()
	if st.Reason != "connection refused" || !st.Since.After(created) || st.Since != h.Since() {
		t.Fatalf("after change: reason=%q since=%v created=%v", st.Reason, st.Since, created)
	}
	// A no-op change keeps the original reason and time.
	h.SetState(StateDown, "timeout after 1s", false)
	if st2 := h.Stats(); st2.Reason != "connection refused" || st2.Since != st.Since {
		t.Errorf("no-op change rewrote reason/time: %q %v", st2.Reason, st2.Since)
	}
	// A refused change (sticky manual down) keeps them too.
	h.SetState(StateManualDown, "operator", true)
	h.SetState(StateUp, "rise 2", false)
	if st3 := h.Stats(); st3.Reason != "operator" || st3.State != StateManualDown {
		t.Errorf("refused change rewrote reason: %q %v", st3.Reason, st3.State)
	}
}

func TestUsable(t *testing.T) {
	for _, tc := range []struct {
		s      State
		weight int
		want   bool
	}{
		{StateUp, 1, true},
		{StateUp, 0, false},
		{StateDown, 1, false},
		{StateManualDown, 1, false},
		{StateDraining, 1, false},
	} {
		h := NewHost("", "tcp", "x:1", tc.weight)
		h.SetState(tc.s, "", true)
		if got := h.Usable(); got != tc.want {
			t.Errorf("state %v weight %d: Usable = %v, want %v", tc.s, tc.weight, got, tc.want)
		}
	}
}

func TestCountersAndFailures(t *testing.T) {
	h := NewHost("a", "tcp", "10.0.0.1:6379", 3)
	h.ConnOpened()
	h.ConnOpened()
	h.AddBytes(10, 20)
	h.ConnClosed(1, 2)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h.ConnectFailed("connection refused", now.Add(-time.Second))
	h.ConnectFailed("timeout after 1s", now)

	want := HostStats{
		ID: "a", Network: "tcp", Address: "10.0.0.1:6379", Weight: 3, State: StateUp, Healthy: true,
		Since: h.Since(), FailCount: 2, LastFailure: now, LastFailReason: "timeout after 1s",
		Active: 1, Total: 2, BytesToHost: 11, BytesFromHost: 22,
	}
	if got := h.Stats(); got != want {
		t.Fatalf("Stats() =\n%+v\nwant\n%+v", got, want)
	}
	h.ResetFails()
	if got := h.Stats(); got.FailCount != 0 || got.LastFailure != now || h.FailCount() != 0 {
		t.Errorf("after ResetFails: %+v", got)
	}
}

func TestCountersConcurrent(t *testing.T) {
	h := NewHost("", "tcp", "x:1", 1)
	done := make(chan struct{})
	const n, per = 8, 1000
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			for range per {
				h.ConnOpened()
				h.ConnectFailed("x", time.Now())
				_ = h.Stats()
				h.ConnClosed(1, 1)
			}
		}()
	}
	for range n {
		<-done
	}
	st := h.Stats()
	if st.Active != 0 || st.Total != n*per || st.BytesToHost != n*per || st.FailCount != n*per {
		t.Errorf("got %+v", st)
	}
}

// TestMaxConns: a full host is not usable and not picked; TryAcquire never
// lets racing callers past the limit.
func TestMaxConns(t *testing.T) {
	a, b := NewHost("a", "tcp", "a:1", 1), NewHost("b", "tcp", "b:1", 1)
	a.SetMaxConns(2)
	p, err := NewPool("p", 0, MethodRoundRobin, []*Host{a, b})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if !a.TryAcquire() {
			t.Fatalf("acquire %d under the limit failed", i+1)
		}
	}
	if a.TryAcquire() || !a.Full() || a.Usable() {
		t.Fatal("a full host accepted another connection or looks usable")
	}
	for i := 0; i < 10; i++ {
		if h := p.Pick(0, nil); h != b {
			t.Fatalf("pick %d: %v, want b (a is full)", i, h.ID)
		}
	}
	a.Release()
	if a.Full() || !a.Usable() {
		t.Fatal("a still full after a release")
	}
	if st := a.Stats(); st.Active != 1 || st.Total != 1 || st.MaxConns != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Racing acquirers never exceed the limit.
	c := NewHost("c", "tcp", "c:1", 1)
	c.SetMaxConns(5)
	var wg sync.WaitGroup
	var won atomic.Int64
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.TryAcquire() {
				won.Add(1)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 5 {
		t.Fatalf("%d acquired, limit 5", won.Load())
	}
}
