package udp

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/rawsys"
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

// session relays between one client address and one host. It belongs to
// the owner goroutine: nothing else reads or writes it.
type session struct {
	set     *Settings // as when the session was opened
	client  netip.AddrPort
	name    sockName // client, as the kernel wrote it: where replies go
	oob     []byte   // IP(V6)_PKTINFO for replies; nil lets the kernel pick the source
	fd      int      // connected to host; in the owner's epoll set
	slot    int32
	pool    *pool.Pool
	host    *pool.Host
	created time.Time

	last     int64 // Listener.mono of the last datagram either way
	replies  int
	pending  bool // in owner.pending: its read budget ran out, replies may be queued
	upQueued bool // a datagram to the host is in the owner's outbox
	removed  bool // out of the table, socket closed

	dgramsUp, dgramsDown, bytesUp, bytesDown uint64
	end                                      endReason
	reason                                   string // detail of endRefused / endError
}

// sendOp is a send queued in the owner's outbox (outbox_linux.go), kept
// for its completion.
type sendOp struct {
	s    *session
	b    []byte
	up   bool      // toward the host; false: a reply
	name *sockName // up: the client's address, as read
	dst  []byte    // up: the datagram's pktinfo
}

// dial opens a connected socket to h for a new session of client from.
func (l *Listener) dial(set *Settings, p *pool.Pool, h *pool.Host, from netip.AddrPort, name *sockName, dst []byte) (*session, error) {
	if h.Network == "unix" {
		return nil, fmt.Errorf("host %s: a unix socket cannot take UDP", h.ID)
	}
	ap, err := netip.ParseAddrPort(h.Address)
	if err != nil {
		// Names are resolved at load; anything else here would block the owner on DNS.
		return nil, fmt.Errorf("host %s: address %q is not ip:port", h.ID, h.Address)
	}
	fd, err := dialSocket(ap)
	if err != nil {
		return nil, fmt.Errorf("dial udp %s: %w", h.Address, err)
	}
	s := &session{set: set, client: from, name: *name, fd: fd, pool: p, host: h, created: time.Now()}
	if dst != nil {
		s.oob = replyOOB(dst)
	}
	return s, nil
}

// write sends a client's datagram to s's host with write(2), and accounts
// for it when it went.
func (l *Listener) write(o *owner, s *session, b []byte) error {
	_, err := rawsys.Write(s.fd, b)
	if err == nil {
		l.sentUp(o, s, len(b))
	}
	return err
}

// sentUp accounts for a datagram of n bytes relayed to s's host.
func (l *Listener) sentUp(o *owner, s *session, n int) {
	s.last = o.now
	s.dgramsUp++
	s.bytesUp += uint64(n)
	l.dgramsUp.Add(1)
	l.bytesUp.Add(uint64(n))
}

// replies relays the host's replies to the client until the session's
// socket is drained, the session ends, or replyBudget replies have gone (a
// host that floods one session must not starve the others: the session is
// then queued in o.pending and read again in the loop's next round).
func (l *Listener) replies(o *owner, s *session) {
	for left := replyBudget; left > 0; {
		if o.used == batchSize {
			l.flush(o) // frees the slots
		}
		off := o.used
		k := min(left, batchSize-off)
		n, err := o.rd.recvConnected(s.fd, off, k)
		if o.box != nil {
			o.used += n // queued until the next flush
		}
		for i := range n {
			s.replies++
			l.reply(o, s, o.rd.payload(off+i), off+i)
			if s.set.Responses > 0 && s.replies >= s.set.Responses {
				// Ends before the owner reads the listener again: the
				// client's next datagram opens a new session. Replies
				// read past the limit go with the socket, as they
				// would have unread.
				l.remove(o, s, endResponses, "")
				return
			}
		}
		switch {
		case err == syscall.EAGAIN:
			return
		case err != nil:
			end, reason := endOf(err), errReason(err)
			if end == endRefused {
				l.hostError(s, reason)
			}
			l.remove(o, s, end, reason)
			return
		case n < k:
			return // drained (see recvConnected)
		}
		left -= n
	}
	if !s.pending {
		s.pending = true
		o.pending = append(o.pending, s)
	}
}

// reply relays one of the host's datagrams, read into batch slot, to the
// client, from the listener's socket.
func (l *Listener) reply(o *owner, s *session, b []byte, slot int) {
	if o.box != nil {
		o.box.down(l.fd, s, b, slot)
		return
	}
	l.replied(o, s, len(b), o.out.send(b, &s.name, s.oob))
}

// replied goes on with a reply of n bytes to s's client once its send
// returned err.
func (l *Listener) replied(o *owner, s *session, n int, err error) {
	if err != nil {
		l.droppedError.Add(1)
		l.warn(errReason(err), "reply to client failed")
		return
	}
	s.last = o.now
	s.dgramsDown++
	s.bytesDown += uint64(n)
	l.dgramsDown.Add(1)
	l.bytesDown.Add(uint64(n))
}

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

// account folds a removed session's counters into its host and logs its
// "session closed" line.
func (l *Listener) account(s *session) {
	s.host.ConnClosed(s.bytesUp, s.bytesDown)
	var ev *zerolog.Event
	if acc := s.set.Access; acc != nil {
		ev = acc.Info().Str(logkey.Listener, l.name)
	} else {
		ev = l.log.Debug()
	}
	if ev.Enabled() {
		ev = ev.Str(logkey.Client, s.client.String()).Str(logkey.Upstream, s.set.Upstream.Name).
			Str(logkey.Pool, s.pool.Name).Str(logkey.Host, s.host.ID).
			Uint64(keyDatagramsUp, s.dgramsUp).Uint64(keyDatagramsDown, s.dgramsDown).
			Uint64(logkey.BytesUp, s.bytesUp).Uint64(logkey.BytesDown, s.bytesDown).
			Float64(logkey.Duration, time.Since(s.created).Seconds()).Str(logkey.End, s.end.String())
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
	case errors.Is(err, syscall.EAGAIN):
		// Non-blocking sockets: the datagram did not fit the send buffer.
		return "socket send buffer full"
	case errors.Is(err, syscall.ECONNREFUSED):
		return reasonRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return sockerr.Reason(err, 0) + " (ICMP)"
	}
	return sockerr.Reason(err, 0)
}
