package control

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l4lb/l4lb/internal/events"
	"github.com/l4lb/l4lb/pool"
)

// fake is an in-memory API, standing in for the binary's pool set.
type fake struct {
	mu        sync.Mutex
	ups       []Upstream // sorted by name
	initial   []Upstream
	drainEnd  map[string]time.Time // by upstream/pool/host
	feed      *events.Feed
	reloadErr error
}

var _ API = (*fake)(nil)

func newFake() *fake {
	ups := []Upstream{{
		Name: "redis", Method: "round_robin", Tries: 3,
		Pools: []Pool{
			{Name: "primary", Priority: 0, Hosts: []Host{
				{ID: "10.0.0.1:6379", Address: "10.0.0.1:6379", Weight: 10, Source: SourceConfig},
				{ID: "r2", Address: "10.0.0.2:6379", Weight: 10, Source: SourceConfig},
			}},
			{Name: "dr", Priority: 10, Hosts: []Host{
				{ID: "unix:/run/r.sock", Address: "unix:/run/r.sock", Weight: 1, Source: SourceConsul},
			}},
		},
	}}
	return &fake{ups: clone(ups), initial: clone(ups), drainEnd: map[string]time.Time{}, feed: events.New(64)}
}

func clone(us []Upstream) []Upstream {
	b, _ := json.Marshal(us)
	var out []Upstream
	json.Unmarshal(b, &out)
	return out
}

// hash is a digest of the whole state, to check that a refused request
// changed nothing.
func (f *fake) hash() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(f.ups)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (f *fake) find(u string) (int, error) {
	i := slices.IndexFunc(f.ups, func(x Upstream) bool { return x.Name == u })
	if i < 0 {
		return 0, fmt.Errorf("upstream %q: %w", u, ErrNotFound)
	}
	return i, nil
}

func (f *fake) findPool(u, p string) (*Upstream, int, error) {
	i, err := f.find(u)
	if err != nil {
		return nil, 0, err
	}
	up := &f.ups[i]
	j := slices.IndexFunc(up.Pools, func(x Pool) bool { return x.Name == p })
	if j < 0 {
		return nil, 0, fmt.Errorf("pool %q of upstream %q: %w", p, u, ErrNotFound)
	}
	return up, j, nil
}

func (f *fake) findHost(u, p, h string) (*Host, error) {
	up, j, err := f.findPool(u, p)
	if err != nil {
		return nil, err
	}
	hs := up.Pools[j].Hosts
	k := slices.IndexFunc(hs, func(x Host) bool { return x.ID == h })
	if k < 0 {
		return nil, fmt.Errorf("host %q in pool %q of upstream %q: %w", h, p, u, ErrNotFound)
	}
	return &hs[k], nil
}

func (f *fake) Upstreams() []Upstream {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.ups)
}

func (f *fake) Upstream(name string) (Upstream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(name)
	if err != nil {
		return Upstream{}, err
	}
	return clone(f.ups[i : i+1])[0], nil
}

func (f *fake) PutUpstream(u Upstream) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u = clone([]Upstream{u})[0]
	for i := range u.Pools {
		for j := range u.Pools[i].Hosts {
			h := &u.Pools[i].Hosts[j]
			if h.ID == "" {
				h.ID = h.Address
			}
			h.Source = SourceAPI
		}
	}
	i, err := f.find(u.Name)
	if err != nil {
		f.ups = append(f.ups, u)
		slices.SortFunc(f.ups, func(a, b Upstream) int { return strings.Compare(a.Name, b.Name) })
		f.feed.Publish(events.Event{Kind: events.PoolUpdated, Upstream: u.Name})
		return true, nil
	}
	f.ups[i] = u
	f.feed.Publish(events.Event{Kind: events.PoolUpdated, Upstream: u.Name})
	return false, nil
}

func (f *fake) DeleteUpstream(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(name)
	if err != nil {
		return err
	}
	f.ups = slices.Delete(f.ups, i, i+1)
	return nil
}

func (f *fake) AddPool(u string, p PoolSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.find(u)
	if err != nil {
		return err
	}
	if _, _, err := f.findPool(u, p.Name); err == nil {
		return fmt.Errorf("pool %q of upstream %q: %w", p.Name, u, ErrConflict)
	}
	f.ups[i].Pools = append(f.ups[i].Pools, Pool{Name: p.Name, Priority: p.Priority, Method: p.Method, Hosts: []Host{}})
	return nil
}

func (f *fake) PatchPool(u, p string, patch PoolPatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	up, j, err := f.findPool(u, p)
	if err != nil {
		return err
	}
	if patch.Method != nil && *patch.Method == "fastest" {
		return &FieldError{Field: "method", Msg: `"fastest" is not implemented yet`}
	}
	if patch.Priority != nil {
		up.Pools[j].Priority = *patch.Priority
	}
	if patch.Method != nil {
		up.Pools[j].Method = *patch.Method
	}
	return nil
}

func (f *fake) DeletePool(u, p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	up, j, err := f.findPool(u, p)
	if err != nil {
		return err
	}
	if len(up.Pools) == 1 {
		return fmt.Errorf("pool %q is the last of upstream %q: %w", p, u, ErrInvalid)
	}
	up.Pools = slices.Delete(up.Pools, j, j+1)
	return nil
}

func (f *fake) AddHost(u, p string, h HostSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	up, j, err := f.findPool(u, p)
	if err != nil {
		return err
	}
	if h.ID == "" {
		h.ID = h.Address
	}
	for _, pl := range up.Pools {
		for _, x := range pl.Hosts {
			if x.ID == h.ID {
				return fmt.Errorf("host %q in pool %q: %w", h.ID, pl.Name, ErrConflict)
			}
		}
	}
	up.Pools[j].Hosts = append(up.Pools[j].Hosts, Host{ID: h.ID, Address: h.Address, Weight: h.Weight, Source: SourceAPI})
	f.feed.Publish(events.Event{Kind: events.HostAdded, Upstream: u, Pool: p, Host: h.ID})
	return nil
}

func (f *fake) PatchHost(u, p, h string, patch HostPatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	x, err := f.findHost(u, p, h)
	if err != nil {
		return err
	}
	x.Weight = *patch.Weight
	return nil
}

func (f *fake) RemoveHost(u, p, h string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	x, err := f.findHost(u, p, h)
	if err != nil {
		return err
	}
	// The real thing drains first; the fake marks it and keeps it listed.
	x.State = pool.StateDraining
	f.drainEnd[u+"/"+p+"/"+h] = time.Now().Add(30 * time.Second)
	f.feed.Publish(events.Event{Kind: events.HostDraining, Upstream: u, Pool: p, Host: h, Reason: "removed"})
	return nil
}

func (f *fake) HostAction(u, p, h string, a Action) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	x, err := f.findHost(u, p, h)
	if err != nil {
		return err
	}
	kind := map[Action]string{ActionDown: events.HostManualDown, ActionUp: events.HostUp, ActionDrain: events.HostDraining}[a]
	x.State = map[Action]pool.State{ActionDown: pool.StateManualDown, ActionUp: pool.StateUp, ActionDrain: pool.StateDraining}[a]
	if a == ActionDrain {
		f.drainEnd[u+"/"+p+"/"+h] = time.Now().Add(30 * time.Second)
	} else {
		delete(f.drainEnd, u+"/"+p+"/"+h)
	}
	f.feed.Publish(events.Event{Kind: kind, Upstream: u, Pool: p, Host: h, Reason: "control API"})
	return nil
}

func (f *fake) Sessions() []Session {
	return []Session{{Listener: "dns", Client: "127.0.0.1:5353", Upstream: "dns", Pool: "p", Host: "h", DatagramsUp: 1}}
}

func (f *fake) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	var st Status
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, u := range f.ups {
		for _, p := range u.Pools {
			for _, h := range p.Hosts {
				st.Hosts = append(st.Hosts, HostStatus{
					Upstream: u.Name, Pool: p.Name, Source: h.Source,
					HostStats: pool.HostStats{
						ID: h.ID, Network: "tcp", Address: h.Address, Weight: h.Weight, State: h.State,
						Since: since, Active: 2, Total: 1234, BytesToHost: 1536, BytesFromHost: 5 << 20,
					},
					DrainDeadline: f.drainEnd[u.Name+"/"+p.Name+"/"+h.ID],
				})
			}
		}
	}
	return st
}

func (f *fake) Subscribe(since uint64, buf int) ([]events.Event, *events.Sub) {
	return f.feed.Subscribe(since, buf)
}

func (f *fake) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reloadErr != nil {
		return f.reloadErr
	}
	f.feed.Publish(events.Event{Kind: events.ConfigReloaded})
	return nil
}

func (f *fake) Reset() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ups = clone(f.initial)
	clear(f.drainEnd)
	return nil
}
