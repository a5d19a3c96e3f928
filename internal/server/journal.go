package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/atomicfile"
	"github.com/l4lb/l4lb/pool"
)

// An op is one accepted live edit, as saved in the journal. Replaying the
// journal over the config file's specs gives the live specs: this is how
// edits survive a restart and a reload ("edits overlay the file"), and why
// `l4lb ctl reset` (an empty journal) goes back to the file.
type op struct {
	Op       string             `json:"op"`
	Upstream string             `json:"upstream"`
	Pool     string             `json:"pool,omitempty"`
	Host     string             `json:"host,omitempty"`
	Body     *control.Upstream  `json:"body,omitempty"`       // put_upstream
	PoolSpec *control.PoolSpec  `json:"pool_spec,omitempty"`  // add_pool
	PoolSet  *control.PoolPatch `json:"pool_patch,omitempty"` // patch_pool
	HostSpec *control.HostSpec  `json:"host_spec,omitempty"`  // add_host
	Weight   *int               `json:"weight,omitempty"`     // patch_host
	Action   control.Action     `json:"action,omitempty"`     // host_action
}

const (
	opPutUpstream    = "put_upstream"
	opDeleteUpstream = "delete_upstream"
	opAddPool        = "add_pool"
	opPatchPool      = "patch_pool"
	opDeletePool     = "delete_pool"
	opAddHost        = "add_host"
	opPatchHost      = "patch_host"
	opRemoveHost     = "remove_host"
	opHostAction     = "host_action"
)

// applyOp changes sp (a copy) as o says, validating as it goes. It is the
// one implementation of every edit: live requests and journal replay both
// come through here. The addresses o names were resolved before (r, from
// resolveOps): applyOp runs under s.mu and does no DNS.
func (s *Server) applyOp(sp specs, o op, r resolved) error {
	if err := o.check(); err != nil {
		return err
	}
	switch o.Op {
	case opPutUpstream:
		u, err := upstreamFromView(o.Upstream, *o.Body, sp[o.Upstream], r)
		if err != nil {
			return err
		}
		sp[o.Upstream] = u
		return nil
	case opDeleteUpstream:
		if _, err := sp.upstream(o.Upstream); err != nil {
			return err
		}
		for _, l := range s.cfg.Listeners {
			if l.Upstream == o.Upstream {
				return fmt.Errorf("upstream %q is used by listener %q: %w", o.Upstream, l.Name, control.ErrConflict)
			}
		}
		delete(sp, o.Upstream)
		return nil
	}
	u, err := sp.upstream(o.Upstream)
	if err != nil {
		return err
	}
	switch o.Op {
	case opAddPool:
		if _, err := u.pool(o.PoolSpec.Name); err == nil {
			return fmt.Errorf("pool %q of upstream %q: %w", o.PoolSpec.Name, u.Name, control.ErrConflict)
		}
		if err := checkMethod("method", o.PoolSpec.Method); err != nil {
			return err
		}
		u.Pools = append(u.Pools, &poolSpec{Name: o.PoolSpec.Name, Priority: o.PoolSpec.Priority, Method: o.PoolSpec.Method, Source: control.SourceAPI})
		return nil
	case opPatchPool, opDeletePool:
		p, err := u.pool(o.Pool)
		if err != nil {
			return err
		}
		if o.Op == opDeletePool {
			u.Pools = removePool(u.Pools, p)
			return nil
		}
		if o.PoolSet.Priority != nil {
			p.Priority = *o.PoolSet.Priority
		}
		if o.PoolSet.Method != nil {
			if err := checkMethod("method", *o.PoolSet.Method); err != nil {
				return err
			}
			p.Method = *o.PoolSet.Method
		}
		return nil
	}
	p, err := u.pool(o.Pool)
	if err != nil {
		return err
	}
	if p.Consul != nil {
		return errConsulPool(p)
	}
	if o.Op == opAddHost {
		h, err := hostSpecFrom(*o.HostSpec, control.SourceAPI, r.lookup)
		if err != nil {
			return err
		}
		if u.hostIDTaken(h.ID) {
			return fmt.Errorf("host %q in upstream %q: %w", h.ID, u.Name, control.ErrConflict)
		}
		p.Hosts = append(p.Hosts, h)
		return nil
	}
	h, i, err := p.host(o.Host)
	if err != nil {
		return err
	}
	switch o.Op {
	case opPatchHost:
		h.Weight = *o.Weight
	case opRemoveHost:
		p.Hosts = append(p.Hosts[:i], p.Hosts[i+1:]...)
	case opHostAction:
		switch o.Action {
		case control.ActionDown:
			h.Admin = pool.StateManualDown
		case control.ActionUp:
			h.Admin = pool.StateUp
		case control.ActionDrain:
			h.Admin = pool.StateDraining
		default:
			return &control.FieldError{Field: "action", Msg: fmt.Sprintf("unknown action %q", o.Action)}
		}
	default:
		return fmt.Errorf("unknown edit %q", o.Op)
	}
	return nil
}

func removePool(ps []*poolSpec, p *poolSpec) []*poolSpec {
	out := ps[:0:0]
	for _, x := range ps {
		if x != p {
			out = append(out, x)
		}
	}
	return out
}

// checkMethod refuses methods this build does not have.
func checkMethod(field string, m pool.Method) error {
	if m == "" {
		return nil
	}
	if _, err := pool.NewSelector(m); err != nil {
		return &control.FieldError{Field: field, Msg: fmt.Sprintf("method %q is not supported by this version", m)}
	}
	return nil
}

// upstreamFromView builds a spec from a PUT body. An upstream that exists
// keeps its file settings (health, max_fails, ...); a new one gets defaults.
func upstreamFromView(name string, v control.Upstream, old *upSpec, r resolved) (*upSpec, error) {
	cfg := defaultUpstreamConfig(name)
	if old != nil {
		cfg = old.Cfg
	}
	if err := checkMethod("method", v.Method); err != nil {
		return nil, err
	}
	u := &upSpec{Name: name, Cfg: cfg, Method: v.Method, Tries: v.Tries, Source: control.SourceAPI}
	if u.Method == "" {
		u.Method = pool.MethodRoundRobin
	}
	if u.Tries == 0 {
		u.Tries = cfg.Tries
	}
	ids := map[string]bool{}
	for i, pv := range v.Pools {
		if err := checkMethod(fmt.Sprintf("pools[%d].method", i), pv.Method); err != nil {
			return nil, err
		}
		ps := &poolSpec{Name: pv.Name, Priority: pv.Priority, Method: pv.Method, Source: control.SourceAPI}
		if old != nil {
			if op, err := old.pool(pv.Name); err == nil {
				ps.Health = op.Health
				ps.Consul = op.Consul
			}
		}
		if ps.Consul != nil {
			// Its hosts come from Consul: those of a GET put back (source
			// consul) are ignored; any other is an error.
			for _, hv := range pv.Hosts {
				if hv.Source != control.SourceConsul {
					return nil, errConsulPool(ps)
				}
			}
			u.Pools = append(u.Pools, ps)
			continue
		}
		for j, hv := range pv.Hosts {
			h, err := hostSpecFrom(control.HostSpec{ID: hv.ID, Address: hv.Address, Weight: hv.Weight}, control.SourceAPI, r.lookup)
			if err != nil {
				var fe *control.FieldError
				if errors.As(err, &fe) {
					fe.Field = fmt.Sprintf("pools[%d].hosts[%d].%s", i, j, fe.Field)
				}
				return nil, err
			}
			if ids[h.ID] {
				return nil, fmt.Errorf("host %q twice in upstream %q: %w", h.ID, name, control.ErrConflict)
			}
			ids[h.ID] = true
			ps.Hosts = append(ps.Hosts, h)
		}
		u.Pools = append(u.Pools, ps)
	}
	return u, nil
}

// journalFile is the saved edits: {"version": 1, "ops": [...]}. It is
// also the value of the fleet store's key in Consul (without "store").
type journalFile struct {
	Version int        `json:"version"`
	Ops     []op       `json:"ops"`
	Store   *storeMeta `json:"store,omitempty"` // fleet mode: where the copy comes from
}

// storeMeta says, in the local copy of a fleet journal (the last-known-good
// one), which Consul key and index it is a copy of, and when it was read.
type storeMeta struct {
	Kind  string    `json:"kind"` // consul
	Key   string    `json:"key"`
	Index uint64    `json:"index"`
	Time  time.Time `json:"time"`
}

const journalName = "edits.json"

func (s *Server) journalPath() string {
	if s.cfg.Control.StateDir == "" {
		return ""
	}
	return filepath.Join(s.cfg.Control.StateDir, journalName)
}

// loadJournal reads the saved edits; a missing file is an empty journal
// (and a nil journalFile).
func loadJournal(path string) (*journalFile, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	j, err := decodeJournal(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return j, nil
}

// check validates o on its own, as the control API validates a request
// before it becomes an op: its payload is there and well formed. Live edits
// pass it by construction; a journal read back from state_dir, or a fleet
// journal another instance wrote to Consul, may not (a hand edit, a bug, a
// newer or corrupt writer), and replay must refuse such an op, not panic or
// apply a weight the API would have refused.
func (o op) check() error {
	missing := func(what string) error {
		return &control.FieldError{Field: what, Msg: fmt.Sprintf("required for op %q", o.Op)}
	}
	switch o.Op {
	case opPutUpstream:
		if o.Body == nil {
			return missing("body")
		}
		return o.Body.Validate()
	case opDeleteUpstream, opDeletePool, opRemoveHost, opHostAction:
		// No payload: what they name must exist, and an action must be
		// known; applyOp checks both against the state.
		return nil
	case opAddPool:
		if o.PoolSpec == nil {
			return missing("pool_spec")
		}
		return o.PoolSpec.Validate()
	case opPatchPool:
		if o.PoolSet == nil {
			return missing("pool_patch")
		}
		return o.PoolSet.Validate()
	case opAddHost:
		if o.HostSpec == nil {
			return missing("host_spec")
		}
		return o.HostSpec.Validate()
	case opPatchHost:
		return control.HostPatch{Weight: o.Weight}.Validate()
	}
	return &control.FieldError{Field: "op", Msg: fmt.Sprintf("unknown op %q", o.Op)}
}

// decodeJournal parses a journal file or a fleet store's value.
func decodeJournal(b []byte) (*journalFile, error) {
	var j journalFile
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	if j.Version != 1 {
		return nil, fmt.Errorf("unknown version %d", j.Version)
	}
	return &j, nil
}

// encodeJournal is the fleet store's value for ops: the file's format.
func encodeJournal(ops []op) []byte {
	if ops == nil {
		ops = []op{}
	}
	b, err := json.MarshalIndent(journalFile{Version: 1, Ops: ops}, "", "  ")
	if err != nil {
		panic(err) // ops are plain data
	}
	return append(b, '\n')
}

// saveJournal writes ops atomically: a temporary file, fsync, rename over
// the old one, fsync of the directory. A crash leaves the old or the new
// journal, never a mix.
func saveJournal(path string, ops []op) error {
	return saveJournalFile(path, journalFile{Version: 1, Ops: ops})
}

// saveJournalFile writes j as saveJournal does.
func saveJournalFile(path string, j journalFile) error {
	if path == "" {
		return nil
	}
	if j.Ops == nil {
		j.Ops = []op{}
	}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'))
}

// compact drops ops that a later op makes irrelevant, so the journal does
// not grow with every edit an automation makes over the years:
//   - an earlier set of the same host's weight or state, an earlier patch
//     of the same pool (one that the later patch covers);
//   - everything before a whole-upstream put or delete of that upstream;
//   - a host's weight and state ops before its removal, and the removal
//     itself with the add it undoes (a host added through the API and
//     removed again leaves nothing behind; a config host's removal stays);
//   - a pool added through the API and deleted again, with every op on it;
//   - the ops on a config pool before its deletion, but for host removals:
//     host ids are unique in an upstream, so a removal may have freed an id
//     that a later add in another pool took.
//
// A put or delete of the whole upstream is a barrier: what came before it
// is another life of the upstream. Replaying the compacted journal over the
// same config gives the same state as replaying the whole one
// (TestCompactReplaysTheSame).
func compact(ops []op) []op {
	keep := make([]bool, len(ops))
	for i := range ops {
		keep[i] = true
	}
	// earlier visits the kept ops before j of j's upstream, latest first,
	// up to a barrier, until f says stop.
	earlier := func(j int, f func(i int, a op) (stop bool)) {
		b := ops[j]
		whole := b.Op == opPutUpstream || b.Op == opDeleteUpstream
		for i := j - 1; i >= 0; i-- {
			a := ops[i]
			if !keep[i] || a.Upstream != b.Upstream {
				continue
			}
			if !whole && (a.Op == opPutUpstream || a.Op == opDeleteUpstream) {
				return
			}
			if f(i, a) {
				return
			}
		}
	}
	for j := len(ops) - 1; j >= 0; j-- {
		if !keep[j] {
			continue
		}
		b := ops[j]
		switch b.Op {
		case opPutUpstream, opDeleteUpstream:
			earlier(j, func(i int, _ op) bool { keep[i] = false; return false })
		case opRemoveHost:
			earlier(j, func(i int, a op) bool {
				switch {
				case (a.Op == opAddPool || a.Op == opDeletePool) && opPool(a) == b.Pool:
					return true // the pool's earlier life
				case a.Pool != b.Pool || opHost(a) != b.Host:
				case a.Op == opPatchHost || a.Op == opHostAction:
					keep[i] = false
				case a.Op == opAddHost: // the removal undoes this add
					keep[i], keep[j] = false, false
					return true
				}
				return false
			})
		case opDeletePool:
			added := -1
			earlier(j, func(i int, a op) bool {
				if a.Op == opAddPool && opPool(a) == b.Pool {
					added = i
					return true
				}
				return false
			})
			earlier(j, func(i int, a op) bool {
				if i < added || opPool(a) != b.Pool {
					return i < added
				}
				if added >= 0 || a.Op != opRemoveHost {
					keep[i] = false
				}
				return false
			})
			if added >= 0 {
				keep[j] = false
			}
		case opPatchHost, opHostAction, opPatchPool:
			earlier(j, func(i int, a op) bool {
				if a.Op == b.Op && a.Pool == b.Pool && a.Host == b.Host && (b.Op != opPatchPool || samePatch(a, b)) {
					keep[i] = false
				}
				return false
			})
		}
	}
	out := ops[:0:0]
	for i, o := range ops {
		if keep[i] {
			out = append(out, o)
		}
	}
	return out
}

// opHost is the id of the host o is about: for an add, the id it gives the
// host (its address when it names none).
func opHost(o op) string {
	if o.Op == opAddHost && o.HostSpec != nil {
		if o.HostSpec.ID != "" {
			return o.HostSpec.ID
		}
		return o.HostSpec.Address
	}
	return o.Host
}

// opPool is the name of the pool o is about.
func opPool(o op) string {
	if o.Op == opAddPool && o.PoolSpec != nil {
		return o.PoolSpec.Name
	}
	return o.Pool
}

// samePatch: a later pool patch replaces an earlier one only if it sets
// every field the earlier one set.
func samePatch(a, b op) bool {
	return (a.PoolSet.Priority == nil || b.PoolSet.Priority != nil) && (a.PoolSet.Method == nil || b.PoolSet.Method != nil)
}
