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
	state  atomic.Uint32 // a State; written only with mu held

	active        atomic.Int64
	total         atomic.Uint64
	bytesToHost   atomic.Uint64
	bytesFromHost atomic.Uint64

	mu             sync.Mutex // guards the fields below and writes to state
	reason         string     // reason of the last state change
	since          time.Time  // time of the last state change
	failCount      int
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
	Reason         string    `json:"reason,omitempty"` // of the last state change
	Since          time.Time `json:"since"`
	FailCount      int       `json:"fail_count"`
	LastFailure    time.Time `json:"last_failure,omitzero"`
	LastFailReason string    `json:"last_fail_reason,omitempty"`
	Active         int64     `json:"active"`
	Total          uint64    `json:"total"`
	BytesToHost    uint64    `json:"bytes_to_host"`
	BytesFromHost  uint64    `json:"bytes_from_host"`
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
	h := &Host{ID: id, Network: network, Address: address, since: time.Now()}
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
	h.weight.Store(int32(w))
}

// State returns the current state.
func (h *Host) State() State { return State(h.state.Load()) }

// SetState moves the host to s, recording reason and the time, and returns the
// previous state and whether it changed. Setting the state it already has
// changes nothing (the reason and time of the earlier change are kept).
//
// manual_down and draining are operator states: while the host is in one of
// them, only a call with manual set (the control API) changes it, so a health
// check or passive health cannot revive or re-mark a host an operator took out.
// An unknown s is ignored.
func (h *Host) SetState(s State, reason string, manual bool) (prev State, changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	prev = State(h.state.Load())
	if prev == s || !s.valid() || (prev.admin() && !manual) {
		return prev, false
	}
	h.state.Store(uint32(s))
	h.reason = reason
	h.since = time.Now()
	return prev, true
}

// Since returns when the state last changed (or when the host was created).
func (h *Host) Since() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.since
}

// Usable reports whether the host takes new connections: up, with a weight
// above zero.
func (h *Host) Usable() bool {
	return State(h.state.Load()) == StateUp && h.weight.Load() > 0
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

// ConnectFailed records a failed connect attempt (passive health). It does not
// change the state: the caller decides, from FailCount and its own window,
// whether to mark the host down.
func (h *Host) ConnectFailed(reason string, now time.Time) {
	h.mu.Lock()
	h.failCount++
	h.lastFailure = now
	h.lastFailReason = reason
	h.mu.Unlock()
}

// ResetFails sets the fail count back to zero, typically after a successful
// connect or when the host comes back up. The last failure is kept for display.
func (h *Host) ResetFails() {
	h.mu.Lock()
	h.failCount = 0
	h.mu.Unlock()
}

// FailCount returns the number of failed connects since the last ResetFails.
func (h *Host) FailCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failCount
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
	}
	h.mu.Lock()
	st.State = State(h.state.Load())
	st.Reason = h.reason
	st.Since = h.since
	st.FailCount = h.failCount
	st.LastFailure = h.lastFailure
	st.LastFailReason = h.lastFailReason
	h.mu.Unlock()
	return st
}
