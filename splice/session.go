package splice

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options tune a Session. The zero value works: no timeouts.
type Options struct {
	// IdleTimeout closes both sides when no byte has moved in either direction
	// for this long. Zero means no idle timeout.
	IdleTimeout time.Duration
	// FinTimeout replaces IdleTimeout (when shorter) once one direction has
	// ended with a half-close, so half-closed connections cannot linger.
	// Zero means IdleTimeout alone applies.
	FinTimeout time.Duration
	// Pipes is the pipe pool used on Linux. Nil means the package's pool.
	Pipes *PipePool
}

// End says how a session ended.
type End int

// Ways a session ends.
const (
	EndClosed     End = iota // both directions reached EOF
	EndResetA                // side A reset (or failed); B was reset in turn
	EndResetB                // side B reset (or failed); A was reset in turn
	EndIdle                  // IdleTimeout fired
	EndFinTimeout            // FinTimeout fired on a half-closed connection
	EndAborted               // Abort was called
	EndError                 // an unexpected local error
)

var endNames = [...]string{"closed", "reset by a", "reset by b", "idle timeout", "fin timeout", "aborted", "error"}

func (e End) String() string {
	if int(e) < len(endNames) {
		return endNames[e]
	}
	return "unknown"
}

// Result is what Run reports.
type Result struct {
	AToB, BToA uint64 // bytes delivered each way
	End        End
	Err        error  // the error behind EndResetA/B and EndError, if any
	Reason     string // the reason given to Abort
	Spliced    bool   // at least one direction used splice(2)
}

// Session copies between two connections. Create with New, then Run it, or
// Start it with a function to call when it ends.
type Session struct {
	a, b net.Conn
	opt  Options

	aToB, bToA atomic.Uint64
	spliced    atomic.Bool

	// eng is the session's state on an engine loop (Linux), owned by the
	// loop's goroutine once Start has sent it there.
	eng  engState
	over atomic.Bool // ended on a loop: Abort has nothing to do

	// last is the time of the last activity in either direction (UnixNano);
	// limit is the inactivity bound in force (ns, 0 = none). Both are read
	// when a deadline fires, never on the byte path except the store to
	// last. The goroutine copier only.
	last  atomic.Int64
	limit atomic.Int64

	mu        sync.Mutex // guards the fields below
	mode      runMode
	lp        *loop  // the loop running the session (modeEngine)
	preAbort  bool   // Abort came before Start
	preReason string // its reason
	// The goroutine copier's deadline arming and end fields.
	ended    bool
	end      End
	endErr   error
	reason   string
	halfDone bool
}

// runMode says what runs a session.
type runMode uint8

const (
	modeNew       runMode = iota // not started
	modeEngine                   // an engine loop
	modeGoroutine                // the goroutine copier
)

// New returns a session for a and b. It starts nothing.
func New(a, b net.Conn, opt Options) *Session {
	s := &Session{a: a, b: b, opt: opt}
	if opt.Pipes == nil {
		s.opt.Pipes = defaultPipes
	}
	s.limit.Store(int64(opt.IdleTimeout))
	return s
}

// Bytes returns the bytes delivered so far, A to B and B to A.
func (s *Session) Bytes() (aToB, bToA uint64) { return s.aToB.Load(), s.bToA.Load() }

// Abort ends the session from any goroutine: both sides are closed and the
// session ends with EndAborted and reason. It does nothing if the session
// has already ended; before Start, the session ends as soon as it starts.
func (s *Session) Abort(reason string) {
	s.mu.Lock()
	switch s.mode {
	case modeNew:
		if !s.preAbort {
			s.preAbort, s.preReason = true, reason
		}
		s.mu.Unlock()
		return
	case modeEngine:
		l := s.lp
		s.mu.Unlock()
		s.abortEngine(l, reason)
		return
	}
	s.mu.Unlock()
	s.finish(EndAborted, nil, reason, nil)
}

// Run copies both ways until both directions are done or the session fails,
// closes both connections, and returns what happened. It is Start and a
// wait. Call Run or Start once.
func (s *Session) Run() Result {
	res := make(chan Result, 1)
	s.Start(func(r Result) { res <- r })
	return <-res
}

// Start starts the session and returns at once. done is called exactly
// once, when both directions are done or the session failed, after both
// connections are closed. It is called from the engine's goroutine, which
// serves many sessions: it must not block (a counter, a channel send with
// room; hand anything that may wait, a log write included, to a goroutine).
//
// After Start, the connections belong to the session: close them only
// through Abort. The engine works on their fd numbers, and a number closed
// behind its back may be reused by another socket.
//
// On Linux, when both connections are *net.TCPConn or *net.UnixConn, the
// session runs on the package's engine, which needs no goroutine per
// session. Otherwise, or if the engine cannot start (out of fds), a
// goroutine copier runs it.
func (s *Session) Start(done func(Result)) {
	if s.startEngine(done) {
		return
	}
	s.mu.Lock()
	s.mode = modeGoroutine
	pre, reason := s.preAbort, s.preReason
	s.mu.Unlock()
	if pre {
		s.finish(EndAborted, nil, reason, nil)
	}
	go runFallback(s, done)
}

// runFallback is the body of a session run by the goroutine copier, named
// so stack dumps read well.
func runFallback(s *Session, done func(Result)) { done(s.run()) }

// run is the goroutine copier: one goroutine per direction.
func (s *Session) run() Result {
	now := time.Now()
	s.last.Store(now.UnixNano())
	if s.opt.IdleTimeout > 0 {
		dl := now.Add(s.opt.IdleTimeout)
		s.a.SetDeadline(dl)
		s.b.SetDeadline(dl)
	}
	ab := &direction{s: s, src: s.a, dst: s.b, n: &s.aToB, srcEnd: EndResetA, dstEnd: EndResetB}
	ba := &direction{s: s, src: s.b, dst: s.a, n: &s.bToA, srcEnd: EndResetB, dstEnd: EndResetA}
	ab.other, ba.other = ba, ab
	done := make(chan struct{})
	go runDirection(ba, done)
	ab.run()
	<-done

	s.mu.Lock()
	if !s.ended {
		s.ended = true
		s.end = EndClosed
	}
	res := Result{End: s.end, Err: s.endErr, Reason: s.reason}
	s.mu.Unlock()
	s.a.Close()
	s.b.Close()
	res.AToB, res.BToA = s.Bytes()
	res.Spliced = s.spliced.Load()
	return res
}

// runDirection is the body of the second goroutine of a session, named so
// stack dumps read well.
func runDirection(d *direction, done chan<- struct{}) {
	defer close(done)
	d.run()
}

// finish records the first way the session ends and closes both sides so the
// other direction unblocks. resetConn, when set, is closed with SO_LINGER 0
// so its peer sees a reset.
func (s *Session) finish(e End, err error, reason string, resetConn net.Conn) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended, s.end, s.endErr, s.reason = true, e, err, reason
	s.mu.Unlock()
	if resetConn != nil {
		if l, ok := resetConn.(interface{ SetLinger(int) error }); ok {
			l.SetLinger(0)
		}
	}
	s.a.Close()
	s.b.Close()
}

func (s *Session) isEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

// touch records activity. It is the only work the byte path adds for timeouts.
func (s *Session) touch() { s.last.Store(time.Now().UnixNano()) }

// deadlineHit is called by a direction whose read or write deadline fired.
// It returns true when the session really was inactive for the limit in
// force (and ends it), false after re-arming the deadlines of d.
func (s *Session) deadlineHit(d *direction) bool {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return true
	}
	limit := s.limit.Load()
	last := s.last.Load()
	now := time.Now().UnixNano()
	if limit <= 0 || now-last < limit {
		var dl time.Time // no limit: clear the deadline
		if limit > 0 {
			dl = time.Unix(0, last+limit)
		}
		d.src.SetReadDeadline(dl)
		d.dst.SetWriteDeadline(dl)
		s.mu.Unlock()
		return false
	}
	e := EndIdle
	if s.halfDone {
		e = EndFinTimeout
	}
	s.mu.Unlock()
	s.finish(e, nil, "", nil)
	return true
}

// halfClosed is called when direction d ended with EOF and its destination
// was half-closed. From now on FinTimeout bounds inactivity, counted from now,
// and the other direction's deadlines are moved in accordingly.
func (s *Session) halfClosed(d *direction) {
	fin := int64(s.opt.FinTimeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halfDone = true
	if fin <= 0 {
		return
	}
	if cur := s.limit.Load(); cur <= 0 || fin < cur {
		s.limit.Store(fin)
	}
	now := time.Now()
	s.last.Store(now.UnixNano())
	dl := now.Add(time.Duration(s.limit.Load()))
	d.other.src.SetReadDeadline(dl)
	d.other.dst.SetWriteDeadline(dl)
}

// direction is one half of a session: src to dst.
type direction struct {
	s              *Session
	src, dst       net.Conn
	n              *atomic.Uint64
	other          *direction
	srcEnd, dstEnd End // how the session ends when src or dst fails
}

func (d *direction) run() { d.done(d.copyBuffer()) }

// Errors a copy loop reports to done, carrying which side failed.
type srcError struct{ err error }
type dstError struct{ err error }

func (e srcError) Error() string { return "read: " + e.err.Error() }
func (e srcError) Unwrap() error { return e.err }
func (e dstError) Error() string { return "write: " + e.err.Error() }
func (e dstError) Unwrap() error { return e.err }

// errEnded means the session ended elsewhere (timeout, abort, the other side).
var errEnded = errors.New("session ended")

// done handles the end of one direction: nil err means EOF from src.
func (d *direction) done(err error) {
	s := d.s
	if err == nil {
		if cw, ok := d.dst.(interface{ CloseWrite() error }); ok {
			if cerr := cw.CloseWrite(); cerr != nil && !s.isEnded() {
				// ENOTCONN and the like: dst is gone; reset src as well.
				s.finish(d.dstEnd, cerr, "", d.src)
				return
			}
		}
		s.halfClosed(d)
		return
	}
	if err == errEnded || s.isEnded() {
		return
	}
	var se srcError
	var de dstError
	switch {
	case errors.As(err, &se):
		s.finish(d.srcEnd, se.err, "", d.dst)
	case errors.As(err, &de):
		s.finish(d.dstEnd, de.err, "", d.src)
	default:
		s.finish(EndError, err, "", nil)
	}
}

// copyBuffer is the goroutine copier's loop: read into a pooled buffer,
// write it all.
func (d *direction) copyBuffer() error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := d.src.Read(buf)
		if n > 0 {
			d.s.touch()
			if werr := d.writeAll(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if d.s.deadlineHit(d) {
				return errEnded
			}
			continue
		}
		return d.classify(srcError{err})
	}
}

func (d *direction) writeAll(b []byte) error {
	for len(b) > 0 {
		n, err := d.dst.Write(b)
		b = b[n:]
		d.n.Add(uint64(n))
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if d.s.deadlineHit(d) {
				return errEnded
			}
			continue
		}
		return d.classify(dstError{err})
	}
	return nil
}

// classify turns errors caused by our own Close (session ended elsewhere)
// into errEnded, so only the first failure decides how the session ends.
func (d *direction) classify(err error) error {
	if errors.Is(err, net.ErrClosed) && d.s.isEnded() {
		return errEnded
	}
	return err
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
