package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4lb/l4lb/internal/logkey"
	"github.com/l4lb/l4lb/internal/proxyproto"
	"github.com/l4lb/l4lb/pool"
)

// clientInfo is who a connection is from, as far as l4lb believes: the
// peer, or the client a trusted front balancer named in a PROXY header.
type clientInfo struct {
	addr    netip.AddrPort // the client; invalid for unix-socket peers
	via     netip.AddrPort // the front balancer, when a PROXY header named the client
	dst     netip.AddrPort // where the client connected to
	rest    []byte         // bytes that came with the PROXY header, to forward first
	key     uint64         // the client's hash for selection
	counted bool           // counted against max_connections_per_client
	unixStr string         // the peer's name when it is not an IP
}

func (c *clientInfo) String() string {
	if c.addr.IsValid() {
		return c.addr.String()
	}
	return c.unixStr
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// Rejections, counted by kind.
const (
	rejectDenied = iota
	rejectListenerFull
	rejectClientFull
	rejectUntrusted
	rejectBadHeader
	numRejects
)

var rejectNames = [numRejects]string{"denied", "max_connections", "max_connections_per_client", "untrusted_proxy", "bad_proxy_header"}

// admit decides whether client may go on, before any backend work: the
// PROXY header (when accepted) names the client, then the access lists and
// the per-client limit apply to it. A refused client is closed at once.
func (l *Listener) admit(s *Settings, client net.Conn) (*clientInfo, bool) {
	cl := &clientInfo{addr: peerOf(client)}
	if s.SendProxy != 0 {
		cl.dst = localOf(client) // a getsockname: only for the PROXY header
	}
	if !cl.addr.IsValid() {
		cl.unixStr = client.RemoteAddr().String()
	}
	if s.AcceptProxy {
		if !inAny(s.Trusted, cl.addr.Addr()) {
			return cl, l.reject(client, rejectUntrusted, cl, "peer not in trusted_proxies")
		}
		timeout := s.ProxyTimeout
		if timeout <= 0 {
			timeout = 5 * time.Second
		}
		client.SetReadDeadline(time.Now().Add(timeout))
		h, rest, err := proxyproto.Read(client)
		client.SetReadDeadline(time.Time{})
		if err != nil {
			return cl, l.reject(client, rejectBadHeader, cl, err.Error())
		}
		cl.rest = rest
		if !h.Local {
			cl.via = cl.addr
			cl.addr = netip.AddrPortFrom(h.Src.Addr().Unmap(), h.Src.Port())
			cl.dst = netip.AddrPortFrom(h.Dst.Addr().Unmap(), h.Dst.Port())
		}
	}
	if len(s.Deny) > 0 && inAny(s.Deny, cl.addr.Addr()) ||
		len(s.Allow) > 0 && !inAny(s.Allow, cl.addr.Addr()) {
		return cl, l.reject(client, rejectDenied, cl, "denied by allow/deny")
	}
	if s.MaxPerClient > 0 && cl.addr.IsValid() {
		if !l.clients.acquire(cl.addr.Addr(), s.MaxPerClient) {
			return cl, l.reject(client, rejectClientFull, cl, fmt.Sprintf("client has %d connections open", s.MaxPerClient))
		}
		cl.counted = true
	}
	cl.key = pool.HashKey(cl.addr, s.HashWithPort)
	return cl, true
}

// releaseClient undoes admit's per-client count.
func (l *Listener) releaseClient(s *Settings, cl *clientInfo) {
	if cl.counted {
		l.clients.release(cl.addr.Addr())
	}
}

// reject closes a refused client at once, counts it, and logs (at most once
// a second per kind, with the number of lines left out).
func (l *Listener) reject(client net.Conn, kind int, cl *clientInfo, why string) bool {
	l.rejected[kind].Add(1) // before the close, so a client that sees it closed sees it counted
	client.Close()
	if l.rejectLog[kind].allow() {
		ev := l.log.Warn().Str(logkey.Client, cl.String()).Str(logkey.Reason, why).Str(logkey.Kind, rejectNames[kind])
		if n := l.rejectLog[kind].takeSuppressed(); n > 0 {
			ev = ev.Int64("suppressed", n)
		}
		ev.Msg("client refused")
	}
	return false
}

// acquire takes a slot on h for a connection (Host.TryAcquire) and reports
// whether it got one. Pick already skips a host at its max_connections, so
// the limit is hit here: when this connection takes the host's last slot,
// the host is full from now until a connection to it closes, and that is
// counted and logged (at most once a second, with the number of lines left
// out). false means a concurrent connection took the last slot between the
// pick and now: the same full spell, counted by that connection; the caller
// tries another host. Two connections taking the last two slots at once may
// both count.
func (l *Listener) acquire(s *Settings, p *pool.Pool, h *pool.Host) bool {
	if !h.TryAcquire() {
		return false
	}
	if max := h.MaxConns(); max > 0 && h.Full() {
		l.hostFull.Add(1)
		if l.hostFullLog.allow() {
			ev := l.log.Warn().Str(logkey.Upstream, s.Upstream.Name).Str(logkey.Pool, p.Name).Str(logkey.Host, h.ID).
				Str(logkey.Reason, fmt.Sprintf("host has %d connections open (its max_connections)", max))
			if n := l.hostFullLog.takeSuppressed(); n > 0 {
				ev = ev.Int64("suppressed", n)
			}
			ev.Msg("host full: skipped until a connection to it closes")
		}
	}
	return true
}

func inAny(nets []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// sendPreamble writes, before any client byte, the PROXY header (if the
// listener sends one) and the bytes that came with an accepted header.
func (l *Listener) sendPreamble(s *Settings, backend, client net.Conn, cl *clientInfo, timeout time.Duration) error {
	if s.SendProxy == 0 && len(cl.rest) == 0 {
		return nil
	}
	var b []byte
	if s.SendProxy != 0 {
		b = proxyproto.Append(b, s.SendProxy, cl.addr, cl.dst)
	}
	b = append(b, cl.rest...)
	backend.SetWriteDeadline(time.Now().Add(timeout))
	_, err := backend.Write(b)
	backend.SetWriteDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("sending PROXY header: %w", err)
	}
	return nil
}

// clientCounts counts open connections per client IP.
type clientCounts struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

func (c *clientCounts) acquire(ip netip.Addr, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[netip.Addr]int)
	}
	if c.n[ip] >= max {
		return false
	}
	c.n[ip]++
	return true
}

func (c *clientCounts) release(ip netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[ip]--; c.n[ip] <= 0 {
		delete(c.n, ip)
	}
}

// rateLog lets one log line through per second and counts the rest.
type rateLog struct {
	last       atomic.Int64 // UnixNano of the last line let through
	suppressed atomic.Int64
}

func (r *rateLog) allow() bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	if now-last >= int64(time.Second) && r.last.CompareAndSwap(last, now) {
		return true
	}
	r.suppressed.Add(1)
	return false
}

func (r *rateLog) takeSuppressed() int64 { return r.suppressed.Swap(0) }
