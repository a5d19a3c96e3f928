package consultest

import (
	"io"
	"net"
	"sync"
)

// Relay is a TCP relay in front of an agent, for one client (one l4lb
// instance) to reach it through. Cut stands for a partition between that
// client and Consul, leaving every other client connected: the connections
// through the relay are closed and new ones are reset. Heal lets them
// through again. Works in front of a real agent too.
type Relay struct {
	ln   net.Listener
	to   string
	mu   sync.Mutex
	cut  bool
	open map[net.Conn]bool
	wg   sync.WaitGroup
}

// NewRelay listens on 127.0.0.1 and relays each connection to the agent
// at to (host:port). Close it.
func NewRelay(to string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{ln: ln, to: to, open: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the host:port to give the client instead of the agent's.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Cut closes every relayed connection; new ones are reset at once.
func (r *Relay) Cut() { r.set(true) }

// Heal relays new connections again.
func (r *Relay) Heal() { r.set(false) }

// Close stops the relay and waits for its goroutines.
func (r *Relay) Close() {
	r.ln.Close()
	r.set(true)
	r.wg.Wait()
}

func (r *Relay) set(cut bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = cut
	if cut {
		for c := range r.open {
			c.Close()
		}
	}
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.cut {
			r.mu.Unlock()
			in.(*net.TCPConn).SetLinger(0) // an RST, like a host that is gone
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", r.to)
		if err != nil {
			r.mu.Unlock()
			in.Close()
			continue
		}
		r.open[in], r.open[out] = true, true
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(in, out)
		go r.pipe(out, in)
	}
}

// pipe copies src to dst until either ends, then closes both.
func (r *Relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	r.mu.Lock()
	delete(r.open, dst)
	delete(r.open, src)
	r.mu.Unlock()
}
