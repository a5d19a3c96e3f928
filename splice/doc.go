// Package splice moves bytes both ways between two stream connections until
// both directions are done, the way an L4 proxy must:
//
//	s := splice.New(client, backend, splice.Options{
//		IdleTimeout: time.Hour,        // no byte either way for this long: close both
//		FinTimeout:  30 * time.Second, // once one side has half-closed: inactivity bound
//	})
//	res := s.Run() // blocks; both conns are closed when it returns
//	log.Printf("%d up, %d down, ended: %s", res.AToB, res.BToA, res.End)
//
// or, without a goroutine waiting for it:
//
//	s.Start(func(res splice.Result) { ... }) // returns at once
//
// What it does:
//
//   - On Linux, when both ends are *net.TCPConn, *net.UnixConn or *Socket (a
//     TCP socket its owner accepted or connected on a raw fd), the session
//     runs on the package's engine: a few epoll event loops (DefaultLoops,
//     one per two CPUs, or as many as SetLoops said; started at the first
//     session or by StartEngine) that serve every
//     session, so a session needs no goroutine of its own. Start's done
//     function is called from a loop's goroutine and must not block for long.
//     Abort works from any goroutine.
//   - Bulk bytes move with splice(2) through a pipe and never enter user
//     space. Unlike Go's own io.Copy splice path, a pipe is taken from a small
//     pool only while bytes are in flight and given back as soon as the source
//     has no more to read, so an idle connection costs its two sockets and no
//     pipe fds. Pipes are 1 MiB (fewer splice calls per megabyte) while the
//     pool's open pipes stay within a budget of the kernel's per-user pipe
//     limit, then 256 KiB, then the kernel's default; a small pipe given
//     back when a bigger one would fit is closed (PipePool). Small
//     messages go through read(2)/write(2) and a pooled
//     buffer, held likewise only while bytes are pending, and a short read is
//     not followed by a read to EAGAIN: the loop sees epoll's EPOLLRDHUP and
//     EPOLLHUP flags, which Go's netpoller hides. Each direction starts in
//     this mode; a read that fills the buffer switches it to splice(2).
//   - Elsewhere, or for other net.Conn types, a goroutine copier (a goroutine
//     per direction and a buffered copy) does the same job.
//   - Half-close is passed through: EOF from one side becomes CloseWrite on the
//     other, and the other direction keeps flowing.
//   - A reset is passed through: ECONNRESET reading one side (or EPIPE/ECONNRESET
//     writing to it) closes the other side with SO_LINGER 0, so it sees a reset
//     rather than a clean EOF.
//   - Every state has a timer: IdleTimeout bounds inactivity in both directions
//     together, FinTimeout bounds inactivity once one direction has ended.
//   - Bytes are counted each way, live (Session.Bytes) and in the Result,
//     without turning splice off.
//
// What it does not do: choose backends, dial, log, or know which side is the
// client. Side A and side B are symmetric; the caller maps them to names.
package splice
