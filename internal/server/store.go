package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/l4lb/l4lb/control"
	"github.com/l4lb/l4lb/internal/config"
	"github.com/l4lb/l4lb/internal/fleet"
	"github.com/l4lb/l4lb/internal/logkey"
)

// The journal of live edits is kept by a store. With [control] store =
// "local" (the default) it is the file state_dir/edits.json. With "consul"
// (fleet mode) it is the Consul key <kv_prefix>edits, shared by every
// instance of the fleet:
//
//   - an edit first reads the key (a query that does not block) and puts
//     that journal in force if it is not already; the op is validated on
//     it, and the new journal written with check-and-set on the ModifyIndex
//     just read: if another instance wrote in between, nothing changes and
//     the edit fails with 409; if Consul cannot be reached (the read or the
//     write), it fails with 503. On success it is applied here at once, and
//     the key is read back for its new index.
//
//     Why read first rather than build on the watch's copy: the copy lags
//     by up to one round trip, and edits made one after the other through
//     different instances (a script going round the fleet) would then fail
//     with 409 for no conflict at all. Why not retry on a failed
//     check-and-set (re-apply the op on the newer journal): a whole-upstream
//     PUT re-applied would drop what the other instance just added, and two
//     weight changes would both be told "done" with one lost. 409 leaves
//     that call to the operator.
//   - every instance watches the key (internal/fleet) and applies each new
//     journal as a reload would: replayed over its own config file, the
//     running pools made to match (hosts that stay keep their state and
//     counters, removed ones drain).
//   - the file state_dir/edits.json is the last-known-good copy: written
//     with each journal applied, served at start until Consul answers.
//     Edits are refused (503) until this instance has read the key.
//
// Health stays local: each instance probes for itself. Manual states
// (down, up, drain) are edits, so they are shared.

// Sources of the journal in force, in fleet mode.
const (
	storeLocal  = "local"
	storeConsul = "consul"

	sourceConsul = "consul"
	sourceLKG    = "last_known_good"
	sourceNone   = "none"
)

// storeError is an error of the store: its message is the whole story, and
// it wraps the control error that says how to answer it.
type storeError struct {
	msg  string
	kind error
}

func (e *storeError) Error() string { return e.msg }
func (e *storeError) Unwrap() error { return e.kind }

// fleetConfig is the fleet store's config, or nil with the local store.
func fleetConfig(cfg *config.Config) *fleet.Config {
	if cfg.Control.Store != storeConsul {
		return nil
	}
	return &fleet.Config{Client: consulConfig(cfg), Key: cfg.Control.KVPrefix + "edits"}
}

// syncStore, in fleet mode, reads the stored journal and puts it in force
// if it is not already, so that an edit is validated on it and written
// with check-and-set on its index. s.editMu held.
func (s *Server) syncStore() error {
	if s.fleet == nil {
		return nil
	}
	v, err := s.fleet.Get(context.Background())
	if err != nil {
		s.log.Warn().Err(err).Msg("fleet store: edit refused, consul cannot be reached")
		return &storeError{
			msg:  fmt.Sprintf("the fleet store (Consul) cannot be reached: edits are refused so this instance does not diverge (%v)", err),
			kind: control.ErrUnavailable,
		}
	}
	s.adopt(v)
	return nil
}

// commit stores journal, the one an edit or a reset made from s.journal.
// s.editMu held, s.mu not: the fleet store writes over the network.
func (s *Server) commit(journal []op) error {
	if s.fleet == nil {
		if err := saveJournal(s.journalPath(), journal); err != nil {
			return fmt.Errorf("saving the edit under %s: %v: %w", s.cfg.Control.StateDir, err, control.ErrUnavailable)
		}
		return nil
	}
	s.mu.Lock()
	read, index := s.fleetRead, s.fleetIndex
	s.mu.Unlock()
	if !read {
		return &storeError{
			msg:  fmt.Sprintf("the fleet store (Consul key %s) has not answered since this instance started: edits are refused until it does, so this instance does not diverge", s.fleet.Key()),
			kind: control.ErrUnavailable,
		}
	}
	err := s.fleet.Commit(context.Background(), encodeJournal(journal), index)
	switch {
	case errors.Is(err, fleet.ErrConflict):
		s.log.Info().Uint64("index", index).Msg("fleet store: edit refused, another instance wrote first")
		return &storeError{
			msg:  fmt.Sprintf("edited concurrently by another instance (Consul key %s changed since index %d): nothing was changed; retry", s.fleet.Key(), index),
			kind: control.ErrConflict,
		}
	case err != nil:
		s.log.Warn().Err(err).Msg("fleet store: edit refused, consul cannot be reached")
		return &storeError{
			msg:  fmt.Sprintf("the fleet store (Consul) cannot be reached: edits are refused so this instance does not diverge (%v)", err),
			kind: control.ErrUnavailable,
		}
	}
	return nil
}

// committed follows a successful commit in fleet mode, once the new
// journal is in force here: the key is read back, for the index the next
// edit builds on (and in case another instance wrote just after). s.editMu
// held.
func (s *Server) committed(journal []op) {
	if s.fleet == nil {
		return
	}
	v, err := s.fleet.Get(context.Background())
	if err != nil {
		// The watch will bring the new index; until then an edit here gets
		// 409 (its index is old), which is safe.
		s.log.Warn().Err(err).Msg("fleet store: reading back the edit failed")
		s.saveLKG(journal, 0)
		return
	}
	s.adopt(v)
}

// fleetUpdate applies what the fleet store's watch reports.
func (s *Server) fleetUpdate(v fleet.Value) {
	s.editMu.Lock()
	defer s.editMu.Unlock()
	s.adopt(v)
}

// adopt puts the stored journal v in force, as a reload would. s.editMu held.
func (s *Server) adopt(v fleet.Value) {
	var ops []op
	if v.Data != nil {
		j, err := decodeJournal(v.Data)
		if err != nil {
			// Not ours, or damaged: keep serving what we have. Its index is
			// taken, so that an edit or a reset here writes over it.
			s.log.Error().Err(err).Str("key", s.fleet.Key()).Uint64("index", v.Index).
				Msg("fleet store: the stored journal cannot be read; keeping the edits in force (a reset or an edit replaces it)")
			s.mu.Lock()
			s.fleetIndex, s.fleetRead, s.fleetErr = v.Index, true, "the stored journal cannot be read: "+err.Error()
			s.mu.Unlock()
			return
		}
		ops = j.Ops
	}
	s.mu.Lock()
	if s.fleetRead && !v.Fresh && v.Index < s.fleetIndex {
		// An answer older than what this instance has: its own edit,
		// read back before the watch saw it.
		s.mu.Unlock()
		return
	}
	same := sameOps(ops, s.journal)
	s.mu.Unlock()
	// A new journal's names are resolved before s.mu is taken again; what
	// was read above changes only under editMu, held here.
	var r resolved
	if !same {
		r = s.resolveOps(ops)
	}
	s.mu.Lock()
	moved := !s.fleetRead || v.Index != s.fleetIndex
	s.fleetIndex, s.fleetRead, s.fleetErr, s.fleetSource = v.Index, true, "", sourceConsul
	if !same {
		next, kept := s.replay(specsFromConfig(s.cfg), ops, r)
		s.journal = ops
		s.apply(next)
		s.log.Info().Str("key", s.fleet.Key()).Uint64("index", v.Index).Int(logkey.Count, len(ops)).
			Int("applied", len(kept)).Msg("fleet store: edits applied")
	}
	s.mu.Unlock()
	if !same || moved {
		s.saveLKG(ops, v.Index)
	}
}

// saveLKG writes the last-known-good copy of the fleet journal.
func (s *Server) saveLKG(ops []op, index uint64) {
	j := journalFile{Version: 1, Ops: ops, Store: &storeMeta{Kind: storeConsul, Key: s.fleet.Key(), Index: index, Time: time.Now()}}
	if err := saveJournalFile(s.journalPath(), j); err != nil {
		s.log.Error().Err(err).Msg("fleet store: writing the last-known-good copy")
	}
}

// sameOps compares two journals by their JSON: ops hold pointers.
func sameOps(a, b []op) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 {
		return true
	}
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// storeStatus is the store's line of the status. s.mu held (the fleet
// store's own lock is a leaf).
func (s *Server) storeStatus(now time.Time) *control.StoreStatus {
	if s.fleet == nil {
		return &control.StoreStatus{Kind: storeLocal, Key: s.journalPath(), Edits: len(s.journal), InSync: true}
	}
	fs := s.fleet.Status()
	st := &control.StoreStatus{
		Kind: storeConsul, Key: s.fleet.Key(), Source: s.fleetSource, Index: s.fleetIndex, Edits: len(s.journal),
		Updated: fs.Updated, Failures: fs.Failures, LastError: fs.LastError,
	}
	if st.LastError == "" {
		st.LastError = s.fleetErr
	}
	if s.fleetSource == sourceLKG {
		st.Index = s.lkgIndex
	}
	st.InSync = s.fleetRead && fs.Failures == 0 && fs.Index <= s.fleetIndex && s.fleetErr == ""
	if !fs.Updated.IsZero() {
		st.Age = now.Sub(fs.Updated).Round(time.Second).String()
	}
	return st
}

// StoreStatus returns the store's status.
func (s *Server) StoreStatus() control.StoreStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.storeStatus(time.Now())
}

func runFleet(ctx context.Context, s *Server, done chan<- struct{}) {
	defer close(done)
	s.fleet.Run(ctx, s.fleetUpdate)
}
