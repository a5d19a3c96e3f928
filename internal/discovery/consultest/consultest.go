// Package consultest is a stand-in for a Consul agent in tests: an HTTP
// server on 127.0.0.1 that implements GET /v1/health/service/NAME, and
// GET and PUT (with ?cas=) of /v1/kv/KEY, the way an agent does, as far as
// l4lb uses them. It answers with X-Consul-Index,
// blocks while ?index= is at least the current index (until ?wait= plus up
// to wait/16 of jitter, as Consul does), and filters by ?passing and every
// ?tag=. Faults are switched on per test: 500s, index stuck at 0, an index
// set backwards, connection resets, and an agent that accepts and never
// answers (like a SIGSTOPped one).
//
// KV: GET answers [{"Key","Value" (base64),"CreateIndex","ModifyIndex",...}]
// or 404, with X-Consul-Index (the agent's index: one counter for services
// and keys, like Consul's raft index), blocking as above; PUT stores the body
// and answers true, or with ?cas=N only if the key's ModifyIndex is N (0: only
// if absent), else false. A blocking KV query wakes on any change, not only
// its key's: Consul allows that, and a client must cope with it.
//
// Beside it: Relay (relay.go) stands between one client and an agent and
// can cut that client off, a partition the others do not see; StartDev
// (dev.go) runs a real agent instead, for tests that have a consul binary.
//
// It is not Consul: no catalog endpoints, no recursive or prefix KV reads, no ACLs, no datacenters (the dc
// asked for is only recorded), no sorting by ?near.
package consultest

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Fault is a way to misbehave.
type Fault int

// Faults.
const (
	None      Fault = iota
	Error500        // 500 "rpc error: ... the client connection is closing", like an agent shutting down
	Hang            // read the request, never answer
	Reset           // close the connection with an RST, no answer
	ZeroIndex       // answer at once with X-Consul-Index: 0
)

// Instance is one registered service instance.
type Instance struct {
	ID      string // service ID; default Address:Port
	Node    string // default "node1"
	NodeIP  string // the node's address; default 127.0.0.1
	Address string // service address; "" = the node's
	Port    int
	Tags    []string
	Weights api.AgentWeights
	Status  string // passing (default) | warning | critical | maintenance
}

// Agent is the stand-in. Create it with New; Close it.
type Agent struct {
	srv *httptest.Server

	mu       sync.Mutex
	index    uint64
	services map[string][]Instance
	fault    Fault
	changed  chan struct{} // closed and replaced on every change
	closed   chan struct{}

	kv      map[string]*kvEntry
	barrier *barrier // KV PUTs held back until this many have arrived; nil = none

	requests atomic.Int64
	blocked  atomic.Int64 // queries waiting in block now
	kvGets   atomic.Int64
	kvPuts   atomic.Int64
	lastMu   sync.Mutex
	last     url.Values // the last query's parameters
	byWatch  map[string]*QueryCount
}

// QueryCount counts the health queries of one watch.
type QueryCount struct {
	Total int64 // every query
	First int64 // queries with no index (or 0): a watcher starting, or starting over
}

// New starts an agent on 127.0.0.1 with index 1 and no services.
func New() *Agent {
	a := newAgent()
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	return a
}

// NewAt starts an agent on addr, such as a port that refused connections
// until now (an agent coming up).
func NewAt(addr string) (*Agent, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	a := newAgent()
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	a.srv.Listener.Close()
	a.srv.Listener = ln
	a.srv.Start()
	return a, nil
}

func newAgent() *Agent {
	return &Agent{index: 1, services: map[string][]Instance{}, kv: map[string]*kvEntry{}, changed: make(chan struct{}), closed: make(chan struct{}),
		byWatch: map[string]*QueryCount{}}
}

// Addr is host:port of the agent's HTTP API.
func (a *Agent) Addr() string { return strings.TrimPrefix(a.srv.URL, "http://") }

// Close stops the agent; hanging requests are let go first.
func (a *Agent) Close() {
	a.mu.Lock()
	select {
	case <-a.closed:
	default:
		close(a.closed)
	}
	a.mu.Unlock()
	a.srv.CloseClientConnections()
	a.srv.Close()
}

// Requests counts the health queries received.
func (a *Agent) Requests() int64 { return a.requests.Load() }

// Blocked counts the queries (health or KV) held in a blocking wait right
// now: a test that needs a watcher parked before it changes something waits
// for this to rise, instead of sleeping.
func (a *Agent) Blocked() int64 { return a.blocked.Load() }

// Queries counts the health queries received for one watch, named as
// discovery.Watch.Key names it: "svc?dc=dc2&passing=1&tag=a&tag=b" (the
// service, then whichever of dc, near, passing and tag were sent, sorted).
// Two pools that share a watcher show up as one watch.
func (a *Agent) Queries(watch string) QueryCount {
	a.lastMu.Lock()
	defer a.lastMu.Unlock()
	if c := a.byWatch[watch]; c != nil {
		return *c
	}
	return QueryCount{}
}

// watchOf names the watch a health query is for, as discovery.Watch.Key.
func watchOf(service string, q url.Values) string {
	v := url.Values{}
	for _, t := range q["tag"] {
		v.Add("tag", t)
	}
	for _, k := range []string{"dc", "near"} {
		if q.Get(k) != "" {
			v.Set(k, q.Get(k))
		}
	}
	if q.Has("passing") {
		v.Set("passing", "1")
	}
	if len(v) == 0 {
		return url.PathEscape(service)
	}
	return url.PathEscape(service) + "?" + v.Encode()
}

// LastQuery returns the parameters of the last query.
func (a *Agent) LastQuery() url.Values {
	a.lastMu.Lock()
	defer a.lastMu.Unlock()
	return maps.Clone(a.last)
}

// Index returns the current index.
func (a *Agent) Index() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.index
}

// SetFault switches a fault on (None: off).
func (a *Agent) SetFault(f Fault) {
	a.mu.Lock()
	a.fault = f
	a.mu.Unlock()
}

// Register adds or replaces (by ID) an instance of service.
func (a *Agent) Register(service string, in Instance) {
	a.update(func() {
		in = fill(in)
		list := a.services[service]
		for i, x := range list {
			if x.ID == in.ID {
				list[i] = in
				return
			}
		}
		a.services[service] = append(list, in)
	})
}

// Deregister removes the instance of service with id.
func (a *Agent) Deregister(service, id string) {
	a.update(func() {
		a.services[service] = slices.DeleteFunc(a.services[service], func(x Instance) bool { return x.ID == id })
	})
}

// SetStatus sets an instance's aggregated check status.
func (a *Agent) SetStatus(service, id, status string) {
	a.update(func() {
		for i, x := range a.services[service] {
			if x.ID == id {
				a.services[service][i].Status = status
			}
		}
	})
}

// SetIndex sets the index (lower than now: it went backwards, as after a
// snapshot restore) and wakes blocked queries.
func (a *Agent) SetIndex(i uint64) {
	a.mu.Lock()
	a.index = i
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// Touch raises the index without changing any data, as a check's new
// output does on a real agent.
func (a *Agent) Touch() { a.update(func() {}) }

func (a *Agent) update(f func()) {
	a.mu.Lock()
	f()
	a.index++
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

func fill(in Instance) Instance {
	if in.Node == "" {
		in.Node = "node1"
	}
	if in.NodeIP == "" {
		in.NodeIP = "127.0.0.1"
	}
	if in.ID == "" {
		addr := in.Address
		if addr == "" {
			addr = in.NodeIP
		}
		in.ID = net.JoinHostPort(addr, strconv.Itoa(in.Port))
	}
	if in.Status == "" {
		in.Status = api.HealthPassing
	}
	if in.Weights == (api.AgentWeights{}) {
		in.Weights = api.AgentWeights{Passing: 1, Warning: 1}
	}
	return in
}

func (a *Agent) serve(w http.ResponseWriter, r *http.Request) {
	service, ok := strings.CutPrefix(r.URL.Path, "/v1/health/service/")
	if key, isKV := strings.CutPrefix(r.URL.Path, "/v1/kv/"); isKV {
		a.serveKV(w, r, key)
		return
	}
	if !ok || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	a.requests.Add(1)
	q := r.URL.Query()
	a.lastMu.Lock()
	a.last = q
	watch := watchOf(service, q)
	c := a.byWatch[watch]
	if c == nil {
		c = &QueryCount{}
		a.byWatch[watch] = c
	}
	c.Total++
	if i := q.Get("index"); i == "" || i == "0" {
		c.First++
	}
	a.lastMu.Unlock()

	fault := a.misbehave(w, r)
	if fault < 0 {
		return
	}
	index := a.block(r, q, fault)
	a.mu.Lock()
	list := slices.Clone(a.services[service])
	a.mu.Unlock()

	passing := q.Has("passing")
	tags := q["tag"]
	out := []*api.ServiceEntry{}
	for _, in := range list {
		if passing && in.Status != api.HealthPassing && in.Status != api.HealthWarning {
			continue
		}
		if !hasAll(in.Tags, tags) {
			continue
		}
		out = append(out, entry(in))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	json.NewEncoder(w).Encode(out)
}

// misbehave carries out the fault switched on, if it ends the request (then
// it returns -1); otherwise it returns the fault.
func (a *Agent) misbehave(w http.ResponseWriter, r *http.Request) Fault {
	a.mu.Lock()
	fault := a.fault
	a.mu.Unlock()
	switch fault {
	case Error500:
		http.Error(w, "rpc error making call: rpc error: code = Canceled desc = grpc: the client connection is closing", http.StatusInternalServerError)
		return -1
	case Hang:
		select {
		case <-r.Context().Done():
		case <-a.closed:
		}
		return -1
	case Reset:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0)
				}
				c.Close()
				return -1
			}
		}
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return -1
	}
	return fault
}

// block holds a blocking query (?index= at least the current index) until
// the index moves or ?wait= (plus up to wait/16) has passed, and returns the
// index to answer with.
func (a *Agent) block(r *http.Request, q url.Values, fault Fault) uint64 {
	want, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	wait := 5 * time.Minute // Consul's default
	if s := q.Get("wait"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			wait = d
		}
	}
	wait += rand.N(wait/16 + 1)
	a.mu.Lock()
	if fault != ZeroIndex && want > 0 && a.index <= want {
		ch := a.changed
		a.blocked.Add(1)
		a.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
		case <-a.closed:
		}
		t.Stop()
		a.mu.Lock()
		a.blocked.Add(-1)
	}
	index := a.index
	a.mu.Unlock()
	if fault == ZeroIndex {
		index = 0
	}
	return index
}

func hasAll(have, want []string) bool {
	for _, t := range want {
		if !slices.Contains(have, t) {
			return false
		}
	}
	return true
}

func entry(in Instance) *api.ServiceEntry {
	checkID := "service:" + in.ID
	if in.Status == api.HealthMaint {
		checkID = api.ServiceMaintPrefix + in.ID
	}
	status := in.Status
	if status == api.HealthMaint {
		status = api.HealthCritical
	}
	return &api.ServiceEntry{
		Node: &api.Node{Node: in.Node, Address: in.NodeIP, Datacenter: "dc1"},
		Service: &api.AgentService{
			ID: in.ID, Service: "", Tags: in.Tags, Port: in.Port, Address: in.Address, Weights: in.Weights,
		},
		Checks: api.HealthChecks{
			{Node: in.Node, CheckID: "serfHealth", Name: "Serf Health Status", Status: api.HealthPassing},
			{Node: in.Node, CheckID: checkID, Name: "service check", Status: status, ServiceID: in.ID},
		},
	}
}

type kvEntry struct {
	value          []byte
	create, modify uint64
}

// barrier holds KV PUTs until n have arrived.
type barrier struct {
	n, arrived int
	all        chan struct{}
}

// KVGets and KVPuts count the KV requests received.
func (a *Agent) KVGets() int64 { return a.kvGets.Load() }

// KVPuts counts the KV writes received.
func (a *Agent) KVPuts() int64 { return a.kvPuts.Load() }

// HoldPuts makes the next n KV PUTs wait until all n have arrived; they are
// then served one at a time. It forces a check-and-set race: writers that
// read the same index all send it before any is served.
func (a *Agent) HoldPuts(n int) {
	a.mu.Lock()
	a.barrier = &barrier{n: n, all: make(chan struct{})}
	a.mu.Unlock()
}

// KV returns a key's value and ModifyIndex; ok is false if it is absent.
func (a *Agent) KV(key string) (value []byte, modify uint64, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.kv[key]
	if e == nil {
		return nil, 0, false
	}
	return slices.Clone(e.value), e.modify, true
}

// PutKV stores a key as a PUT without cas would.
func (a *Agent) PutKV(key string, value []byte) {
	a.update(func() { a.putLocked(key, value) })
}

// DeleteKV removes a key.
func (a *Agent) DeleteKV(key string) {
	a.update(func() { delete(a.kv, key) })
}

// putLocked stores value at the index update is about to set. a.mu held.
func (a *Agent) putLocked(key string, value []byte) {
	e := a.kv[key]
	if e == nil {
		e = &kvEntry{create: a.index + 1}
		a.kv[key] = e
	}
	e.value, e.modify = slices.Clone(value), a.index+1
}

func (a *Agent) serveKV(w http.ResponseWriter, r *http.Request, key string) {
	switch r.Method {
	case http.MethodGet:
		a.kvGets.Add(1)
	case http.MethodPut:
		a.kvPuts.Add(1)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	a.lastMu.Lock()
	a.last = q
	a.lastMu.Unlock()
	fault := a.misbehave(w, r)
	if fault < 0 {
		return
	}
	if r.Method == http.MethodPut {
		a.putKV(w, r, key, q)
		return
	}
	index := a.block(r, q, fault)
	a.mu.Lock()
	e := a.kv[key]
	var out []map[string]any
	if e != nil {
		out = []map[string]any{{
			"Key": key, "Value": e.value, "Flags": 0, "LockIndex": 0,
			"CreateIndex": e.create, "ModifyIndex": e.modify,
		}}
	}
	a.mu.Unlock()
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	w.Header().Set("X-Consul-KnownLeader", "true")
	w.Header().Set("X-Consul-LastContact", "0")
	if out == nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (a *Agent) putKV(w http.ResponseWriter, r *http.Request, key string, q url.Values) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var cas *uint64
	if s := q.Get("cas"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "Invalid CAS index", http.StatusBadRequest)
			return
		}
		cas = &n
	}
	a.mu.Lock()
	b := a.barrier
	if b != nil {
		b.arrived++
		if b.arrived == b.n {
			close(b.all)
			a.barrier = nil
		}
	}
	a.mu.Unlock()
	if b != nil {
		select {
		case <-b.all:
		case <-a.closed:
			return
		case <-r.Context().Done():
			return
		}
	}
	a.mu.Lock()
	e := a.kv[key]
	ok := cas == nil || e == nil && *cas == 0 || e != nil && e.modify == *cas
	if ok {
		// Only a write raises the index: a failed check-and-set changes nothing.
		a.putLocked(key, body)
		a.index++
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintln(w, ok)
}
