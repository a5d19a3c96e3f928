package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/sockerr"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

const defaultConnectTimeout = 5 * time.Second

// maxTries bounds the tries, and with them the tried-hosts list (config allows 1..100).
const maxTries = 100

// serveConn sets up one connection, on a worker: admit the client
// (PROXY header, access lists, per-client limit), pick and connect a host
// (with tries), send a PROXY header if asked, then hand both sockets to a
// splice session and return. The session copies both ways until the
// connection ends; then ended logs one line and releases what serveConn
// took.
func (l *Listener) serveConn(dialCtx context.Context, client net.Conn, tried *triedHosts) {
	start := time.Now()
	s := l.set.Load()
	setClientKeepalive(client, s.Keepalive, l.acceptKeepalive)

	cl, ok := l.admit(s, client)
	if !ok {
		l.active.Add(-1)
		l.wg.Done()
		return
	}

	backend, p, h, err := l.connect(dialCtx, s, client, cl, tried)
	if err != nil {
		l.noBackend.Add(1)
		client.Close()
		l.endLine(s, cl, true).Str(logkey.Upstream, s.Upstream.Name).
			Float64(logkey.Duration, time.Since(start).Seconds()).Str(logkey.End, "no backend").
			Str(logkey.Reason, err.Error()).Msg("client closed: no backend")
		l.releaseClient(s, cl)
		l.active.Add(-1)
		l.wg.Done()
		return
	}
	l.connected.Add(1)

	c := &conn{l: l, s: s, cl: cl, p: p, h: h, start: start}
	c.sess = splice.New(client, backend, splice.Options{IdleTimeout: s.IdleTimeout, FinTimeout: s.FinTimeout})
	if !l.track(c.sess, h) {
		c.sess.Abort("shutdown: drain timeout")
	}
	c.sess.Start(c.done)
}

// conn is what a connection's end needs from serveConn.
type conn struct {
	l     *Listener
	s     *Settings
	cl    *clientInfo
	p     *pool.Pool
	h     *pool.Host
	start time.Time
	sess  *splice.Session
}

// done is the session's done callback. It runs on an engine loop, which
// moves the bytes of many other connections. When ended writes a log line,
// a stalled journald or access-log disk would stall them all, so ended then
// gets a goroutine of its own (a short one, per connection that ends).
// When the level drops the line, ended only counts and takes the
// listener's lock for a map delete (never held across anything that waits
// for a loop), so it runs here: no goroutine to start, no idle thread woken
// to run it.
func (c *conn) done(res splice.Result) {
	if c.l.endLogged(c.s, res.End == splice.EndError) {
		go c.ended(res)
		return
	}
	c.ended(res)
}

// ended is the tail of serveConn: it counts, logs and releases.
func (c *conn) ended(res splice.Result) {
	l, s, cl := c.l, c.s, c.cl
	l.untrack(c.sess)
	c.h.ConnClosed(res.AToB, res.BToA)

	// The fields' arguments are worked out even for a line the level
	// drops (the client's address formatted, among others): only for one
	// that is written.
	if ev := l.endLine(s, cl, res.End == splice.EndError); ev.Enabled() {
		ev = ev.Str(logkey.Upstream, s.Upstream.Name).Str(logkey.Pool, c.p.Name).Str(logkey.Host, c.h.ID).
			Uint64(logkey.BytesUp, res.AToB+uint64(len(cl.rest))).Uint64(logkey.BytesDown, res.BToA).
			Float64(logkey.Duration, time.Since(c.start).Seconds()).Str(logkey.End, endName(res)).Bool(logkey.Spliced, res.Spliced)
		if res.Err != nil {
			ev = ev.Str(logkey.Reason, res.Err.Error())
		}
		ev.Msg("connection closed")
	}

	l.releaseClient(s, cl)
	l.active.Add(-1)
	l.wg.Done()
}

// endLog is where the line a connection ends with goes: the access log
// when the settings name one, else the main log; warn raises it from info
// to a warning.
func (l *Listener) endLog(s *Settings, warn bool) (*zerolog.Logger, zerolog.Level) {
	lg, lvl := &l.log, zerolog.InfoLevel // l.log carries the listener field
	if s.Access != nil {
		lg = s.Access
	}
	if warn {
		lvl = zerolog.WarnLevel
	}
	return lg, lvl
}

// endLogged reports whether endLine(s, _, warn) starts a line that is
// written, without starting one.
func (l *Listener) endLogged(s *Settings, warn bool) bool {
	lg, lvl := l.endLog(s, warn)
	return lvl >= lg.GetLevel() && lvl >= zerolog.GlobalLevel()
}

// endLine starts the line a connection ends with (see endLog). Its fields
// are documented in docs/METRICS.md and must stay stable.
func (l *Listener) endLine(s *Settings, cl *clientInfo, warn bool) *zerolog.Event {
	lg, lvl := l.endLog(s, warn)
	ev := lg.WithLevel(lvl)
	if !ev.Enabled() {
		return ev
	}
	if s.Access != nil {
		ev = ev.Str(logkey.Listener, l.name)
	}
	ev = ev.Str(logkey.Client, cl.String())
	if cl.via.IsValid() {
		ev = ev.Str(logkey.Via, cl.via.String())
	}
	return ev
}

// endName says how a connection ended in the words an operator reads: side A
// is the client, side B the backend.
func endName(r splice.Result) string {
	switch r.End {
	case splice.EndResetA:
		return "client reset"
	case splice.EndResetB:
		return "backend reset"
	case splice.EndAborted:
		return r.Reason
	}
	return r.End.String()
}

// triedHosts is the hosts a connection has tried, and those found full
// when acquired (a race with another connection for the last slot): later
// picks skip both. A worker keeps one for every connection it sets up, its
// skip function made once; made per connection, the list, the variable
// holding it and the function that escapes with it to the selectors were
// three heap allocations.
type triedHosts struct {
	hosts []*pool.Host
	skip  func(*pool.Host) bool // has, as a func value
}

func newTriedHosts() *triedHosts {
	t := &triedHosts{hosts: make([]*pool.Host, 0, 8)}
	t.skip = t.has
	return t
}

func (t *triedHosts) has(h *pool.Host) bool {
	for _, x := range t.hosts {
		if x == h {
			return true
		}
	}
	return false
}

func (t *triedHosts) reset() {
	clear(t.hosts)
	t.hosts = t.hosts[:0]
}

// connect picks a host and dials it, trying up to s.Tries hosts in total:
// the next host of the same pool, then the next pool. Every failure is
// recorded against its host and logged. The client notices nothing unless
// every try fails.
func (l *Listener) connect(ctx context.Context, s *Settings, client net.Conn, cl *clientInfo, tried *triedHosts) (net.Conn, *pool.Pool, *pool.Host, error) {
	tries := s.Tries
	if tries < 1 {
		tries = 1
	}
	if tries > maxTries {
		tries = maxTries
	}
	timeout := s.ConnectTimeout
	if timeout <= 0 {
		timeout = defaultConnectTimeout
	}
	// tried comes empty and is left so: no host stays referenced by an
	// idle worker.
	defer tried.reset()
	n := 0 // hosts acquired and dialled; the rest of tried were full
	var lastErr error
	for n < tries && len(tried.hosts) < 2*maxTries {
		p, h := s.Upstream.Pick(cl.key, tried.skip)
		if h == nil {
			break
		}
		tried.hosts = append(tried.hosts, h)
		if !l.acquire(s, p, h) {
			continue
		}
		n++
		dialStart := time.Now()
		c, err := l.dial(ctx, s, h, dialStart.Add(timeout))
		if err == nil {
			h.ObserveConnect(time.Since(dialStart)) // for method = "fastest"
			err = l.sendPreamble(s, c, client, cl, timeout)
			if err == nil {
				if s.Passive != nil {
					s.Passive.Succeeded(h)
				}
				return c, p, h, nil
			}
			c.Close()
		}
		h.Release()
		if ctx.Err() != nil {
			return nil, nil, nil, errors.New("shutting down")
		}
		reason := dialReason(err, timeout)
		lastErr = fmt.Errorf("%s %s: %s", p.Name, h.ID, reason)
		l.connectFails.Add(1)
		// Our own fd shortage is not the host's fault.
		local := errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
		if !local {
			h.CountConnectFailure(failKind(err))
		}
		switch {
		case local:
		case s.Passive != nil:
			s.Passive.Failed(h, reason)
		default:
			h.ConnectFailed(reason, time.Now())
		}
		l.log.Warn().Str(logkey.Upstream, s.Upstream.Name).Str(logkey.Pool, p.Name).Str(logkey.Host, h.ID).
			Str(logkey.Reason, reason).Int(logkey.Try, n).Int(logkey.Tries, tries).Msg("connect failed")
	}
	switch {
	case n == 0 && (len(tried.hosts) > 0 || allFull(s.Upstream)):
		// Pick skips full hosts, so usually none reaches TryAcquire:
		// look before saying "no usable host" to an operator.
		return nil, nil, nil, errors.New("every usable host is at its max_connections")
	case n == 0:
		return nil, nil, nil, errors.New("no usable host in any pool")
	case n < tries:
		return nil, nil, nil, fmt.Errorf("no usable host left after %d tries; last: %w", n, lastErr)
	}
	return nil, nil, nil, fmt.Errorf("all %d tries failed; last: %w", n, lastErr)
}

// dial connects to h. When l4lb itself is out of file descriptors (EMFILE,
// ENFILE) the host is not at fault and fds may free up any moment: it
// retries, backing off from 5ms, until deadline, rather than dropping a
// client it has already accepted.
//
// A TCP host at an IP address is dialled on a raw socket (dialSocket); a
// name or a unix socket through net.Dialer.
func (l *Listener) dial(ctx context.Context, s *Settings, h *pool.Host, deadline time.Time) (net.Conn, error) {
	var src netip.Addr
	if s.SourceIP.IsValid() && h.Network == "tcp" {
		src = s.SourceIP
	}
	ap, raw := rawTarget(h.Network, h.Address)
	attempt := func() (net.Conn, error) {
		if raw {
			return dialSocket(ctx, ap, src, s.Keepalive, deadline)
		}
		d := net.Dialer{Deadline: deadline, KeepAlive: -1, KeepAliveConfig: keepaliveConfig(s.Keepalive)}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		return d.DialContext(ctx, h.Network, h.Address)
	}
	delay := 5 * time.Millisecond
	for {
		c, err := attempt()
		if err == nil || !(errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)) {
			return c, err
		}
		if time.Until(deadline) < delay {
			return nil, err
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		}
		if delay *= 2; delay > maxAcceptBackoff {
			delay = maxAcceptBackoff
		}
	}
}

// failKind classifies a connect error for the per-host metrics, as
// dialReason does for people.
func failKind(err error) pool.FailKind {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return pool.FailRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return pool.FailTimeout
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return pool.FailUnreachable
	}
	return pool.FailOther
}

// dialReason turns a dial error into the short reason operators read in
// logs and status: "connection refused", "timeout after 2s".
func dialReason(err error, timeout time.Duration) string { return sockerr.Reason(err, timeout) }

// keepaliveConfig is TCP keepalive for Settings.Keepalive: probes after d of
// silence, then every d/3 (at least 1s), 3 of them, so a dead peer is found
// about 2d after it went quiet. d = 0: off.
func keepaliveConfig(d time.Duration) net.KeepAliveConfig {
	if d <= 0 {
		return net.KeepAliveConfig{}
	}
	return net.KeepAliveConfig{Enable: true, Idle: d, Interval: max(d/3, time.Second), Count: 3}
}

// setKeepalive sets an accepted connection's keepalive to what d says.
// Errors are ignored: the peer may already be gone, which the copy finds.
func setKeepalive(c *net.TCPConn, d time.Duration) {
	if d <= 0 {
		c.SetKeepAlive(false)
		return
	}
	c.SetKeepAliveConfig(keepaliveConfig(d))
}

// allFull reports whether some host of u would take a connection but for
// its max_connections: then every such host is full (connect found none).
func allFull(u *pool.Upstream) bool {
	for _, p := range u.Pools() {
		for _, h := range p.Hosts {
			if h.State() == pool.StateUp && h.Weight() > 0 && h.Full() {
				return true
			}
		}
	}
	return false
}
