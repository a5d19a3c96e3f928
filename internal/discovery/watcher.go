package discovery

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/rs/zerolog"
)

// watcher is the loop of one Watch. Only its goroutine touches its fields;
// what others may read is copied into Discovery.status.
type watcher struct {
	d   *Discovery
	w   Watch
	key string
	log zerolog.Logger

	index      uint64     // to send with the next query; 0 = do not block
	current    []Instance // the set the sink has; nil = none given yet
	have       bool       // the sink has been given a set
	saved      []Instance // what the file on disk holds, to write only real changes
	failures   int
	emptySince time.Time // an empty answer is held back since then
}

// run is the watcher's loop: query, apply, wait, again.
func (x *watcher) run(ctx context.Context) {
	cfg := &x.d.cfg
	x.saved = x.readLKG(false)
	// The first query does not block (index 0); if Consul cannot answer it
	// within StartupTimeout, serve the copy on disk and keep trying.
	res := x.poll(ctx, min(cfg.StartupTimeout, cfg.RequestTimeout(cfg.Wait)))
	if ctx.Err() != nil {
		return
	}
	if res.err != nil {
		x.useLKG(ctx)
	}
	x.d.done(x.key)
	for {
		delay := x.delay(res)
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		res = x.poll(ctx, cfg.RequestTimeout(x.waitTime()))
		if ctx.Err() != nil {
			return
		}
	}
}

// result is what one query did.
type result struct {
	err     error
	hot     bool // returned at once with nothing new: rate-limit the loop
	elapsed time.Duration
}

// delay is how long to wait before the next query.
func (x *watcher) delay(res result) time.Duration {
	cfg := &x.d.cfg
	switch {
	case res.err != nil:
		return backoff(x.failures, cfg.BackoffMin, cfg.BackoffMax)
	case res.hot:
		// A blocking query that returns at once with the same data is
		// either an agent bug (index stuck at 0) or churn we do not use;
		// looping on it would hammer the agent.
		return jitter(cfg.BackoffMin)
	}
	return 0
}

// Backoff is the delay before retry n (from 1): exponential from lo, capped
// at hi, jittered over its upper half, never below lo. The fleet store
// retries the same way.
func Backoff(n int, lo, hi time.Duration) time.Duration { return backoff(n, lo, hi) }

// Jitter adds up to a quarter of d, so instances do not query in step.
func Jitter(d time.Duration) time.Duration { return jitter(d) }

func backoff(n int, lo, hi time.Duration) time.Duration {
	base := lo
	for i := 1; i < n && base < hi; i++ {
		base *= 2
	}
	base = min(base, hi)
	d := base/2 + rand.N(base/2+1)
	return max(d, lo)
}

// jitter returns d plus up to d/4.
func jitter(d time.Duration) time.Duration { return d + rand.N(d/4+1) }

// waitTime is the wait to ask for: shorter while an empty answer waits for
// confirmation, so that it is confirmed (or not) on time.
func (x *watcher) waitTime() time.Duration {
	wait := x.d.cfg.Wait
	if !x.emptySince.IsZero() {
		left := x.d.cfg.EmptyGrace - time.Since(x.emptySince)
		wait = min(wait, max(left+10*time.Millisecond, 10*time.Millisecond))
	}
	return wait
}

// poll runs one query with the deadline limit and applies its answer.
func (x *watcher) poll(ctx context.Context, limit time.Duration) result {
	wait := x.waitTime()
	sent := x.index
	q := &api.QueryOptions{
		// Stale reads: any server answers, not only the leader, so many l4lb
		// instances spread their load, and discovery keeps working while
		// the cluster elects a leader. Discovery is eventually consistent
		// anyway (the lag is usually milliseconds).
		AllowStale: true,
		Datacenter: x.w.Datacenter,
		Near:       x.w.Near,
		WaitIndex:  sent,
		WaitTime:   wait,
	}
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	entries, meta, err := x.d.client.Health().ServiceMultipleTags(x.w.Service, x.w.Tags, x.w.PassingOnly, q.WithContext(rctx))
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return result{err: ctx.Err()}
	}
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || rctx.Err() != nil {
			err = fmt.Errorf("no answer within %s: %w", limit.Round(time.Millisecond), err)
		}
		x.fail(ctx, err)
		return result{err: err, elapsed: elapsed}
	}
	idx := meta.LastIndex
	if idx == 0 {
		// Consul's rule: an index must be > 0; blocking on 0 returns at
		// once, forever. Use 1.
		x.log.Debug().Msg("consul answered index 0: using 1")
		idx = 1
	}
	if idx < sent {
		// The index went backwards (a restored snapshot, another server):
		// start over with a query that does not block.
		x.log.Info().Uint64("index", idx).Uint64("was", sent).Msg("consul index went backwards: starting over")
		x.index = 0
	} else {
		x.index = idx
	}
	changed := x.answer(ctx, entries, idx)
	hot := !changed && sent != 0 && elapsed < wait/2
	return result{hot: hot, elapsed: elapsed}
}

// fail counts a failed request; the first of a run is reported.
func (x *watcher) fail(ctx context.Context, err error) {
	x.failures++
	// The retry does not block: recovery is seen (and reported) at once,
	// and an agent that came back with other indexes starts clean.
	x.index = 0
	x.d.setStatus(x.key, func(st *Status) { st.Failures, st.LastError = x.failures, err.Error() })
	if x.failures > 1 {
		x.log.Debug().Err(err).Int("failures", x.failures).Msg("consul query failed")
		return
	}
	x.log.Warn().Err(err).Msg("consul query failed: retrying with backoff")
	if ctx.Err() == nil {
		x.d.sink.Error(x.w, err)
	}
}

// answer applies a good answer; it reports whether the sink got a new set.
func (x *watcher) answer(ctx context.Context, entries []*api.ServiceEntry, idx uint64) bool {
	now := time.Now()
	if x.failures > 0 {
		x.log.Info().Int("failures", x.failures).Msg("consul answers again")
		x.failures = 0
		if ctx.Err() == nil {
			x.d.sink.Recovered(x.w)
		}
	}
	in := instances(entries, x.log)
	hold := len(in) == 0 && len(x.current) > 0
	if hold {
		if x.emptySince.IsZero() {
			x.emptySince = now
			x.log.Warn().Int("serving", len(x.current)).Dur("grace", x.d.cfg.EmptyGrace).
				Msg("consul answered no instances: keeping the current set until that is confirmed")
		}
		if now.Sub(x.emptySince) < x.d.cfg.EmptyGrace {
			x.d.setStatus(x.key, func(st *Status) {
				st.Failures, st.LastError, st.EmptySince = 0, "", x.emptySince
			})
			return false
		}
		x.log.Warn().Dur("for", now.Sub(x.emptySince)).Msg("consul still answers no instances: confirmed, emptying the pool")
	}
	x.emptySince = time.Time{}
	same := x.have && slices.Equal(in, x.current)
	x.d.setStatus(x.key, func(st *Status) {
		st.Source, st.Index, st.Updated, st.Instances = SourceConsul, idx, now, len(in)
		st.Failures, st.LastError, st.EmptySince = 0, "", time.Time{}
	})
	if same {
		return false
	}
	x.log.Info().Int("instances", len(in)).Uint64("index", idx).Msg("consul: instances changed")
	x.current, x.have = in, true
	if ctx.Err() == nil {
		x.d.sink.Update(x.w, in, SourceConsul)
	}
	if !slices.Equal(in, x.saved) || x.saved == nil {
		if err := x.writeLKG(in, idx, now); err != nil {
			x.log.Error().Err(err).Msg("writing the last-known-good copy")
		} else {
			x.saved = in
		}
	}
	return true
}

// useLKG serves the copy on disk, if there is a good one, while Consul
// cannot be reached at start.
func (x *watcher) useLKG(ctx context.Context) {
	f := x.readLKGFile(true)
	if f == nil {
		x.log.Warn().Msg("consul unreachable at start and no last-known-good copy: the pool has no hosts until consul answers")
		return
	}
	x.log.Warn().Int("instances", len(f.Instances)).Time("of", f.Time).Dur("age", time.Since(f.Time).Round(time.Second)).
		Msg("consul unreachable at start: serving the last-known-good copy")
	x.current, x.have = f.Instances, true
	x.d.setStatus(x.key, func(st *Status) {
		st.Source, st.Index, st.Updated, st.Instances = SourceLKG, f.Index, f.Time, len(f.Instances)
	})
	if ctx.Err() == nil {
		x.d.sink.Update(x.w, f.Instances, SourceLKG)
	}
}

// instances turns Consul's answer into instances, sorted by ID. Instances
// in maintenance are left out (an operator took them out); so are those
// with no usable address or port. Two registrations of one address:port
// are one host: the first by node and service ID wins.
func instances(entries []*api.ServiceEntry, log zerolog.Logger) []Instance {
	out := make([]Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		addr := e.Service.Address
		node := ""
		if e.Node != nil {
			node = e.Node.Node
			if addr == "" {
				addr = e.Node.Address
			}
		}
		if addr == "" || e.Service.Port <= 0 || e.Service.Port > 65535 {
			log.Debug().Str("service_id", e.Service.ID).Str("node", node).Msg("instance without address or port: skipped")
			continue
		}
		status := e.Checks.AggregatedStatus()
		if status == api.HealthMaint {
			continue
		}
		wt := e.Service.Weights
		weight := wt.Passing
		if status == api.HealthWarning {
			weight = wt.Warning
		}
		if wt.Passing == 0 && wt.Warning == 0 {
			weight = 1 // no weights registered: Consul's defaults
		}
		weight = min(max(weight, 0), 1000)
		in := Instance{Address: addr, Port: e.Service.Port, Weight: weight, Status: status, Node: node, ServiceID: e.Service.ID}
		in.ID = in.HostPort()
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.ServiceID < b.ServiceID
	})
	return slices.CompactFunc(out, func(a, b Instance) bool { return a.ID == b.ID })
}
