// Package fleet keeps one value (the journal of live edits) in Consul KV for
// several l4lb instances: it reads it, writes it with check-and-set on the
// key's ModifyIndex, and watches it with blocking queries.
//
// It knows nothing of what the value means: the server encodes its journal,
// commits it with CAS, and applies every new value the watch reports. The
// watch follows the discipline of internal/discovery: index rules (an index
// of 0 is taken as 1, an index that goes backwards starts over with a query
// that does not block), a deadline on every request above wait + wait/16,
// exponential backoff with jitter on errors, and a rate limit on blocking
// queries that return at once with nothing new.
package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/l4lb/l4lb/internal/discovery"
	"github.com/rs/zerolog"
)

// Errors of Commit, wrapped.
var (
	// ErrConflict: the key changed since the index the write was built on
	// (another instance wrote first). Nothing was written.
	ErrConflict = errors.New("fleet: the stored value changed since it was read")
	// ErrUnavailable: Consul did not answer, or answered with an error.
	// Nothing was written, unless the write reached Consul and only its
	// answer was lost: the watch then reports it like any other change.
	ErrUnavailable = errors.New("fleet: consul cannot be reached")
)

// Config is where the value lives and how to reach Consul. Client holds the
// [consul] settings (address, token, TLS, wait, backoff, startup timeout);
// its zero durations take discovery's defaults.
type Config struct {
	Client discovery.Config
	Key    string // the KV key, such as "l4lb/default/edits"
	// WriteTimeout bounds a write and the read that follows it; 0 = 5s.
	WriteTimeout time.Duration
}

func (c *Config) defaults() {
	c.Client.SetDefaults()
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 5 * time.Second
	}
}

// Value is the key as Consul holds it.
type Value struct {
	Data  []byte // nil: the key does not exist
	Index uint64 // its ModifyIndex, for check-and-set; 0 = absent
	// Fresh: read after Consul's index went backwards (a restored
	// snapshot, another server): the whole current state, to take even if
	// Index is lower than one seen before. Any other answer with a lower
	// Index than one already in force is stale: a query that was in flight
	// while this instance wrote and read back a newer journal.
	Fresh bool
}

// Status is the watch's state, for operators.
type Status struct {
	Key       string
	Index     uint64    // ModifyIndex of the last value read; 0 = absent or none read
	Read      bool      // a value has been read since start
	Updated   time.Time // last good answer
	Failures  int       // consecutive failed requests
	LastError string    // while failing
}

// Store is the client of one key. Create it with New.
type Store struct {
	cfg       Config
	log       zerolog.Logger
	kv        *api.KV
	transport *http.Transport
	kick      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once

	mu     sync.Mutex
	status Status
}

// New builds the Consul client. It starts nothing.
func New(cfg Config, log zerolog.Logger) (*Store, error) {
	cfg.defaults()
	c := &cfg.Client
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tlsConf := api.TLSConfig{
		Address: c.Address, CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, InsecureSkipVerify: c.SkipVerify,
	}
	if host, _, err := net.SplitHostPort(c.Address); err == nil {
		tlsConf.Address = host
	}
	hc, err := api.NewHttpClient(tr, tlsConf)
	if err != nil {
		return nil, fmt.Errorf("fleet: consul tls: %w", err)
	}
	// The backstop above every per-request deadline (see discovery.New).
	hc.Timeout = c.RequestTimeout(c.Wait) + max(c.StartupTimeout, cfg.WriteTimeout)
	client, err := api.NewClient(&api.Config{
		Address: c.Address, Scheme: c.Scheme, Datacenter: c.Datacenter, Token: c.Token, TokenFile: c.TokenFile,
		HttpClient: hc, Transport: tr, TLSConfig: tlsConf,
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: consul client: %w", err)
	}
	return &Store{
		cfg: cfg, log: log.With().Str("component", "fleet").Str("key", cfg.Key).Logger(),
		kv: client.KV(), transport: tr, kick: make(chan struct{}, 1), ready: make(chan struct{}),
		status: Status{Key: cfg.Key},
	}, nil
}

// Key is the KV key.
func (s *Store) Key() string { return s.cfg.Key }

// Status returns the watch's state.
func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Ready is closed once Run has had its first outcome: an answer, or none
// within the startup timeout.
func (s *Store) Ready() <-chan struct{} { return s.ready }

// Kick makes a watch that waits out a backoff query again now (after a
// failed check-and-set, say: the new value is wanted at once).
func (s *Store) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Get reads the key with a query that does not block.
func (s *Store) Get(ctx context.Context) (Value, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	pair, _, err := s.kv.Get(s.cfg.Key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Value{}, fmt.Errorf("%w: reading %s: %w", ErrUnavailable, s.cfg.Key, err)
	}
	return valueOf(pair, false), nil
}

// Commit writes data if the key's ModifyIndex is still index (0: only if
// the key is absent). It returns ErrConflict if the key changed, and
// ErrUnavailable if Consul did not answer within the write timeout.
func (s *Store) Commit(ctx context.Context, data []byte, index uint64) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	ok, _, err := s.kv.CAS(&api.KVPair{Key: s.cfg.Key, Value: data, ModifyIndex: index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer within %s: %w", s.cfg.WriteTimeout, err)
		}
		return fmt.Errorf("%w: writing %s: %w", ErrUnavailable, s.cfg.Key, err)
	}
	if !ok {
		s.Kick()
		return fmt.Errorf("%w: %s is no longer at index %d", ErrConflict, s.cfg.Key, index)
	}
	return nil
}

func valueOf(pair *api.KVPair, fresh bool) Value {
	if pair == nil {
		return Value{Fresh: fresh}
	}
	data := pair.Value
	if data == nil {
		data = []byte{} // present but empty: not absent
	}
	return Value{Data: data, Index: pair.ModifyIndex, Fresh: fresh}
}

// Run watches the key until ctx is done, calling apply with the first value
// read and then with every change, from this goroutine, one at a time.
func (s *Store) Run(ctx context.Context, apply func(Value)) {
	defer s.transport.CloseIdleConnections()
	defer s.readyOnce.Do(func() { close(s.ready) })
	w := &watch{s: s, apply: apply}
	c := &s.cfg.Client
	res := w.poll(ctx, min(c.StartupTimeout, c.RequestTimeout(c.Wait)))
	if ctx.Err() != nil {
		return
	}
	if res.err != nil {
		s.log.Warn().Err(res.err).Msg("consul unreachable at start: serving the last-known-good edits; edits are refused until it answers")
	}
	s.readyOnce.Do(func() { close(s.ready) })
	for {
		if d := w.delay(res); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-s.kick:
				t.Stop()
			}
		}
		res = w.poll(ctx, c.RequestTimeout(c.Wait))
		if ctx.Err() != nil {
			return
		}
	}
}

// watch is Run's loop state; only its goroutine touches it.
type watch struct {
	s        *Store
	apply    func(Value)
	index    uint64 // X-Consul-Index to block on; 0 = do not block
	have     bool   // a value was given to apply
	last     Value  // the last value given
	failures int
}

type result struct {
	err error
	hot bool // returned at once with nothing new
}

func (w *watch) delay(res result) time.Duration {
	c := &w.s.cfg.Client
	switch {
	case res.err != nil:
		return discovery.Backoff(w.failures, c.BackoffMin, c.BackoffMax)
	case res.hot:
		return discovery.Jitter(c.BackoffMin)
	}
	return 0
}

// poll runs one query within limit and reports what it read.
func (w *watch) poll(ctx context.Context, limit time.Duration) result {
	s := w.s
	wait := s.cfg.Client.Wait
	sent := w.index
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	pair, meta, err := s.kv.Get(s.cfg.Key, (&api.QueryOptions{WaitIndex: sent, WaitTime: wait}).WithContext(rctx))
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return result{err: ctx.Err()}
	}
	if err != nil {
		if rctx.Err() != nil {
			err = fmt.Errorf("no answer within %s: %w", limit.Round(time.Millisecond), err)
		}
		w.fail(err)
		return result{err: err}
	}
	idx := meta.LastIndex
	if idx == 0 {
		idx = 1 // Consul's rule: blocking on 0 returns at once, forever
	}
	fresh := sent == 0
	if idx < sent {
		// A restored snapshot, another server: start over with a query that
		// does not block; this answer is the current state all the same.
		s.log.Info().Uint64("index", idx).Uint64("was", sent).Msg("consul index went backwards: starting over")
		w.index, fresh = 0, true
	} else {
		w.index = idx
	}
	if w.failures > 0 {
		s.log.Info().Int("failures", w.failures).Msg("consul answers again")
		w.failures = 0
	}
	v := valueOf(pair, idx < sent)
	s.log.Debug().Uint64("sent", sent).Uint64("index", idx).Uint64("modify", v.Index).Bool("fresh", fresh).Msg("consul answered")
	s.mu.Lock()
	s.status.Index, s.status.Read, s.status.Updated = v.Index, true, time.Now()
	s.status.Failures, s.status.LastError = 0, ""
	s.mu.Unlock()
	changed := !w.have || v.Index != w.last.Index || !bytes.Equal(v.Data, w.last.Data) || (v.Data == nil) != (w.last.Data == nil)
	if changed || fresh {
		w.have, w.last = true, v
		w.apply(v)
	}
	return result{hot: !changed && sent != 0 && elapsed < wait/2}
}

func (w *watch) fail(err error) {
	s := w.s
	w.failures++
	w.index = 0 // the retry does not block: recovery is seen at once
	s.mu.Lock()
	s.status.Failures, s.status.LastError = w.failures, err.Error()
	s.mu.Unlock()
	if w.failures > 1 {
		s.log.Debug().Err(err).Int("failures", w.failures).Msg("consul query failed")
		return
	}
	s.log.Warn().Err(err).Msg("consul query failed: retrying with backoff; edits are refused while consul cannot be reached")
}
