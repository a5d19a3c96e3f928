// Package udp is l4lb's UDP engine: a Listener receives datagrams on one
// socket, keeps a session per client address, and relays datagrams both ways
// between the client and one host of its upstream.
//
// The first datagram from a client address picks a host the way the
// upstream says (pool priority, then the pool's method; the hash method gets
// a 64-bit hash of the client IP, or IP and port, as its key) and opens a
// connected UDP socket to it. Later datagrams from that client go through
// that socket; replies read from it are written back to the client from the
// listener's socket, with the address the client sent to as the source (a
// listener bound to 0.0.0.0 or [::] asks the kernel for the destination of
// each new client's first datagram, IP_PKTINFO / IPV6_PKTINFO, so a
// multi-homed machine answers from the right address).
//
// A session ends when:
//   - nothing moved either way for IdleTimeout (checked by one sweep per
//     IdleTimeout/20, at most 1s apart, so a session outlives its timeout by
//     5% at most);
//   - Responses is set and that many replies came back (DNS wants 1);
//   - its host is down (down or manual_down) when the client's next
//     datagram arrives: that datagram opens a session to a usable host. A
//     draining host, or one whose weight is 0, keeps its sessions until they
//     end on their own, as TCP connections do;
//   - the host answered with ICMP port unreachable (ECONNREFUSED on the
//     connected socket): the failure is recorded on the host and reported to
//     Settings.OnHostError, the passive health hook;
//   - the listener stops.
//
// Every ended session's socket is closed. MaxSessions bounds the table: a
// new client beyond it has its datagrams dropped and counted, never queued.
//
// # Concurrency
//
// One goroutine (serve) owns the session table: it reads the listener
// socket, looks sessions up and creates them, sweeps idle ones, and answers
// Sessions() requests. No lock is taken on the datagram path. On Linux it
// reads up to 16 datagrams per system call (recvmmsg), into buffers set up
// once, and a batch that comes back short means the queue is empty, so it
// waits without the extra read that would return EAGAIN. Each session
// has one goroutine (replyLoop) that waits for replies on the session socket
// without holding a buffer (a RawConn read callback takes a buffer from a
// pool only when a reply is ready), so an idle session costs a goroutine, a
// socket and about 300 bytes. A session ended by its reply goroutine is
// marked so and handed back to the owner over a channel that is never closed;
// the counters of a session are folded into the host and the listener by
// whichever of the two lets go of it last.
//
// Run owns every goroutine it starts and returns only after each has ended
// and every socket is closed.
//
// Not here: active health checks (package health's type "udp" probes UDP
// hosts), PROXY protocol, allow/deny lists.
package udp
