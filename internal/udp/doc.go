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
// One goroutine (serve) owns the session table and every socket: it reads
// the listener socket, looks sessions up and creates them, reads the hosts'
// replies and writes them back, sweeps idle ones, and answers Sessions()
// requests. No lock is taken on the datagram path, and no goroutine is
// started per session. On Linux the listener socket and every session
// socket sit in one edge-triggered epoll set per listener; the epoll fd is
// handed to Go's netpoller, so the owner parks like any goroutine waiting
// for a socket, and one wake-up serves every socket ready at that moment.
// The listener is read up to 16 datagrams per system call (recvmmsg), into
// buffers set up once, and a batch that comes back short means the queue is
// empty, so it waits without the extra read that would return EAGAIN. A
// session's replies are read the same way, up to 16 in one recvmmsg into
// the same buffers, before the owner turns to the others, so one chatty
// host cannot starve the rest. Where io_uring is available, the datagrams
// relayed either way are queued on the listener's ring and sent together,
// one io_uring_enter per batch, instead of a write(2) or sendmsg(2) each
// (outbox_linux.go). An idle session costs its socket and about 200 bytes;
// a listener costs two fds (its socket and the epoll set), three with its
// io_uring, and about 1 MiB of mapped receive buffers.
//
// Run returns only after the owner has stopped and every socket is closed.
//
// Not here: active health checks (package health's type "udp" probes UDP
// hosts), PROXY protocol, allow/deny lists.
package udp
