package pool

import (
	"sync"
	"sync/atomic"
	"time"
)

// Host is one backend. It is created once and shared by every snapshot that
// lists it, so its state and counters survive pool edits. All methods are safe
// for concurrent use; the per-connection ones touch atomics only.
type Host struct {
	ID      string // unique within an upstream; defaults to Address
	Network string // "tcp" or "unix"
	Address string // dialable: "127.0.0.1:6379", "[::1]:6379", or "/path/x.sock" for unix

	weight atomic.Int32
	state  atomic.Uint32 // the effective State (see State); written only with mu held

	// Slow start. rampEnd is when the current ramp ends, in nanoseconds on
	// the monotonic clock (see monoNow), or 0 when no ramp is running: the
	// pick path reads the clock only while a ramp runs.
	slowStart atomic.Int64 // time.Duration; 0 = off
	rampEnd   atomic.Int64

	// connectEWMA is the moving average of connect times in nanoseconds
	// (see ObserveConnect), 0 until the first one is observed.
	connectEWMA atomic.Int64

	active        atomic.Int64
	maxConns      atomic.Int64 // 0 = no limit
	total         atomic.Uint64
	bytesToHost   atomic.Uint64
	bytesFromHost atomic.Uint64

	// For metrics: failed connects by kind (CountConnectFailure) and the
	// duration of the last active check (ObserveCheck). Written on failure
	// and check paths only, never per connection.
	connectFailures [NumFailKinds]atomic.Uint64
	lastCheck       atomic.Int64 // time.Duration; 0 = no check yet

	mu             sync.Mutex   // guards the fields below and writes to state
	healthy        bool         // health: set by checks and passive health
	admin          State        // StateUp (none), StateManualDown or StateDraining
	reason         string       // reason of the last change of the effective state
	since          time.Time    // time of the last change of the effective state
	failCount      atomic.Int64 // written with mu held; read lock-free
	lastFailure    time.Time
	lastFailReason string
}

// HostStats is a point-in-time copy of a Host, for the control API and metrics.
// Fields are read one by one, so counters may be a few nanoseconds apart.
type HostStats struct {
	ID             string    `json:"id"`
	Network        string    `json:"network"`
	Address        string    `json:"address"`
	Weight         int       `json:"weight"`
	State          State     `json:"state"`
	Healthy        bool      `json:"healthy"`          // what the checks say, whatever the operator set
	Reason         string    `json:"reason,omitempty"` // of the last state change
	Since          time.Time `json:"since"`
	FailCount      int       `json:"fail_count"`
	LastFailure    time.Time `json:"last_failure,omitzero"`
	LastFailReason string    `json:"last_fail_reason,omitempty"`
	Active         int64     `json:"active"`
	MaxConns       int       `json:"max_connections,omitempty"`
	Total          uint64    `json:"total"`
	BytesToHost    uint64    `json:"bytes_to_host"`
	BytesFromHost  uint64    `json:"bytes_from_host"`

	// For metrics, not (yet) in the control API's JSON.
	ConnectFailures [NumFailKinds]uint64 `json:"-"` // by FailKind, since the host was created
	CheckDuration   time.Duration        `json:"-"` // of the last active check; 0 = none yet
}

// FailKind is why a connect to a host failed, in the few classes metrics
// count separately.
type FailKind uint8

const (
	FailRefused     FailKind = iota // connection refused (or no such socket file)
	FailTimeout                     // the connect timed out
	FailUnreachable                 // host or network unreachable
	FailOther                       // anything else, a failed PROXY header write included
	NumFailKinds
)

var failKindNames = [NumFailKinds]string{"refused", "timeout", "unreachable", "other"}

// String returns the label metrics use: refused, timeout, unreachable, other.
func (k FailKind) String() string {
	if k < NumFailKinds {
		return failKindNames[k]
	}
	return "other"
}

// NewHost returns an up host. An empty id means the address; an empty network
// means "tcp"; a negative weight is taken as 0 (no new connections).
func NewHost(id, network, address string, weight int) *Host {
	if id == "" {
		id = address
	}
	if network == "" {
		network = "tcp"
	}
	h := &Host{ID: id, Network: network, Address: address, healthy: true, since: time.Now()}
	h.SetWeight(weight)
	return h
}

// Weight returns the configured weight. 0 means the host takes no new connections.
func (h *Host) Weight() int { return int(h.weight.Load()) }

// SetWeight changes the weight; the next pick sees it. Values are clamped to
// [0, MaxInt32].
func (h *Host) SetWeight(w int) {
	w = max(w, 0)
	w = min(w, 1<<31-1)
	if h.weight.Swap(int32(w)) != int32(w) {
		weightVersion.Add(1)
	}
}

// weightVersion moves whenever the weight of any host changes. Selectors
// that cache something built from weights (the hash method's table) compare
// it on each pick, one atomic load, instead of reading every host's weight.
// It is only ever incremented and means nothing but "look again".
var weightVersion atomic.Uint64

// State returns the effective state: the operator's (manual_down or
// draining) when one is set, else the health (up or down).
func (h *Host) State() State { return State(h.state.Load()) }

// Healthy reports what health checks and passive health last said, whatever
// state an operator set.
func (h *Host) Healthy() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.healthy
}

// SetHealth records the verdict of a health check or of passive health and
// reports whether the health changed. Setting the health it already has
// changes nothing. While an operator state is set the health is still
// recorded, so that clearing it reveals the truth, but the effective state
// (and its reason and time) does not move.
func (h *Host) SetHealth(up bool, reason string) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.healthy == up {
		return false
	}
	h.healthy = up
	h.update(reason)
	return true
}

// SetAdmin sets the operator state and reports whether it changed: s is
// StateManualDown or StateDraining to take the host out, or StateUp to clear
// the operator state. Clearing it gives the host back to its health: a host
// whose checks say down stays down. StateDown and unknown states are ignored.
func (h *Host) SetAdmin(s State, reason string) (changed bool) {
	if s != StateUp && !s.admin() {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.admin == s {
		return false
	}
	h.admin = s
	h.update(reason)
	return true
}

// update recomputes the effective state after a change of health or admin
// and, when it moved, records reason and time and starts a slow start ramp
// if the host came back up. h.mu held.
func (h *Host) update(reason string) {
	eff := h.admin
	if eff == StateUp && !h.healthy {
		eff = StateDown
	}
	prev := State(h.state.Load())
	if eff == prev {
		return
	}
	h.state.Store(uint32(eff))
	h.reason = reason
	h.since = time.Now()
	switch {
	case eff == StateUp && prev != StateDraining:
		// Back from down or manual_down: caches are cold, ramp up.
		if d := h.slowStart.Load(); d > 0 {
			h.rampEnd.Store(monoNow() + d)
		}
		// Its connect time from before may be stale: measure it afresh.
		h.connectEWMA.Store(0)
	case eff != StateUp:
		h.rampEnd.Store(0)
	}
}

// SetState is the older single-state API, kept for callers that predate
// SetHealth and SetAdmin. StateManualDown and StateDraining go to SetAdmin.
// StateUp goes to SetAdmin when manual (clearing the operator state) and to
// SetHealth otherwise; StateDown always goes to SetHealth. It returns the
// previous effective state and whether the effective state changed. An
// unknown s is ignored.
func (h *Host) SetState(s State, reason string, manual bool) (prev State, changed bool) {
	prev = h.State()
	switch {
	case s.admin() || (s == StateUp && manual):
		h.SetAdmin(s, reason)
	case s == StateUp || s == StateDown:
		h.SetHealth(s == StateUp, reason)
	default:
		return prev, false
	}
	// Another writer may run between the two loads; callers of this
	// compatibility API are tests and single-writer tools.
	now := h.State()
	return prev, now != prev
}

// SetSlowStart sets the slow start period: when the host comes back up, its
// effective weight ramps linearly from a tenth of its weight (at least 1) to
// its weight over d. 0 turns slow start off, and ends a running ramp.
func (h *Host) SetSlowStart(d time.Duration) {
	d = max(d, 0)
	h.slowStart.Store(int64(d))
	if d == 0 {
		h.rampEnd.Store(0)
	}
}

// EffectiveWeight returns the weight the selector uses now: the weight, or
// less while a slow start ramp runs.
func (h *Host) EffectiveWeight() int {
	w := int64(h.weight.Load())
	if end := h.rampEnd.Load(); end != 0 {
		w = h.rampWeight(w, end, monoNow())
	}
	return int(w)
}

// rampWeight returns weight w scaled for a ramp ending at end, at time now
// (both monoNow values), and ends the ramp (once) when it is over.
func (h *Host) rampWeight(w, end, now int64) int64 {
	d := h.slowStart.Load()
	left := end - now
	if left <= 0 || d <= 0 {
		h.rampEnd.CompareAndSwap(end, 0)
		return w
	}
	if w <= 1 {
		return w
	}
	lo := max(w/10, 1)
	elapsed := max(d-left, 0)
	return lo + (w-lo)*elapsed/d
}

// epoch anchors monoNow. time.Since uses the monotonic clock, so a ramp is
// not stretched or cut short by a wall clock step.
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) }

// Since returns when the state last changed (or when the host was created).
func (h *Host) Since() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.since
}

// Usable reports whether the host takes new connections: up, with a weight
// above zero.
func (h *Host) Usable() bool {
	return State(h.state.Load()) == StateUp && h.weight.Load() > 0 && !h.Full()
}

// SetMaxConns limits the host's active connections; 0 = no limit. A full
// host is skipped like a down one.
func (h *Host) SetMaxConns(n int) { h.maxConns.Store(int64(n)) }

// MaxConns returns the limit set with SetMaxConns.
func (h *Host) MaxConns() int { return int(h.maxConns.Load()) }

// Full reports whether the host has reached its connection limit.
func (h *Host) Full() bool {
	m := h.maxConns.Load()
	return m > 0 && h.active.Load() >= m
}

// TryAcquire counts a new connection to the host unless that would exceed its
// limit (then it returns false and counts nothing). Two callers racing for
// the last slot cannot both win. Pair it with Release (the connect failed) or
// ConnClosed.
func (h *Host) TryAcquire() bool {
	m := h.maxConns.Load()
	for {
		a := h.active.Load()
		if m > 0 && a >= m {
			return false
		}
		if h.active.CompareAndSwap(a, a+1) {
			h.total.Add(1)
			return true
		}
	}
}

// Release undoes TryAcquire for a connection that never opened.
func (h *Host) Release() {
	h.active.Add(-1)
	h.total.Add(^uint64(0))
}

// revivable reports whether an AllDownTryAll upstream may pick h: up or down
// (health is ignored), never an operator state, never weight 0.
func revivable(h *Host) bool {
	s := State(h.state.Load())
	return (s == StateUp || s == StateDown) && h.weight.Load() > 0
}

// ConnOpened counts a new connection to the host.
func (h *Host) ConnOpened() {
	h.active.Add(1)
	h.total.Add(1)
}

// ConnClosed counts the end of a connection and the bytes it moved that were
// not already reported with AddBytes.
func (h *Host) ConnClosed(toHost, fromHost uint64) {
	h.active.Add(-1)
	h.AddBytes(toHost, fromHost)
}

// AddBytes adds bytes forwarded to and from the host, for live accounting of
// long connections.
func (h *Host) AddBytes(toHost, fromHost uint64) {
	if toHost != 0 {
		h.bytesToHost.Add(toHost)
	}
	if fromHost != 0 {
		h.bytesFromHost.Add(fromHost)
	}
}

// ObserveConnect records how long a successful connect to the host took, for
// the fastest method. It keeps an exponentially weighted moving average with
// alpha 1/8, as TCP's smoothed RTT does (RFC 6298): one slow connect moves it
// by an eighth of the difference. The first observation is taken as is.
func (h *Host) ObserveConnect(d time.Duration) {
	x := max(int64(d), 1) // 0 means unmeasured
	for {
		old := h.connectEWMA.Load()
		avg := x
		if old != 0 {
			avg = max(old+(x-old)/8, 1)
		}
		if h.connectEWMA.CompareAndSwap(old, avg) {
			return
		}
	}
}

// ConnectEWMA returns the moving average of connect times recorded with
// ObserveConnect, or 0 if none was recorded since the host was created or
// last came back up (its old figure may no longer hold).
func (h *Host) ConnectEWMA() time.Duration { return time.Duration(h.connectEWMA.Load()) }

// ConnectFailed records a failed connect attempt (passive health). It does not
// change the state: the caller decides, from FailCount and its own window,
// whether to mark the host down.
func (h *Host) ConnectFailed(reason string, now time.Time) {
	h.mu.Lock()
	h.failCount.Add(1)
	h.lastFailure = now
	h.lastFailReason = reason
	h.mu.Unlock()
}

// CountConnectFailure counts a failed connect of kind k, for metrics. Unlike
// ConnectFailed it never resets and decides nothing.
func (h *Host) CountConnectFailure(k FailKind) {
	if k >= NumFailKinds {
		k = FailOther
	}
	h.connectFailures[k].Add(1)
}

// ObserveCheck records how long the last active health check took.
func (h *Host) ObserveCheck(d time.Duration) { h.lastCheck.Store(max(int64(d), 1)) }

// ResetFails sets the fail count back to zero, typically after a successful
// connect or when the host comes back up. The last failure is kept for display.
func (h *Host) ResetFails() {
	h.mu.Lock()
	h.failCount.Store(0)
	h.mu.Unlock()
}

// FailCount returns the number of failed connects since the last ResetFails.
func (h *Host) FailCount() int {
	return int(h.failCount.Load())
}

// Stats returns a copy of the host's state and counters.
func (h *Host) Stats() HostStats {
	st := HostStats{
		ID:            h.ID,
		Network:       h.Network,
		Address:       h.Address,
		Weight:        h.Weight(),
		Active:        h.active.Load(),
		Total:         h.total.Load(),
		BytesToHost:   h.bytesToHost.Load(),
		BytesFromHost: h.bytesFromHost.Load(),
		CheckDuration: time.Duration(h.lastCheck.Load()),
	}
	for k := range st.ConnectFailures {
		st.ConnectFailures[k] = h.connectFailures[k].Load()
	}
	h.mu.Lock()
	st.State = State(h.state.Load())
	st.Healthy = h.healthy
	st.Reason = h.reason
	st.Since = h.since
	st.FailCount = int(h.failCount.Load())
	st.MaxConns = h.MaxConns()
	st.LastFailure = h.lastFailure
	st.LastFailReason = h.lastFailReason
	h.mu.Unlock()
	return st
}
