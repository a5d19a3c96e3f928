package udp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/sockerr"
	"github.com/l4lb/l4lb/pool"
	"github.com/rs/zerolog"
)

// Log keys of this package's session line, beside those of logkey.
const (
	keyDatagramsUp   = "datagrams_up"
	keyDatagramsDown = "datagrams_down"
)

// endReason says why a session ended. The zero value means it has not.
type endReason uint32

const (
	endNone      endReason = iota
	endIdle                // idle_timeout
	endResponses           // responses reached
	endHostDown            // host marked down; the next datagram moved
	endRefused             // ICMP unreachable from the host
	endError               // another socket error
	endShutdown            // the listener stopped
)

var endNames = [...]string{
	endNone:      "",
	endIdle:      "idle timeout",
	endResponses: "responses reached",
	endHostDown:  "host down",
	endRefused:   "host unreachable",
	endError:     "error",
	endShutdown:  "shutdown",
}

func (e endReason) String() string { return endNames[e] }

// session relays between one client address and one host.
type session struct {
	l       *Listener
	set     *Settings // as when the session was opened
	client  netip.AddrPort
	oob     []byte // IP(V6)_PKTINFO for replies; nil lets the kernel pick the source
	conn    *net.UDPConn
	pool    *pool.Pool
	host    *pool.Host
	created time.Time
	removed bool // taken out of the table; owner only

	last                                     atomic.Int64 // Listener.mono of the last datagram either way
	dgramsUp, dgramsDown, bytesUp, bytesDown atomic.Uint64
	end                                      atomic.Uint32 // an endReason; set once
	reason                                   string        // detail of endRefused / endError; written by the winner of end
	// refs is 2 at the start: the owner's (dropped when the session leaves
	// the table) and the reply goroutine's (dropped when it returns). The
	// last one out folds the counters into the host and the listener, so
	// none is lost to a reply in flight.
	refs atomic.Int32
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// dial opens a connected socket to h for a new session of client from.
func (l *Listener) dial(set *Settings, p *pool.Pool, h *pool.Host, from netip.AddrPort, dst []byte) (*session, error) {
	if h.Network == "unix" {
		return nil, fmt.Errorf("host %s: a unix socket cannot take UDP", h.ID)
	}
	ap, err := netip.ParseAddrPort(h.Address)
	if err != nil {
		// Names are resolved at load; anything else here would block the owner on DNS.
		return nil, fmt.Errorf("host %s: address %q is not ip:port", h.ID, h.Address)
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("dial udp %s: %w", h.Address, err)
	}
	now := time.Now()
	s := &session{l: l, set: set, client: from, conn: c, pool: p, host: h, created: now}
	if dst != nil {
		s.oob = replyOOB(dst)
	}
	s.last.Store(l.mono(now))
	s.refs.Store(2)
	return s, nil
}

// send relays a client's datagram to the host. Owner only.
func (s *session) send(b []byte) error {
	if _, err := s.conn.Write(b); err != nil {
		return err
	}
	s.last.Store(s.l.mono(time.Now()))
	n := uint64(len(b))
	s.dgramsUp.Add(1)
	s.bytesUp.Add(n)
	s.l.dgramsUp.Add(1)
	s.l.bytesUp.Add(n)
	return nil
}

// replyLoop is the body of a session's goroutine: it relays the host's
// replies to the client until the session ends.
//
// It waits through a RawConn read callback rather than conn.Read so that no
// buffer is held while the session is idle: one comes from bufPool only when
// the socket is readable, and every ready reply is relayed before waiting
// again.
func (s *session) replyLoop() {
	defer s.l.wg.Done()
	defer s.release()
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.stop(endError, err.Error())
		return
	}
	var end endReason
	var reason string
	replies := 0
	_ = rc.Read(func(fd uintptr) bool {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		for {
			n, err := syscall.Read(int(fd), *bp)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // wait for readability
			case err != nil:
				end, reason = endOf(err), errReason(err)
				return true
			}
			replies++
			if s.set.Responses > 0 && replies >= s.set.Responses {
				// Mark the end before the client sees the last reply:
				// its next datagram must open a new session, not go to
				// a socket about to close. The socket cannot be closed
				// here: Close waits for this callback to return.
				if s.end.CompareAndSwap(uint32(endNone), uint32(endResponses)) {
					s.l.countEnd(endResponses)
				}
				s.reply((*bp)[:n])
				end = endResponses
				return true
			}
			s.reply((*bp)[:n])
		}
	})
	// A read error from rc.Read itself means the owner closed the socket:
	// the session has ended already.
	if end != endNone {
		if end == endRefused {
			s.l.hostError(s, reason)
		}
		s.stop(end, reason)
	}
}

// stop ends the session from its reply goroutine and hands it back to the
// owner. The channel is never closed and the send never blocks: if it is
// full, the owner's next sweep finds the session ended anyway.
func (s *session) stop(end endReason, reason string) {
	if end == endResponses {
		s.conn.Close() // the end was marked in the read callback
	}
	s.finishReason(end, reason)
	select {
	case s.l.ended <- s:
	default:
	}
}

// reply relays one of the host's datagrams to the client, from the
// listener's socket.
func (s *session) reply(b []byte) {
	var err error
	if s.oob != nil {
		_, _, err = s.l.conn.WriteMsgUDPAddrPort(b, s.oob, s.client)
	} else {
		_, err = s.l.conn.WriteToUDPAddrPort(b, s.client)
	}
	if err != nil {
		s.l.droppedError.Add(1)
		if !errors.Is(err, net.ErrClosed) {
			s.l.warn(errReason(err), "reply to client failed")
		}
		return
	}
	s.last.Store(s.l.mono(time.Now()))
	n := uint64(len(b))
	s.dgramsDown.Add(1)
	s.bytesDown.Add(n)
	s.l.dgramsDown.Add(1)
	s.l.bytesDown.Add(n)
}

// finish ends the session with end unless it has ended already, and closes
// its socket (which also ends the reply goroutine's wait).
func (s *session) finish(end endReason) { s.finishReason(end, "") }

func (s *session) finishReason(end endReason, reason string) {
	if end == endNone {
		end = endError
	}
	if !s.end.CompareAndSwap(uint32(endNone), uint32(end)) {
		return
	}
	s.reason = reason
	s.conn.Close()
	s.l.countEnd(end)
}

// ended reports whether the session has ended: it takes no more datagrams.
func (s *session) ended() bool { return s.end.Load() != uint32(endNone) }

// countEnd counts a session's end, once, as it happens: the active gauge
// is of sessions that take datagrams, even if the owner has not taken an
// ended one out of its table yet.
func (l *Listener) countEnd(end endReason) {
	l.active.Add(-1)
	switch end {
	case endIdle:
		l.expired.Add(1)
	case endResponses:
		l.completed.Add(1)
	case endHostDown, endRefused, endError:
		l.failed.Add(1)
	}
}

// release drops one reference; the last one accounts for the session.
func (s *session) release() {
	if s.refs.Add(-1) != 0 {
		return
	}
	l := s.l
	up, down := s.bytesUp.Load(), s.bytesDown.Load()
	s.host.ConnClosed(up, down)
	end := endReason(s.end.Load())
	var ev *zerolog.Event
	if acc := s.set.Access; acc != nil {
		ev = acc.Info().Str(logkey.Listener, l.name)
	} else {
		ev = l.log.Debug()
	}
	if ev.Enabled() {
		ev = ev.Str(logkey.Client, s.client.String()).Str(logkey.Upstream, s.set.Upstream.Name).
			Str(logkey.Pool, s.pool.Name).Str(logkey.Host, s.host.ID).
			Uint64(keyDatagramsUp, s.dgramsUp.Load()).Uint64(keyDatagramsDown, s.dgramsDown.Load()).
			Uint64(logkey.BytesUp, up).Uint64(logkey.BytesDown, down).
			Float64(logkey.Duration, time.Since(s.created).Seconds()).Str(logkey.End, end.String())
		if s.reason != "" {
			ev = ev.Str(logkey.Reason, s.reason)
		}
		ev.Msg("session closed")
	}
}

// reasonRefused is what an ICMP port unreachable reads as, in logs, status
// and health.
const reasonRefused = "connection refused (ICMP port unreachable)"

// endOf classifies a socket error: ICMP errors from the host's side are the
// host's fault, the rest are not.
func endOf(err error) endReason {
	if isHostError(err) {
		return endRefused
	}
	return endError
}

func isHostError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// errReason turns a socket error into the short reason operators read;
// on a connected UDP socket refusals and unreachables are ICMP answers.
func errReason(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return reasonRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return sockerr.Reason(err, 0) + " (ICMP)"
	}
	return sockerr.Reason(err, 0)
}
