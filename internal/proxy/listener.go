package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/pool"
	"github.com/l4lb/l4lb/splice"
	"github.com/rs/zerolog"
)

// Settings are what a listener needs to serve a connection. They are
// immutable once published; a reload publishes new Settings with Set.
type Settings struct {
	Upstream       *pool.Upstream
	Tries          int           // connect attempts in total; < 1 means 1
	ConnectTimeout time.Duration // per attempt; 0 means 5s
	IdleTimeout    time.Duration // no bytes either way; 0 means none
	FinTimeout     time.Duration // inactivity once half-closed; 0 means IdleTimeout
	DrainTimeout   time.Duration // on shutdown; 0 means abort at once
	// Keepalive turns TCP keepalive on for both sockets of a connection:
	// probes after this much silence, then every Keepalive/3 (at least
	// 1s), 3 of them. 0 = off (no keepalive setsockopt at all).
	Keepalive      time.Duration
	MaxConnections int  // at once on the listener; 0 = no limit
	MaxPerClient   int  // at once per client IP; 0 = no limit
	HashWithPort   bool // hash the client's IP and port, not the IP alone
	// Access lists, checked before any backend work: Deny first, then
	// Allow (when not empty) must match.
	Allow, Deny []netip.Prefix
	// AcceptProxy reads a PROXY v1/v2 header from each client, which must
	// come from Trusted, within ProxyTimeout (0 = 5s).
	AcceptProxy  bool
	Trusted      []netip.Prefix
	ProxyTimeout time.Duration
	SendProxy    int        // PROXY header version sent to backends: 0 (none), 1 or 2
	SourceIP     netip.Addr // local address for connects to hosts; invalid = any

	// Passive, when set, is told of every connect attempt's outcome and
	// records failures on the host itself. When nil the listener records
	// failures with Host.ConnectFailed.
	Passive Passive

	// Access, when set, receives the one line each connection ends with
	// ("connection closed", "client closed: no backend"), which then stays
	// out of the main log. nil = the main log, as the listener's other lines.
	Access *zerolog.Logger
}

// Passive is the passive health hook (package health's Passive satisfies
// it). Failed must record the failure on h (Host.ConnectFailed).
type Passive interface {
	Failed(h *pool.Host, reason string)
	Succeeded(h *pool.Host)
}

// Stats are a listener's counters.
type Stats struct {
	Accepted     uint64 // connections accepted
	Active       int64  // connections open now
	NoBackend    uint64 // clients closed because no host could be connected
	AcceptErrors uint64 // accept(2) failures (EMFILE and the like)
	ConnectFails uint64 // failed connect attempts
	Connected    uint64 // connections that reached a host (Connected+ConnectFails = connect attempts)
	// Clients refused before any backend work, by reason.
	Denied, OverListenerLimit, OverClientLimit, Untrusted, BadProxyHeader uint64
	// HostFull counts hosts reaching their max_connections on this
	// listener's connections; each is then skipped like a down host until
	// a connection to it closes.
	HostFull uint64
}

// Listener accepts TCP (or unix stream) connections and forwards each to a
// host of its upstream.
type Listener struct {
	name string
	ln   net.Listener
	log  zerolog.Logger
	set  atomic.Pointer[Settings]

	accepted, noBackend, acceptErrors, connectFails, connected atomic.Uint64
	active                                                     atomic.Int64
	rejected                                                   [numRejects]atomic.Uint64
	rejectLog                                                  [numRejects]rateLog
	hostFull                                                   atomic.Uint64
	hostFullLog                                                rateLog
	clients                                                    clientCounts

	mu       sync.Mutex
	conns    map[*splice.Session]*pool.Host
	aborting bool           // drain timed out: sessions are aborted as they appear
	wg       sync.WaitGroup // one per connection, until its end is logged

	// Connections are set up (admit, connect, hand to the engine) by
	// workers: goroutines that serve one connection after another. An idle
	// worker waits on handoff; with none idle the accept loop starts one.
	// A goroutine per connection would pay for a new goroutine and, as
	// connect's call chain is deeper than a new goroutine's 2 KiB stack,
	// for a stack copy: a third of l4lb's own instructions per connection
	// (callgrind; docs/PERFORMANCE.md). A worker's stack grows once, and again
	// only after a GC has shrunk it while it waited.
	handoff     chan net.Conn // closed when the accept loop has ended
	idleWorkers atomic.Int32  // waiting on handoff, or about to
	workers     sync.WaitGroup
	started     atomic.Uint64 // workers started, for tests

	// acceptKeepalive: connections accepted from ln come with TCP
	// keepalive on (Go's default for a listener it did not make).
	acceptKeepalive bool
}

// Listen binds network/address ("tcp", "127.0.0.1:6380"; "unix", "/run/x.sock").
// It starts nothing: call Run.
func Listen(name, network, address string, s *Settings, log zerolog.Logger) (*Listener, error) {
	ln, err := listen(network, address)
	if err != nil {
		return nil, err
	}
	l := ListenFrom(name, ln, s, log)
	l.acceptKeepalive = false // listen's ListenConfig leaves it off
	return l, nil
}

// ListenFrom is Listen on a socket bound elsewhere: one a previous l4lb
// handed over in an upgrade. The Listener owns ln from now on.
func ListenFrom(name string, ln net.Listener, s *Settings, log zerolog.Logger) *Listener {
	l := &Listener{
		name:  name,
		ln:    ln,
		log:   log.With().Str(logkey.Listener, name).Logger(),
		conns: make(map[*splice.Session]*pool.Host),
		// Unbuffered: a send succeeds only into a waiting worker's
		// hands, so no connection queues behind a busy one.
		handoff: make(chan net.Conn),
		// A listener made from a file (net.FileListener) turns Go's
		// default keepalive (15s) on for every connection it accepts.
		acceptKeepalive: true,
	}
	l.set.Store(s)
	return l
}

// listenConfig accepts connections with TCP keepalive left off: Go's
// default would cost 4 setsockopt calls per accepted connection, and
// keepalive is opt-in (Settings.Keepalive), as in HAProxy and nginx.
var listenConfig = net.ListenConfig{KeepAlive: -1}

func listen(network, address string) (net.Listener, error) {
	ln, err := listenConfig.Listen(context.Background(), network, address)
	if err == nil || network != "unix" || !errors.Is(err, syscall.EADDRINUSE) {
		return ln, err
	}
	// A socket file is there. If nobody answers on it, it is stale (a
	// crashed run): remove and bind again. A live one is not stolen.
	if c, derr := net.DialTimeout("unix", address, time.Second); derr == nil {
		c.Close()
		return nil, err
	}
	if rerr := os.Remove(address); rerr != nil {
		return nil, err
	}
	return listenConfig.Listen(context.Background(), network, address)
}

// Name returns the listener's name.
func (l *Listener) Name() string { return l.name }

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Set publishes new settings; connections accepted from now on use them.
func (l *Listener) Set(s *Settings) { l.set.Store(s) }

// Settings returns the settings in force.
func (l *Listener) Settings() *Settings { return l.set.Load() }

// Stats returns a snapshot of the counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Accepted:     l.accepted.Load(),
		Active:       l.active.Load(),
		NoBackend:    l.noBackend.Load(),
		AcceptErrors: l.acceptErrors.Load(),
		ConnectFails: l.connectFails.Load(),
		Connected:    l.connected.Load(),

		Denied:            l.rejected[rejectDenied].Load(),
		OverListenerLimit: l.rejected[rejectListenerFull].Load(),
		OverClientLimit:   l.rejected[rejectClientFull].Load(),
		Untrusted:         l.rejected[rejectUntrusted].Load(),
		BadProxyHeader:    l.rejected[rejectBadHeader].Load(),

		HostFull: l.hostFull.Load(),
	}
}

// Run accepts until ctx is done, then stops accepting at once, lets live
// connections finish for up to DrainTimeout, closes the rest, and returns
// once every connection handler and worker has returned. Call it once.
func (l *Listener) Run(ctx context.Context) error {
	raw := newRawAccepter(l.ln)
	stop := context.AfterFunc(ctx, func() { l.ln.Close(); raw.close() })
	defer stop()
	// dialCtx outlives ctx by the drain: connects in progress may finish and
	// be served during the drain, and are cut when it ends.
	dialCtx, cancelDial := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDial()

	err := l.acceptLoop(ctx, dialCtx, raw)
	l.ln.Close()
	raw.close()
	close(l.handoff) // workers exit once done with their connection
	l.drain(l.set.Load().DrainTimeout, cancelDial)
	l.workers.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// acceptLoop accepts until the listener is closed. On temporary errors,
// EMFILE and ENFILE above all, it backs off from 5ms doubling to 250ms rather
// than spinning: on epoll the pending connection stays in the backlog, so
// retrying at once would burn a core (libuv #690).
func (l *Listener) acceptLoop(ctx, dialCtx context.Context, raw *rawAccepter) error {
	var delay time.Duration
	var lastLog time.Time
	var suppressed int
	for {
		c, err := l.accept(raw)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			l.acceptErrors.Add(1)
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > maxAcceptBackoff {
				delay = maxAcceptBackoff
			}
			if now := time.Now(); now.Sub(lastLog) >= time.Second {
				ev := l.log.Error().Err(err).Dur("retry_in", delay)
				if suppressed > 0 {
					ev = ev.Int("suppressed", suppressed)
				}
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					ev.Msg("accept: out of file descriptors (raise LimitNOFILE / ulimit -n; each proxied connection needs 2 fds, 4 more while bytes are in flight)")
				} else {
					ev.Msg("accept failed")
				}
				lastLog, suppressed = now, 0
			} else {
				suppressed++
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		l.accepted.Add(1)
		if max := l.set.Load().MaxConnections; max > 0 && l.active.Load() >= int64(max) {
			// Closed at once, never left waiting for a slot (SPEC §4).
			l.reject(c, rejectListenerFull, &clientInfo{addr: peerOf(c), unixStr: c.RemoteAddr().String()},
				fmt.Sprintf("listener has %d connections open", max))
			continue
		}
		l.active.Add(1)
		l.wg.Add(1)
		select {
		case l.handoff <- c:
		default:
			l.workers.Add(1)
			l.started.Add(1)
			go l.worker(dialCtx, c)
		}
	}
}

// MaxIdleWorkers bounds the workers a listener keeps waiting for a
// connection: a worker done with one when that many wait already exits.
// Connection set-ups under way at once number about the cores on loopback,
// or the connect rate times a remote host's round trip; a burst above that
// leaves at most this many parked goroutines behind, a few KiB of stack
// each (tests that count l4lb's goroutines allow for them).
const MaxIdleWorkers = 64

// worker serves c, then each connection handed to it, until enough others
// are idle or the accept loop has ended.
func (l *Listener) worker(dialCtx context.Context, c net.Conn) {
	defer l.workers.Done()
	tried := newTriedHosts()
	for {
		l.serveConn(dialCtx, c, tried)
		if l.idleWorkers.Add(1) > MaxIdleWorkers {
			l.idleWorkers.Add(-1)
			return
		}
		var ok bool
		c, ok = <-l.handoff
		l.idleWorkers.Add(-1)
		if !ok {
			return
		}
	}
}

// accept returns the next connection: from raw when the listener is TCP
// (a *splice.Socket: see sock_linux.go), else from net.
func (l *Listener) accept(raw *rawAccepter) (net.Conn, error) {
	if raw != nil {
		return raw.accept()
	}
	return l.ln.Accept()
}

// maxAcceptBackoff caps the accept back-off. Retrying an accept costs one
// syscall, so 4 a second is nothing while out of fds, and clients queued in
// the backlog are served within a quarter second once fds free up (Go's
// net/http caps at 1s; HAProxy retries after 100ms).
const maxAcceptBackoff = 250 * time.Millisecond

// drain waits for live connections to end, up to timeout, then aborts the
// rest and waits for their handlers.
func (l *Listener) drain(timeout time.Duration, cancelDial context.CancelFunc) {
	done := make(chan struct{})
	go waitGroupDone(&l.wg, done)
	if n := l.active.Load(); n > 0 {
		l.log.Info().Int64(logkey.Active, n).Dur("drain_timeout", timeout).Msg("draining connections")
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	cancelDial()
	l.mu.Lock()
	l.aborting = true
	n := len(l.conns)
	for s := range l.conns {
		s.Abort("shutdown: drain timeout")
	}
	l.mu.Unlock()
	if n > 0 {
		l.log.Warn().Int(logkey.Count, n).Msg("drain timeout: closed remaining connections")
	}
	<-done
}

func waitGroupDone(wg *sync.WaitGroup, done chan<- struct{}) {
	wg.Wait()
	close(done)
}

// track registers a live session so a drain can abort it. It returns false
// when the drain has already timed out: the caller must not run it.
func (l *Listener) track(s *splice.Session, h *pool.Host) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.aborting {
		return false
	}
	l.conns[s] = h
	return true
}

// AbortHost closes every connection to h with reason (close_on_down, the
// end of a host's drain) and returns how many there were.
func (l *Listener) AbortHost(h *pool.Host, reason string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for s, sh := range l.conns {
		if sh == h {
			s.Abort(reason)
			n++
		}
	}
	return n
}

func (l *Listener) untrack(s *splice.Session) {
	l.mu.Lock()
	delete(l.conns, s)
	l.mu.Unlock()
}

// File returns a duplicate of the listening socket, for a new process to
// serve on (an upgrade). From then on closing the listener leaves a unix
// socket's file in place: the other process answers on it.
func (l *Listener) File() (*os.File, error) {
	type filer interface{ File() (*os.File, error) }
	f, ok := l.ln.(filer)
	if !ok {
		return nil, fmt.Errorf("listener %s: %T cannot give its socket", l.name, l.ln)
	}
	if u, ok := l.ln.(*net.UnixListener); ok {
		u.SetUnlinkOnClose(false)
	}
	return f.File()
}

// Close closes the listening socket without draining: for a listener that
// was bound but never run.
func (l *Listener) Close() error { return l.ln.Close() }
