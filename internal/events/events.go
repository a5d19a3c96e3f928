// Package events is l4lb's in-process event feed: host state changes,
// discovery updates, reloads. Publishers call Publish; the control API
// streams the feed with Subscribe, replaying recent events first.
//
// The feed never blocks a publisher: a subscriber that falls behind by more
// than its buffer loses events and is told so (its channel is closed and
// Dropped reports true), rather than slowing the health checker down.
package events

import (
	"sync"
	"time"
)

// Kinds of events.
const (
	HostUp             = "host_up"
	HostDown           = "host_down"
	HostManualDown     = "host_manual_down"
	HostDraining       = "host_draining"
	HostAdded          = "host_added"
	HostRemoved        = "host_removed"
	PoolUpdated        = "pool_updated"
	DiscoveryError     = "discovery_error"
	DiscoveryRecovered = "discovery_recovered"
	ConfigReloaded     = "config_reloaded"
	ConfigReloadFailed = "config_reload_failed"
)

// Event is one thing that happened. Seq numbers start at 1 and increase by
// one per published event.
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Upstream string    `json:"upstream,omitempty"`
	Pool     string    `json:"pool,omitempty"`
	Host     string    `json:"host,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// Feed is a publish/subscribe feed with a ring of recent events. The zero
// value is not usable: call New.
type Feed struct {
	mu   sync.Mutex
	seq  uint64
	ring []Event // the last len(ring) events, oldest first once full
	next int     // where the next event goes in ring
	full bool
	subs map[*Sub]struct{}
}

// New returns a feed that keeps the last keep events for replay.
func New(keep int) *Feed {
	if keep < 1 {
		keep = 1
	}
	return &Feed{ring: make([]Event, keep), subs: make(map[*Sub]struct{})}
}

// Publish stamps e with the next sequence number (and the time, if unset)
// and hands it to every subscriber without blocking.
func (f *Feed) Publish(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	e.Seq = f.seq
	f.ring[f.next] = e
	f.next = (f.next + 1) % len(f.ring)
	if f.next == 0 {
		f.full = true
	}
	for s := range f.subs {
		select {
		case s.c <- e:
		default:
			s.dropped = true
			delete(f.subs, s)
			close(s.c)
		}
	}
	return e
}

// recent returns the kept events with Seq > since, oldest first. f.mu held.
func (f *Feed) recent(since uint64) []Event {
	var all []Event
	if f.full {
		all = append(all, f.ring[f.next:]...)
	}
	all = append(all, f.ring[:f.next]...)
	i := 0
	for i < len(all) && all[i].Seq <= since {
		i++
	}
	return all[i:]
}

// Recent returns the kept events with Seq > since, oldest first.
func (f *Feed) Recent(since uint64) []Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.recent(since)
}

// Sub is a subscription. Read events from C until it is closed.
type Sub struct {
	f       *Feed
	c       chan Event
	dropped bool
}

// Subscribe returns the kept events with Seq > since (replay) and a
// subscription that receives every later event, with no gap and no repeat
// between the two. buf bounds how far the subscriber may fall behind.
func (f *Feed) Subscribe(since uint64, buf int) ([]Event, *Sub) {
	if buf < 1 {
		buf = 1
	}
	s := &Sub{f: f, c: make(chan Event, buf)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs[s] = struct{}{}
	return f.recent(since), s
}

// C returns the channel of events; it is closed by Close or when the
// subscriber fell behind.
func (s *Sub) C() <-chan Event { return s.c }

// Dropped reports whether the feed closed the subscription because the
// subscriber fell behind. Call it after C is closed.
func (s *Sub) Dropped() bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.dropped
}

// Close ends the subscription. It is safe to call more than once.
func (s *Sub) Close() {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if _, ok := s.f.subs[s]; ok {
		delete(s.f.subs, s)
		close(s.c)
	}
}
