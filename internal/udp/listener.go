package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
)

// DefaultIdleTimeout is the session idle timeout used when Settings leave it 0.
const DefaultIdleTimeout = 30 * time.Second

// maxDatagram holds any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
const maxDatagram = 64 << 10

// Settings are what a listener needs to serve a client. They are immutable
// once published; a reload publishes new Settings with Set. A session keeps
// the settings it was opened with, except that expiry always uses the
// current IdleTimeout.
type Settings struct {
	Upstream    *pool.Upstream
	IdleTimeout time.Duration // no datagram either way; 0 means DefaultIdleTimeout
	Responses   int           // end a session after this many replies; 0 means never
	MaxSessions int           // bound on the session table; 0 means no bound
	// HashSourcePort makes the hash key the client's IP and port
	// (hash_key = "source_ip_port"); by default it is the IP alone.
	HashSourcePort bool
	// OnHostError, when set, is told of every ICMP port unreachable seen
	// on a session's socket, after the host has recorded it: the passive
	// health hook. It is called from session goroutines and must not block.
	OnHostError func(p *pool.Pool, h *pool.Host, reason string)
	// Access, when set, receives a "session closed" line at info for every
	// session. nil = that line goes to the main log at debug.
	Access *zerolog.Logger
}

// Stats are a listener's counters. Up is client to host, down host to client.
type Stats struct {
	SessionsActive    int64  `json:"sessions_active"`
	SessionsCreated   uint64 `json:"sessions_created"`
	SessionsExpired   uint64 `json:"sessions_expired"`   // idle timeout
	SessionsCompleted uint64 `json:"sessions_completed"` // responses reached
	SessionsFailed    uint64 `json:"sessions_failed"`    // host down, ICMP refused, socket errors
	DroppedFull       uint64 `json:"dropped_full"`       // datagrams of new clients while the table was full
	DroppedNoHost     uint64 `json:"dropped_no_host"`    // datagrams of new clients with no usable host
	DroppedError      uint64 `json:"dropped_error"`      // datagrams lost to socket errors either way
	HostErrors        uint64 `json:"host_errors"`        // ICMP port unreachable from hosts
	DatagramsUp       uint64 `json:"datagrams_up"`
	DatagramsDown     uint64 `json:"datagrams_down"`
	BytesUp           uint64 `json:"bytes_up"`
	BytesDown         uint64 `json:"bytes_down"`
}

// SessionInfo describes one live session, for GET /v1/sessions.
type SessionInfo struct {
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

// Listener relays datagrams between clients and the hosts of an upstream.
type Listener struct {
	name    string
	conn    *net.UDPConn
	log     zerolog.Logger
	set     atomic.Pointer[Settings]
	pktinfo bool      // bound to a wildcard address: learn each client's destination
	base    time.Time // session activity is kept as nanoseconds since base

	running atomic.Bool
	stopped chan struct{}           // closed when Run returns
	reqs    chan chan []SessionInfo // Sessions() requests, answered by the owner
	ended   chan *session           // sessions ended by their reply goroutine; never closed
	wg      sync.WaitGroup          // one per reply goroutine

	active                                               atomic.Int64
	created, expired, completed, failed                  atomic.Uint64
	droppedFull, droppedNoHost, droppedError, hostErrors atomic.Uint64
	dgramsUp, dgramsDown, bytesUp, bytesDown             atomic.Uint64
	warnLimit                                            limiter
}

// Listen binds a UDP socket on address ("127.0.0.1:53", "[::]:53", ":53").
// It starts nothing: call Run.
func Listen(name, address string, s *Settings, log zerolog.Logger) (*Listener, error) {
	laddr, err := net.ResolveUDPAddr("udp", address)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: %w", address, err)
	}
	c, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	return ListenFrom(name, c, s, log)
}

// ListenFrom is Listen on a socket bound elsewhere: one a previous l4lb
// handed over in an upgrade. The Listener owns c from now on, and closes it
// on error.
func ListenFrom(name string, c *net.UDPConn, s *Settings, log zerolog.Logger) (*Listener, error) {
	laddr, _ := c.LocalAddr().(*net.UDPAddr)
	if laddr == nil {
		c.Close()
		return nil, fmt.Errorf("udp listener %s: not a bound UDP socket", name)
	}
	l := &Listener{
		name:    name,
		conn:    c,
		log:     log.With().Str(logkey.Listener, name).Logger(),
		base:    time.Now(),
		stopped: make(chan struct{}),
		reqs:    make(chan chan []SessionInfo, 8),
		ended:   make(chan *session, 1024),
	}
	if laddr.IP == nil || laddr.IP.IsUnspecified() {
		var err error
		if l.pktinfo, err = enablePktinfo(c); err != nil {
			c.Close()
			return nil, fmt.Errorf("listen udp %s: %w", laddr, err)
		}
	}
	// Best effort: a burst of new clients waits here while sessions open.
	// The kernel caps it at net.core.rmem_max.
	_ = c.SetReadBuffer(4 << 20)
	l.set.Store(s)
	return l, nil
}

// Name returns the listener's name.
func (l *Listener) Name() string { return l.name }

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.conn.LocalAddr() }

// Set publishes new settings; sessions opened from now on use them.
func (l *Listener) Set(s *Settings) { l.set.Store(s) }

// Settings returns the settings in force.
func (l *Listener) Settings() *Settings { return l.set.Load() }

// File returns a duplicate of the socket, for a new process to serve on
// (an upgrade).
func (l *Listener) File() (*os.File, error) { return l.conn.File() }

// Close closes the socket of a listener that was bound but never run.
func (l *Listener) Close() error { return l.conn.Close() }

// Stats returns a snapshot of the counters.
func (l *Listener) Stats() Stats {
	return Stats{
		SessionsActive:    l.active.Load(),
		SessionsCreated:   l.created.Load(),
		SessionsExpired:   l.expired.Load(),
		SessionsCompleted: l.completed.Load(),
		SessionsFailed:    l.failed.Load(),
		DroppedFull:       l.droppedFull.Load(),
		DroppedNoHost:     l.droppedNoHost.Load(),
		DroppedError:      l.droppedError.Load(),
		HostErrors:        l.hostErrors.Load(),
		DatagramsUp:       l.dgramsUp.Load(),
		DatagramsDown:     l.dgramsDown.Load(),
		BytesUp:           l.bytesUp.Load(),
		BytesDown:         l.bytesDown.Load(),
	}
}

// Sessions returns the live sessions, in no particular order. It asks the
// goroutine that owns the table (waking it from its read) and returns nil
// when the listener is not running.
func (l *Listener) Sessions() []SessionInfo {
	if !l.running.Load() {
		return nil
	}
	reply := make(chan []SessionInfo, 1)
	select {
	case l.reqs <- reply:
	case <-l.stopped:
		return nil
	}
	l.wake()
	select {
	case r := <-reply:
		return r
	case <-l.stopped:
		return nil
	}
}

// Run serves until ctx is done, then closes the listener socket and every
// session socket, and returns once every goroutine it started has ended.
// UDP has no connection to drain: sessions end at once.
func (l *Listener) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("udp: listener already running")
	}
	defer close(l.stopped)
	stop := context.AfterFunc(ctx, func() { l.conn.Close() })
	defer stop()
	err := l.serve()
	l.conn.Close()
	l.wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// sweepEvery returns the period of the idle sweep: IdleTimeout/20, between
// 10ms and 1s, so that a session lives at most 5% (or 1s) past its timeout.
func sweepEvery(idle time.Duration) time.Duration {
	return min(max(idle/20, 10*time.Millisecond), time.Second)
}

func idleTimeout(s *Settings) time.Duration {
	if s.IdleTimeout <= 0 {
		return DefaultIdleTimeout
	}
	return s.IdleTimeout
}

// owner is the state of the serve goroutine. Nothing else touches it.
type owner struct {
	table map[netip.AddrPort]*session
	// Sessions() requests wake the owner from its read by moving the read
	// deadline to now; next is the deadline of the next sweep.
	next time.Time
}

// serve is the body of the goroutine that owns the session table. It
// returns when the listener socket is closed, after ending every session.
//
// The read deadline doubles as the sweep ticker: it is set to the time of the
// next sweep, so a busy socket and an idle one are swept alike, and the
// owner never needs a second goroutine or a lock to reach its table.
func (l *Listener) serve() error {
	o := &owner{table: make(map[netip.AddrPort]*session)}
	rd, err := newReader(l.conn, l.pktinfo, func(b []byte, from netip.AddrPort, dst []byte) {
		l.handle(o, b, from, dst)
	})
	if err != nil {
		return fmt.Errorf("udp listener %s: %w", l.name, err)
	}
	defer rd.close()
	defer func() {
		for _, s := range o.table {
			l.remove(o, s, endShutdown)
		}
	}()
	o.next = time.Now().Add(sweepEvery(idleTimeout(l.set.Load())))
	if err := l.conn.SetReadDeadline(o.next); err != nil {
		return nil // closed already
	}
	for {
		err := rd.read() // hands each datagram to handle
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.housekeep(o)
		case errors.Is(err, net.ErrClosed):
			return nil
		default:
			// An unconnected socket reports no ICMP errors (no IP_RECVERR);
			// what is left is rare and local (ENOBUFS, ENOMEM): keep going.
			l.warn(err.Error(), "read failed")
		}
	}
}

// housekeep runs when the read deadline fires: sweep when due, take back
// sessions ended by their goroutine, answer Sessions() requests.
func (l *Listener) housekeep(o *owner) {
	now := time.Now()
	set := l.set.Load()
	if !now.Before(o.next) {
		l.sweep(o, now, idleTimeout(set))
		o.next = now.Add(sweepEvery(idleTimeout(set)))
	}
	// The deadline is set before the requests are drained: a Sessions()
	// call queues its request first and moves the deadline after, so
	// either it is drained here or its deadline lands after this one.
	if err := l.conn.SetReadDeadline(o.next); err != nil {
		return // closed: the next read says so
	}
	l.reap(o)
	for {
		select {
		case reply := <-l.reqs:
			reply <- l.list(o, now)
		default:
			return
		}
	}
}

// wake interrupts the owner's read so it answers a Sessions() request.
func (l *Listener) wake() { _ = l.conn.SetReadDeadline(time.Unix(1, 0)) }

func (l *Listener) list(o *owner, now time.Time) []SessionInfo {
	out := make([]SessionInfo, 0, len(o.table))
	up := l.set.Load().Upstream.Name
	for _, s := range o.table {
		if s.ended() {
			continue
		}
		out = append(out, SessionInfo{
			Listener:      l.name,
			Client:        netip.AddrPortFrom(s.client.Addr().Unmap(), s.client.Port()).String(),
			Upstream:      up,
			Pool:          s.pool.Name,
			Host:          s.host.ID,
			Since:         s.created,
			Age:           now.Sub(s.created).Seconds(),
			Idle:          (time.Duration(l.mono(now) - s.last.Load())).Seconds(),
			DatagramsUp:   s.dgramsUp.Load(),
			DatagramsDown: s.dgramsDown.Load(),
			BytesUp:       s.bytesUp.Load(),
			BytesDown:     s.bytesDown.Load(),
		})
	}
	return out
}

// sweep ends sessions idle for idle or more, and takes out those already
// ended.
func (l *Listener) sweep(o *owner, now time.Time, idle time.Duration) {
	cutoff := l.mono(now) - int64(idle)
	for _, s := range o.table {
		switch {
		case s.ended():
			l.remove(o, s, endNone)
		case s.last.Load() <= cutoff:
			l.remove(o, s, endIdle)
		}
	}
}

// reap takes back sessions whose reply goroutine ended them.
func (l *Listener) reap(o *owner) {
	for {
		select {
		case s := <-l.ended:
			l.remove(o, s, endNone)
		default:
			return
		}
	}
}

// mono returns t as nanoseconds since the listener was made (monotonic).
func (l *Listener) mono(t time.Time) int64 { return int64(t.Sub(l.base)) }

// handle relays one datagram from a client, opening its session if needed.
func (l *Listener) handle(o *owner, b []byte, from netip.AddrPort, dst []byte) {
	if len(l.ended) > 0 {
		// Sessions that ended on their own (responses reached) are
		// taken out while traffic flows, not only at the next sweep, so
		// their hosts' active counts drop promptly.
		l.reap(o)
	}
	s := o.table[from]
	if s != nil && (s.ended() || hostDown(s.host)) {
		end := endNone
		if !s.ended() {
			end = endHostDown
		}
		l.remove(o, s, end)
		s = nil
	}
	if s == nil {
		if s = l.open(o, from, dst, nil); s == nil {
			return
		}
	}
	err := s.send(b)
	if err == nil {
		return
	}
	// A connected socket reports a pending ICMP error on the next call:
	// if the send got it, the datagram did not leave. Give the client one
	// more host, skipping this one, without its noticing.
	failed := s.host
	s.finishReason(endOf(err), errReason(err))
	l.remove(o, s, endError)
	if isHostError(err) {
		l.hostError(s, errReason(err))
		if s = l.open(o, from, dst, failed); s != nil && s.send(b) == nil {
			return
		}
	}
	l.droppedError.Add(1)
	l.warn(errReason(err), "send to host failed")
}

// hostDown reports whether sessions to h must move: it was marked down (by
// health checks or an operator). Draining and weight 0 stop new sessions
// only; existing ones end on their own, as TCP connections do.
func hostDown(h *pool.Host) bool {
	st := h.State()
	return st == pool.StateDown || st == pool.StateManualDown
}

// open picks a host for a new client and opens its session, or counts the
// datagram as dropped and returns nil.
func (l *Listener) open(o *owner, from netip.AddrPort, dst []byte, skipHost *pool.Host) *session {
	set := l.set.Load()
	if set.MaxSessions > 0 && len(o.table) >= set.MaxSessions {
		l.reap(o) // sessions that ended on their own may still hold slots
		if len(o.table) >= set.MaxSessions && int(l.active.Load()) < len(o.table) {
			// A session counts its end (its last response) before it
			// sends that response and only then hands itself back, so
			// a client that got the response may come back before the
			// session is in l.ended. The gauge says some entry has
			// ended: find it rather than drop the datagram.
			for _, e := range o.table {
				if e.ended() {
					l.remove(o, e, endNone)
				}
			}
		}
		if len(o.table) >= set.MaxSessions {
			l.droppedFull.Add(1)
			l.warn(fmt.Sprintf("session table full (max_sessions = %d)", set.MaxSessions), "datagram dropped")
			return nil
		}
	}
	var skip func(*pool.Host) bool
	if skipHost != nil {
		skip = func(h *pool.Host) bool { return h == skipHost }
	}
	p, h := set.Upstream.Pick(pool.HashKey(from, set.HashSourcePort), skip)
	if h == nil {
		l.droppedNoHost.Add(1)
		l.warn("no usable host in any pool", "datagram dropped")
		return nil
	}
	s, err := l.dial(set, p, h, from, dst)
	if err != nil {
		l.droppedError.Add(1)
		l.warn(err.Error(), "cannot open session")
		return nil
	}
	o.table[from] = s
	l.created.Add(1)
	l.active.Add(1)
	h.ConnOpened()
	l.wg.Add(1)
	go s.replyLoop()
	return s
}

// remove ends s (with end, unless it ended already), closes its socket and
// takes it out of the table. It is safe to call twice for one session.
func (l *Listener) remove(o *owner, s *session, end endReason) {
	if s.removed {
		return
	}
	s.removed = true
	if o.table[s.client] == s {
		delete(o.table, s.client)
	}
	s.finish(end)
	s.release()
}

// hostError records an ICMP port unreachable against s's host.
func (l *Listener) hostError(s *session, reason string) {
	l.hostErrors.Add(1)
	s.host.ConnectFailed(reason, time.Now())
	if f := s.set.OnHostError; f != nil {
		f(s.pool, s.host, reason)
	}
	l.warn(reason, "host error", func(e *zerolog.Event) *zerolog.Event {
		return e.Str(logkey.Pool, s.pool.Name).Str(logkey.Host, s.host.ID)
	})
}

// warn logs at most one line a second for the listener; the lines it holds
// back are counted in the next one.
func (l *Listener) warn(reason, msg string, more ...func(*zerolog.Event) *zerolog.Event) {
	suppressed, ok := l.warnLimit.allow(time.Now())
	if !ok {
		return
	}
	ev := l.log.Warn().Str(logkey.Reason, reason)
	if suppressed > 0 {
		ev = ev.Uint64("suppressed", suppressed)
	}
	for _, f := range more {
		ev = f(ev)
	}
	ev.Msg(msg)
}

// limiter lets one event a second through and counts the others. It is
// safe for concurrent use.
type limiter struct {
	last       atomic.Int64 // unix nanoseconds of the last event let through
	suppressed atomic.Uint64
}

func (r *limiter) allow(now time.Time) (suppressed uint64, ok bool) {
	last := r.last.Load()
	if now.UnixNano()-last < int64(time.Second) || !r.last.CompareAndSwap(last, now.UnixNano()) {
		r.suppressed.Add(1)
		return 0, false
	}
	return r.suppressed.Swap(0), true
}
