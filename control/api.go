package control

import (
	"errors"
	"fmt"
	"time"

	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/pool"
)

// API is what the server drives; the binary implements it over its live pool
// set. Every method validates fully first and changes nothing on error.
// Errors wrap ErrNotFound, ErrConflict, ErrInvalid or ErrUnavailable, or are
// (or wrap) a *FieldError; any other error is answered with 500.
//
// The server has already checked the syntax of what it passes (names, weights,
// priorities, methods, addresses: see the Validate methods), so an
// implementation is left with what only it can know: whether the names exist,
// whether an id is taken, whether an address resolves.
type API interface {
	// Upstreams returns every upstream, sorted by name.
	Upstreams() []Upstream
	// Upstream returns one upstream, or an error wrapping ErrNotFound.
	Upstream(name string) (Upstream, error)
	// PutUpstream creates u, or replaces the upstream of that name whole
	// (its pools and hosts). Hosts that stay (same id) keep their state and
	// counters; hosts that go are drained.
	PutUpstream(u Upstream) (created bool, err error)
	// DeleteUpstream removes an upstream; its hosts are drained.
	DeleteUpstream(name string) error
	AddPool(upstream string, p PoolSpec) error
	PatchPool(upstream, pool string, p PoolPatch) error
	DeletePool(upstream, pool string) error
	AddHost(upstream, pool string, h HostSpec) error
	PatchHost(upstream, pool, host string, p HostPatch) error
	// RemoveHost takes the host out of selection at once, lets its
	// connections finish (bounded by the drain timeout), then removes it.
	RemoveHost(upstream, pool, host string) error
	HostAction(upstream, pool, host string, a Action) error
	Status() Status
	// Sessions returns the live UDP sessions of every UDP listener.
	Sessions() []Session
	// Subscribe is events.Feed.Subscribe: the kept events with Seq > since,
	// then every later one on the subscription.
	Subscribe(since uint64, buf int) ([]events.Event, *events.Sub)
	// Reload re-reads the config file; an invalid file changes nothing and
	// its error (wrapping ErrInvalid) lists every problem.
	Reload() error
	// Reset drops every live edit and goes back to the config file.
	Reset() error
}

// Errors an API returns, wrapped, and how the server answers them.
var (
	ErrNotFound    = errors.New("not found")               // 404: unknown upstream, pool or host
	ErrConflict    = errors.New("already exists")          // 409: duplicate name or id
	ErrInvalid     = errors.New("invalid")                 // 422: well-formed but cannot be applied (e.g. a bad config file on reload)
	ErrUnavailable = errors.New("temporarily unavailable") // 503: e.g. the edit store (Consul) cannot be reached
)

// FieldError says which field of a request is wrong and why. The server
// answers it with 400 and {"error": "FIELD: MSG", "field": "FIELD"}.
type FieldError struct {
	Field string // JSON path of the field: "weight", "pools[1].hosts[0].address"
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Action is a host state change an operator asks for.
type Action string

const (
	ActionDown  Action = "down"  // manual_down: sticky, no health check revives it
	ActionUp    Action = "up"    // back to health-checked operation
	ActionDrain Action = "drain" // no new connections; existing ones finish
)

// Source says where a host comes from.
type Source string

const (
	SourceConfig Source = "config" // the config file
	SourceAPI    Source = "api"    // a live edit through this API
	SourceConsul Source = "consul" // Consul discovery
)

// Upstream is the JSON view of an upstream, as GET returns it and PUT takes
// it. On PUT, name may be left out (the path gives it) and the read-only
// fields (hosts' source and state) are ignored, so what GET returned can be
// edited and put back.
type Upstream struct {
	Name   string      `json:"name"`
	Method pool.Method `json:"method,omitempty"` // default for its pools; "" = round_robin
	Tries  int         `json:"tries,omitempty"`  // connect attempts in all; 0 = the default
	Pools  []Pool      `json:"pools"`
}

// Pool is the JSON view of a pool.
type Pool struct {
	Name     string      `json:"name"`
	Priority int         `json:"priority"`         // lower is used first
	Method   pool.Method `json:"method,omitempty"` // "" = the upstream's
	Hosts    []Host      `json:"hosts"`
}

// Host is the JSON view of a host.
type Host struct {
	ID      string     `json:"id,omitempty"` // "" = the address
	Address string     `json:"address"`
	Weight  int        `json:"weight"`
	Source  Source     `json:"source,omitempty"` // read-only
	State   pool.State `json:"state"`            // read-only
}

// PoolSpec is the body of POST /v1/upstreams/{u}/pools.
type PoolSpec struct {
	Name     string      `json:"name"`
	Priority int         `json:"priority"`
	Method   pool.Method `json:"method,omitempty"`
}

// PoolPatch is the body of PATCH /v1/upstreams/{u}/pools/{p}; absent fields
// are left as they are.
type PoolPatch struct {
	Priority *int         `json:"priority,omitempty"`
	Method   *pool.Method `json:"method,omitempty"`
}

// HostSpec is the body of POST /v1/upstreams/{u}/pools/{p}/hosts. An absent
// weight means DefaultWeight; an absent id means the address.
type HostSpec struct {
	ID      string `json:"id,omitempty"`
	Address string `json:"address"`
	Weight  int    `json:"weight"`
}

// HostPatch is the body of PATCH /v1/upstreams/{u}/pools/{p}/hosts/{h}.
type HostPatch struct {
	Weight *int `json:"weight"` // required
}

// Status is the body of GET /v1/status.
type Status struct {
	Hosts     []HostStatus      `json:"hosts"`
	Listeners []ListenerStatus  `json:"listeners"`
	Discovery []DiscoveryStatus `json:"discovery,omitempty"`
	Store     *StoreStatus      `json:"store,omitempty"`
}

// StoreStatus is where the live edits are kept: a local file, or (fleet
// mode) a Consul key shared by every instance, and whether this instance
// has the stored edits in force.
type StoreStatus struct {
	Kind      string    `json:"kind"`                 // local | consul
	Key       string    `json:"key,omitempty"`        // the Consul key, or the local journal file
	Source    string    `json:"source,omitempty"`     // consul: consul | last_known_good | none
	Index     uint64    `json:"index,omitempty"`      // consul: ModifyIndex of the edits in force
	Edits     int       `json:"edits"`                // edits in the journal
	InSync    bool      `json:"in_sync"`              // the edits in force are the stored ones, and Consul answers
	Updated   time.Time `json:"updated,omitzero"`     // consul: last good answer
	Age       string    `json:"age,omitempty"`        // how long ago, rounded to the second
	Failures  int       `json:"failures,omitempty"`   // consecutive failed queries
	LastError string    `json:"last_error,omitempty"` // while failing
}

// DiscoveryStatus is where a pool that follows a Consul service has its
// hosts from, and how fresh they are.
type DiscoveryStatus struct {
	Upstream   string    `json:"upstream"`
	Pool       string    `json:"pool"`
	Watch      string    `json:"watch"`                // the service and its filters: "redis?passing=1&tag=primary"
	Source     string    `json:"source"`               // consul | last_known_good | waiting
	Index      uint64    `json:"index"`                // Consul's index of the data in use
	Updated    time.Time `json:"updated,omitzero"`     // when that data was answered
	Age        string    `json:"age,omitempty"`        // how long ago, rounded to the second
	Hosts      int       `json:"hosts"`                // hosts the pool has now
	Failures   int       `json:"failures,omitempty"`   // consecutive failed queries
	Error      string    `json:"error,omitempty"`      // the last failure, while failing
	EmptySince time.Time `json:"empty_since,omitzero"` // an empty answer held back since then
}

// ListenerStatus is one listener's counters. TCP listeners count accepted,
// active, no_backend, accept_errors, connect_fails and the refusals
// (denied, over_listener_limit, over_client_limit, untrusted_proxy,
// bad_proxy_header); UDP listeners count sessions_active, sessions_created,
// sessions_expired, sessions_completed, sessions_failed, dropped_full,
// dropped_no_host, dropped_error, host_errors, datagrams_up/down and
// bytes_up/down.
type ListenerStatus struct {
	Name     string           `json:"name"`
	Protocol string           `json:"protocol"`
	Address  string           `json:"address"`
	Counters map[string]int64 `json:"counters"`
}

// Session is one live UDP session, for GET /v1/sessions.
type Session struct {
	Listener      string    `json:"listener"`
	Client        string    `json:"client"`
	Upstream      string    `json:"upstream"`
	Pool          string    `json:"pool"`
	Host          string    `json:"host"`
	Since         time.Time `json:"since"`
	Age           float64   `json:"age"`  // seconds
	Idle          float64   `json:"idle"` // seconds since the last datagram either way
	DatagramsUp   uint64    `json:"datagrams_up"`
	DatagramsDown uint64    `json:"datagrams_down"`
	BytesUp       uint64    `json:"bytes_up"`
	BytesDown     uint64    `json:"bytes_down"`
}

// HostStatus is one host's live state and counters: the fields of
// pool.HostStats (id, network, address, weight, state, reason, since,
// fail_count, last_failure, last_fail_reason, active, total, bytes_to_host,
// bytes_from_host) plus where the host sits and, while it drains, when the
// drain ends.
type HostStatus struct {
	Upstream string `json:"upstream"`
	Pool     string `json:"pool"`
	Source   Source `json:"source,omitempty"`
	pool.HostStats
	// DrainDeadline is when a draining host's remaining connections are
	// closed (zero when not draining or when there is no deadline).
	DrainDeadline time.Time `json:"drain_deadline,omitzero"`
	// DrainRemaining is DrainDeadline minus the time of the answer; the
	// server fills it in, an API need not.
	DrainRemaining Duration `json:"drain_remaining,omitzero"`
}

// Duration is a time.Duration written in JSON as a string such as "4.25s",
// like the durations of the config file.
type Duration time.Duration

// MarshalText writes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses what time.ParseDuration accepts.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
