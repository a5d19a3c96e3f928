package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/rawsys"
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
	// health hook. It is called from the listener's owner goroutine, which
	// relays every datagram of the listener: it must not block.
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

	fd int // of conn; used by the owner, valid until Run closes conn

	running atomic.Bool
	stopped chan struct{}           // closed when Run returns
	reqs    chan chan []SessionInfo // Sessions() requests, answered by the owner
	poll    atomic.Pointer[poller]  // set by Run; its file's deadline wakes the owner

	active                                               atomic.Int64
	created, expired, completed, failed                  atomic.Uint64
	droppedFull, droppedNoHost, droppedError, hostErrors atomic.Uint64
	dgramsUp, dgramsDown, bytesUp, bytesDown             atomic.Uint64
	warnLimit                                            limiter
	ringSent                                             atomic.Uint64 // sends submitted on the outbox, for tests
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
	}
	var err error
	if l.fd, err = rawFD(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("udp listener %s: %w", name, err)
	}
	if laddr.IP == nil || laddr.IP.IsUnspecified() {
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
// session socket, and returns. UDP has no connection to drain: sessions end
// at once.
func (l *Listener) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("udp: listener already running")
	}
	defer close(l.stopped)
	defer l.conn.Close()
	p, err := newPoller()
	if err != nil {
		return fmt.Errorf("udp listener %s: %w", l.name, err)
	}
	// Closing the epoll file ends the owner's wait (a Close waits for a
	// RawConn callback in progress to return).
	stop := context.AfterFunc(ctx, func() { p.file.Close() })
	defer stop()
	defer p.file.Close()
	err = l.serve(p)
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

const (
	// listenBatches bounds the recvmmsg batches of one loop round, and
	// replyBudget the replies read from one session: past them the round
	// moves on and the rest is read in the next one, so no socket starves
	// the others.
	listenBatches = 4
	replyBudget   = batchSize
	// maxRounds bounds the rounds of one wake-up: then the owner goes back
	// through RawConn.Read, which sees the read deadline (the sweep, and
	// Sessions() requests) even on a socket that is never idle.
	maxRounds = 8
)

// owner is the state of the serve goroutine. Nothing else touches it.
type owner struct {
	table   map[netip.AddrPort]*session
	slots   []*session // by epoll slot; nil = free
	free    []int32
	pending []*session // sessions whose read budget ran out
	more    bool       // the listener socket may have datagrams queued
	now     int64      // Listener.mono, taken once per round
	poll    *poller
	rd      *reader
	out     sender
	box     *outbox // sends batched on io_uring; nil: system calls
	used    int     // batch slots holding replies in the outbox
	// The read deadline of the epoll file is the time of the next sweep;
	// Sessions() requests move it to the past.
	next time.Time
}

// serve is the body of the goroutine that owns the session table and every
// socket. It returns when the epoll file is closed, after ending every
// session.
//
// The read deadline of the epoll file doubles as the sweep ticker: it is set
// to the time of the next sweep, so a busy listener and an idle one are swept
// alike, and the owner never needs a second goroutine or a lock to reach its
// table.
func (l *Listener) serve(p *poller) error {
	o := &owner{table: make(map[netip.AddrPort]*session), poll: p, out: sender{fd: l.fd}}
	rd, err := newReader(l.pktinfo, func(b []byte, from *sockName, dst []byte) {
		l.handle(o, b, from, dst)
	})
	if err != nil {
		return fmt.Errorf("udp listener %s: %w", l.name, err)
	}
	o.rd = rd
	defer rd.close()
	box, err := newOutbox()
	if err != nil {
		l.log.Warn().Err(err).Msg("no io_uring for this listener: it sends with system calls")
	}
	if box != nil {
		box.doneFn = func(ud uint64, res int32) { l.sendDone(o, ud, res) }
		o.box = box
		defer box.close() // after the sessions end, below
	}
	if err := p.add(l.fd, listenerSlot); err != nil {
		return fmt.Errorf("udp listener %s: %w", l.name, err)
	}
	defer func() {
		for _, s := range o.table {
			l.remove(o, s, endShutdown, "")
		}
	}()
	// Datagrams queued before the socket joined the epoll set raised no
	// event in it.
	o.more = true
	o.next = time.Now().Add(sweepEvery(idleTimeout(l.set.Load())))
	if err := p.file.SetReadDeadline(o.next); err != nil {
		return nil // closed already
	}
	l.poll.Store(p)
	l.answer(o, time.Now()) // requests queued before the store had no one to wake
	pollFn := func(uintptr) bool { return l.round(o) }
	for {
		err := p.rc.Read(pollFn)
		switch {
		case err == nil:
			// Work left after maxRounds: Read again, which checks the
			// deadline first.
		case errors.Is(err, os.ErrDeadlineExceeded):
			l.housekeep(o)
		default:
			return nil // the epoll file was closed
		}
	}
}

// round is the RawConn read callback: it handles what is ready, and returns
// false to wait for the next event, true to leave Read with work left.
func (l *Listener) round(o *owner) bool {
	for range maxRounds {
		evs := o.poll.wait()
		o.now = l.mono(time.Now())
		for i := range evs {
			slot := slotOf(&evs[i])
			if slot == listenerSlot {
				o.more = true
				continue
			}
			if s := o.slots[slot]; s != nil {
				l.replies(o, s)
			}
			// A nil slot: the session ended earlier in this batch.
			// A reused one gets a read that finds nothing, harmless.
		}
		if o.more {
			l.readListener(o)
		}
		if len(o.pending) > 0 {
			ps := o.pending
			o.pending = nil
			for _, s := range ps {
				s.pending = false
				if !s.removed {
					l.replies(o, s)
				}
			}
		}
		l.flush(o)
		// Fewer events than asked for means epoll had no more ready; any
		// later one makes the epoll fd readable again, a new edge for
		// Go's netpoller.
		if len(evs) < maxEvents && !o.more && len(o.pending) == 0 {
			return false
		}
	}
	return true
}

// readListener takes up to listenBatches batches off the listener socket;
// o.more says whether it may hold more.
func (l *Listener) readListener(o *owner) {
	l.flush(o) // replies queued are in the batch buffers
	for range listenBatches {
		full, err := o.rd.recvmmsg(l.fd)
		l.flush(o)
		if err != nil {
			// An unconnected socket reports no ICMP errors (no
			// IP_RECVERR); what is left is rare and local (ENOBUFS,
			// ENOMEM): keep going.
			l.warn(err.Error(), "read failed")
		}
		if !full {
			o.more = err != nil
			return
		}
	}
	o.more = true
}

// housekeep runs when the read deadline fires: sweep when due, answer
// Sessions() requests.
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
	if err := o.poll.file.SetReadDeadline(o.next); err != nil {
		return // closed: the next Read says so
	}
	l.answer(o, now)
}

// answer replies to the Sessions() requests queued.
func (l *Listener) answer(o *owner, now time.Time) {
	for {
		select {
		case reply := <-l.reqs:
			reply <- l.list(o, now)
		default:
			return
		}
	}
}

// wake interrupts the owner's wait so it answers a Sessions() request.
func (l *Listener) wake() {
	if p := l.poll.Load(); p != nil {
		_ = p.file.SetReadDeadline(time.Unix(1, 0))
	}
}

func (l *Listener) list(o *owner, now time.Time) []SessionInfo {
	out := make([]SessionInfo, 0, len(o.table))
	up := l.set.Load().Upstream.Name
	for _, s := range o.table {
		out = append(out, SessionInfo{
			Listener:      l.name,
			Client:        netip.AddrPortFrom(s.client.Addr().Unmap(), s.client.Port()).String(),
			Upstream:      up,
			Pool:          s.pool.Name,
			Host:          s.host.ID,
			Since:         s.created,
			Age:           now.Sub(s.created).Seconds(),
			Idle:          (time.Duration(l.mono(now) - s.last)).Seconds(),
			DatagramsUp:   s.dgramsUp,
			DatagramsDown: s.dgramsDown,
			BytesUp:       s.bytesUp,
			BytesDown:     s.bytesDown,
		})
	}
	return out
}

// sweep ends sessions idle for idle or more.
func (l *Listener) sweep(o *owner, now time.Time, idle time.Duration) {
	cutoff := l.mono(now) - int64(idle)
	for _, s := range o.table {
		if s.last <= cutoff {
			l.remove(o, s, endIdle, "")
		}
	}
}

// mono returns t as nanoseconds since the listener was made (monotonic).
func (l *Listener) mono(t time.Time) int64 { return int64(t.Sub(l.base)) }

// handle relays one datagram from a client, opening its session if needed.
func (l *Listener) handle(o *owner, b []byte, name *sockName, dst []byte) {
	from := sockaddrPort(name)
	s := o.table[from]
	if s != nil && s.upQueued {
		// One datagram per session in the outbox: if the one queued is
		// refused, this one must follow it to the next host.
		l.flush(o)
		s = o.table[from]
	}
	if s != nil && hostDown(s.host) {
		l.remove(o, s, endHostDown, "")
		s = nil
	}
	if s == nil {
		if s = l.open(o, from, name, dst, nil); s == nil {
			return
		}
	}
	if o.box != nil {
		if o.box.full() {
			l.flush(o)
		}
		o.box.up(s, b, name, dst)
		s.upQueued = true
		return
	}
	_, err := rawsys.Write(s.fd, b)
	l.forwarded(o, s, b, name, dst, err)
}

// forwarded goes on with datagram b of client name (pktinfo dst) once its
// send to s's host returned err.
func (l *Listener) forwarded(o *owner, s *session, b []byte, name *sockName, dst []byte, err error) {
	if err == nil {
		l.sentUp(o, s, len(b))
		return
	}
	// A connected socket reports a pending ICMP error on the next call:
	// if the send got it, the datagram did not leave. Give the client one
	// more host, skipping this one, without its noticing.
	failed := s.host
	end := endError
	if isHostError(err) {
		end = endRefused
	}
	l.remove(o, s, end, errReason(err))
	if isHostError(err) {
		l.hostError(s, errReason(err))
		if s = l.open(o, sockaddrPort(name), name, dst, failed); s != nil && l.write(o, s, b) == nil {
			return
		}
	}
	l.droppedError.Add(1)
	l.warn(errReason(err), "send to host failed")
}

// flush submits the outbox's sends and goes on with each datagram as its
// send returned (outbox_linux.go). The batch buffers are all free again
// when it returns.
func (l *Listener) flush(o *owner) {
	o.used = 0
	if o.box != nil && o.box.n > 0 {
		l.ringSent.Add(uint64(o.box.n))
		o.box.submit()
	}
}

// sendDone is the outbox's completion handler.
func (l *Listener) sendDone(o *owner, ud uint64, res int32) {
	op, err := o.box.completed(ud, res)
	if op.up {
		op.s.upQueued = false
		l.forwarded(o, op.s, op.b, op.name, op.dst, err)
		return
	}
	l.replied(o, op.s, len(op.b), err)
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
func (l *Listener) open(o *owner, from netip.AddrPort, name *sockName, dst []byte, skipHost *pool.Host) *session {
	set := l.set.Load()
	if set.MaxSessions > 0 && len(o.table) >= set.MaxSessions {
		l.droppedFull.Add(1)
		l.warn(fmt.Sprintf("session table full (max_sessions = %d)", set.MaxSessions), "datagram dropped")
		return nil
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
	s, err := l.dial(set, p, h, from, name, dst)
	if err != nil {
		l.droppedError.Add(1)
		l.warn(err.Error(), "cannot open session")
		return nil
	}
	if n := len(o.free); n > 0 {
		s.slot = o.free[n-1]
		o.free = o.free[:n-1]
	} else {
		s.slot = int32(len(o.slots))
		o.slots = append(o.slots, nil)
	}
	if err := o.poll.add(s.fd, s.slot); err != nil {
		// ENOMEM, ENOSPC (fs.epoll.max_user_watches).
		rawsys.Close(s.fd)
		o.free = append(o.free, s.slot)
		l.droppedError.Add(1)
		l.warn(err.Error(), "cannot open session")
		return nil
	}
	o.slots[s.slot] = s
	s.last = o.now
	o.table[from] = s
	l.created.Add(1)
	l.active.Add(1)
	h.ConnOpened()
	return s
}

// remove ends s with end, closes its socket (which takes it out of the
// epoll set), takes it out of the table and accounts for it. It is safe to
// call twice for one session.
func (l *Listener) remove(o *owner, s *session, end endReason, reason string) {
	if s.removed {
		return
	}
	if o.box != nil && o.box.unsubmitted() {
		l.flush(o) // before its fd number can be reused
	}
	s.removed = true
	s.end, s.reason = end, reason
	if o.table[s.client] == s {
		delete(o.table, s.client)
	}
	rawsys.Close(s.fd)
	o.slots[s.slot] = nil
	o.free = append(o.free, s.slot)
	l.countEnd(end)
	l.account(s)
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
