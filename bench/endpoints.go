//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// sink is the in-process TCP backend of the idle-connection test: it echoes
// what it reads and holds every connection until the other side closes it.
type sink struct {
	ln     net.Listener
	live   atomic.Int64 // connections accepted and not yet closed
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	closed bool
}

func startSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sink{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *sink) addr() string { return s.ln.Addr().String() }

func (s *sink) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // EMFILE and the like: back off
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.live.Add(1)
		go s.echo(c)
	}
}

func (s *sink) echo(c net.Conn) {
	defer s.wg.Done()
	defer s.live.Add(-1)
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// Close stops accepting, closes every held connection and waits for its
// goroutines.
func (s *sink) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// waitLive waits until the sink holds n connections, for at most d.
func (s *sink) waitLive(n int64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for s.live.Load() != n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// udpEcho is the in-process UDP backend: two goroutines send every datagram
// back to where it came from.
type udpEcho struct {
	pc *net.UDPConn
	wg sync.WaitGroup
}

func startUDPEcho() (*udpEcho, error) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = pc.SetReadBuffer(4 << 20)
	e := &udpEcho{pc: pc}
	for range 2 {
		e.wg.Add(1)
		go e.serve()
	}
	return e, nil
}

func (e *udpEcho) addr() string { return e.pc.LocalAddr().String() }

func (e *udpEcho) serve() {
	defer e.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := e.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = e.pc.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (e *udpEcho) Close() error {
	err := e.pc.Close()
	e.wg.Wait()
	return err
}

// udpEcho measures UDP request/response: udpClients clients, each with its
// own socket (so its own proxy session), one 64-byte datagram in flight each,
// for udpDur.
func (r *runner) udpEcho(ctx context.Context, rep int, in *instance) error {
	if !in.udp {
		return nil
	}
	name := in.t.name
	type result struct {
		lat  []time.Duration
		lost int
		err  error
	}
	conns := make([]*net.UDPConn, r.p.udpClients)
	for i := range conns {
		raddr, err := net.ResolveUDPAddr("udp", in.addr[svcUDP])
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return err
		}
		defer c.Close()
		conns[i] = c
	}
	// One exchange per client first, so every session exists before the clock
	// starts; a proxy gets a few tries in case the first datagram is dropped.
	buf := make([]byte, 64)
	for _, c := range conns {
		var err error
		for range 5 {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			if _, err = c.Write(buf); err == nil {
				if _, err = c.Read(buf); err == nil {
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("udp through %s: %w", in.addr[svcUDP], err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	const maxPerClient = 2_000_000
	res := make([]result, len(conns))
	var wg sync.WaitGroup
	pids := in.pids()
	c0 := cpuOf(pids)
	start := time.Now()
	end := start.Add(r.p.udpDur)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = udpClient(ctx, c, end, maxPerClient)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuOf(pids) - c0
	var all []time.Duration
	lost := 0
	for _, x := range res {
		if x.err != nil {
			return x.err
		}
		all = append(all, x.lat...)
		lost += x.lost
	}
	if len(all) == 0 {
		return errors.New("udp: no replies")
	}
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	r.rep.put("udp-rate", "UDP request/response, round trips/s", "rt/s", true, rep, name, float64(len(all))/elapsed.Seconds())
	r.rep.put("udp-p50", "UDP round trip, p50", "µs", false, rep, name, pct(0.50))
	r.rep.put("udp-p99", "UDP round trip, p99", "µs", false, rep, name, pct(0.99))
	r.rep.put("udp-cpu", "proxy CPU per UDP round trip", "µs", false, rep, name,
		proxyOnly(in, float64(cpu.Microseconds())/float64(len(all))))
	if lost > 0 {
		r.rep.Notes = append(r.rep.Notes, fmt.Sprintf("UDP on %s (rep %d): %d datagrams lost (200 ms timeout)", name, rep+1, lost))
	}
	return nil
}

// udpClient sends one datagram at a time until end, ctx's end or max round
// trips, and records each round trip. A reply missing for 200 ms counts as
// lost; a late reply to an earlier datagram is told apart by its sequence.
func udpClient(ctx context.Context, c *net.UDPConn, end time.Time, max int) (res struct {
	lat  []time.Duration
	lost int
	err  error
}) {
	out := make([]byte, 64)
	in := make([]byte, 128)
	res.lat = make([]time.Duration, 0, 1<<16)
	for seq := uint64(1); len(res.lat) < max && ctx.Err() == nil; seq++ {
		t0 := time.Now()
		if t0.After(end) {
			return res
		}
		putSeq(out, seq)
		if _, err := c.Write(out); err != nil {
			res.err = err
			return res
		}
		_ = c.SetReadDeadline(t0.Add(200 * time.Millisecond))
		for {
			n, err := c.Read(in)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					res.lost++
					break
				}
				res.err = err
				return res
			}
			if n >= 8 && getSeq(in) == seq {
				res.lat = append(res.lat, time.Since(t0))
				break
			}
		}
	}
	return res
}

func putSeq(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

func getSeq(b []byte) uint64 {
	var v uint64
	for i := range 8 {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}

// idle holds r.p.idle connections through the proxy, each after one echoed
// byte (an idle pooled client), and reads the proxy's RSS and fds before and
// after.
func (r *runner) idle(ctx context.Context, rep int, in *instance) error {
	if in.proc == nil {
		return nil // nothing to measure without a proxy
	}
	name := in.t.name
	// The readiness check's connection through the proxy may still be
	// closing; start from an empty sink so it is not counted.
	if !r.sink.waitLive(0, 5*time.Second) {
		return fmt.Errorf("sink still holds %d connections before the test", r.sink.live.Load())
	}
	pids := in.pids()
	rss0, fd0 := rssOf(pids), fdsOf(pids)
	base := int64(0)
	n := r.p.idle
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		// Leave the sink as it was for the next target.
		r.sink.waitLive(base, 10*time.Second)
	}()
	idx := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				c, err := holdOne(in.addr[svcSink])
				if err != nil {
					errs <- fmt.Errorf("idle connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case idx <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(idx)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		return err
	}
	if !r.sink.waitLive(base+int64(n), 10*time.Second) {
		return fmt.Errorf("sink holds %d connections, want %d", r.sink.live.Load()-base, n)
	}
	select {
	case <-time.After(r.p.idleSettle):
	case <-ctx.Done():
		return ctx.Err()
	}
	rss1, fd1 := rssOf(pids), fdsOf(pids)
	r.rep.put("rss-rest", "proxy RSS at rest", "MiB", false, rep, name, float64(rss0)/(1<<20))
	r.rep.put("rss-idle", fmt.Sprintf("proxy RSS per idle connection (%d held)", n), "KiB", false, rep, name,
		float64(rss1-rss0)/1024/float64(n))
	r.rep.put("fds-idle", "proxy fds per idle connection", "fds", false, rep, name, float64(fd1-fd0)/float64(n))
	return nil
}

// holdOne dials addr and echoes one byte through it.
func holdOne(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b := []byte{'x'}
	_, err = c.Write(b)
	if err == nil {
		_, err = c.Read(b)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
